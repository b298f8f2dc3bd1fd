"""attnkit.flash_attn_interface against a float64 PyTorch reference, with FlashAttention's
parametrization (tests/test_flash_attn.py of flash-attention 2.x, trimmed to keep CI short):
ragged and N_q != N_k seqlen pairs, head dims FlashAttention takes and some it refuses, MHA/MQA/
GQA, causal, local windows, ALiBi, softcap, f32/f16/bf16, forward and gradients, varlen with
random padding, the packed variants. Tolerance: FlashAttention's rule (flash_ref.assert_fa_close).
"""

import itertools

import pytest

torch = pytest.importorskip("torch")

from attnkit.flash_attn import (flash_attn_func, flash_attn_kvpacked_func,  # noqa: E402
                                flash_attn_qkvpacked_func, flash_attn_varlen_func,
                                flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func)
from flash_ref import assert_fa_close, attention_ref, grad_term, padding_mask, score_term, unpad  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MHA = {"mha": 1, "gqa": 2, "mqa": 4}  # H / H_kv with H = 4
# (seqlen_q, seqlen_k) as in FlashAttention's list, scaled down; ragged, Nq < Nk, Nq > Nk, 1.
SEQLENS = [(1, 147), (113, 203), (128, 217), (108, 256), (256, 128), (239, 1), (64, 64)]
HEADDIMS = [32, 40, 59, 64, 128, 256]
# (causal, window, alibi, softcap): FlashAttention's flags, one at a time and some together.
MODES = [(False, (-1, -1), False, 0.0), (True, (-1, -1), False, 0.0), (False, (17, 9), False, 0.0),
         (True, (-1, -1), True, 0.0), (False, (-1, -1), False, 30.0), (True, (40, -1), True, 30.0)]


def cases():
    """Every (dtype, mha, mode) with a seqlen pair and head dim cycled through the lists, so each
    value appears against many others without the full product."""
    for n, (dtype, mha, mode) in enumerate(itertools.product(DTYPES, MHA, MODES)):
        yield dtype, mha, mode, SEQLENS[n % len(SEQLENS)], HEADDIMS[(n * 5) % len(HEADDIMS)]


def ids(c):
    dtype, mha, (causal, window, alibi, softcap), (sq, sk), d = c
    return f"{str(dtype)[6:]}-{mha}-c{int(causal)}-w{window[0]}_{window[1]}-a{int(alibi)}-s{softcap:g}-{sq}x{sk}-d{d}"


CASES = list(cases())


def make(b, sq, sk, h, hk, d, dtype, gen):
    q = torch.randn(b, sq, h, d, generator=gen).to(dtype)
    k = torch.randn(b, sk, hk, d, generator=gen).to(dtype)
    v = torch.randn(b, sk, hk, d, generator=gen).to(dtype)
    return q, k, v


def grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_flash_attn_output_and_grads(case):
    dtype, mha, (causal, window, alibi, softcap), (sq, sk), d = case
    gen = torch.Generator().manual_seed(sq * 1000 + sk + d)
    b, h = 2, 4
    q, k, v = (t.requires_grad_() for t in make(b, sq, sk, h, h // MHA[mha], d, dtype, gen))
    slopes = torch.rand(b, h, generator=gen) * 0.3 if alibi else None
    kw = dict(causal=causal, window=window, softcap=softcap, alibi=slopes)
    out, lse, s_dmask = flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                                        alibi_slopes=slopes, return_attn_probs=True)
    assert out.dtype == dtype and out.shape == q.shape and s_dmask is None
    assert lse.dtype == torch.float32 and lse.shape == (b, h, sq)
    ref, ref_lse = attention_ref(q, k, v, **kw)
    naive, _ = attention_ref(q, k, v, upcast=False, **kw)
    assert_fa_close(out, ref, naive, dtype, "out")
    finite = ref_lse.isfinite()
    assert torch.equal(lse.isfinite(), finite)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], atol=1e-4 if dtype == torch.float32 else 2e-3,
                               rtol=1e-5)
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    got = grads(out, (q, k, v), dout)
    want = grads(ref, (q, k, v), dout.double())
    naive_g = grads(naive, (q, k, v), dout)
    score = score_term(q, k, v) + grad_term(q, k, v, dout)
    for name, g, w, n in zip(("dq", "dk", "dv"), got, want, naive_g):
        assert g.dtype == dtype and g.shape == w.shape
        assert_fa_close(g, w, n, dtype, name, score=score)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (32, 8))])
@pytest.mark.parametrize("mha", ["mha", "gqa"])
def test_varlen_random_padding(dtype, causal, window, mha):
    gen = torch.Generator().manual_seed(7)
    b, h, d, sq, sk = 3, 4, 64, 97, 131
    q, k, v = make(b, sq, sk, h, h // MHA[mha], d, dtype, gen)
    qmask, qlens = padding_mask(sq, b, gen)
    kmask, klens = padding_mask(sk, b, gen)
    (qu, cu_q), (ku, cu_k), (vu, _) = unpad(q, qmask), unpad(k, kmask), unpad(v, kmask)
    qu, ku, vu = (t.detach().requires_grad_() for t in (qu, ku, vu))
    out_u, lse_u, _ = flash_attn_varlen_func(qu, ku, vu, cu_q, cu_k, int(qlens.max()), int(klens.max()),
                                             causal=causal, window_size=window, return_attn_probs=True)
    assert out_u.shape == qu.shape and lse_u.shape == (h, qu.shape[0])
    out = torch.zeros_like(q)
    out[qmask] = out_u
    kw = dict(causal=causal, window=window, q_lens=qlens, k_lens=klens)
    qr, kr, vr = (t.detach().requires_grad_() for t in (q, k, v))
    ref, _ = attention_ref(qr, kr, vr, **kw)
    naive, _ = attention_ref(qr, kr, vr, upcast=False, **kw)
    assert_fa_close(out, ref, naive, dtype, "out")
    dout = torch.randn(out.shape, generator=gen).to(dtype) * qmask[:, :, None, None]
    got = grads(out_u, (qu, ku, vu), dout[qmask])
    want = grads(ref, (qr, kr, vr), dout.double())
    naive_g = grads(naive, (qr, kr, vr), dout)
    score = score_term(q, k, v) + grad_term(q, k, v, dout)
    for name, g, w, n, m in zip(("dq", "dk", "dv"), got, want, naive_g, (qmask, kmask, kmask)):
        assert_fa_close(g, w[m], n[m], dtype, name, score=score)


def test_head_dim_above_flash_attention_limit():
    """D = 320: FlashAttention refuses D > 256; attnkit takes it (forward and gradients)."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (t.requires_grad_() for t in make(1, 40, 50, 2, 2, 320, torch.float32, gen))
    out = flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_ref(q, k, v, causal=True)
    naive, _ = attention_ref(q, k, v, causal=True, upcast=False)
    assert_fa_close(out, ref, naive, torch.float32, "out", score=score_term(q, k, v))
    dout = torch.randn(out.shape, generator=gen)
    score = score_term(q, k, v) + grad_term(q, k, v, dout)
    for name, g, w, n in zip("qkv", grads(out, (q, k, v), dout), grads(ref, (q, k, v), dout.double()),
                             grads(naive, (q, k, v), dout)):
        assert_fa_close(g, w, n, torch.float32, "d" + name, score=score)


def test_packed_variants_match_unpacked():
    gen = torch.Generator().manual_seed(3)
    b, n, h, d = 2, 50, 4, 32
    qkv = torch.randn(b, n, 3, h, d, generator=gen, requires_grad=True)
    out = flash_attn_qkvpacked_func(qkv, causal=True)
    q, k, v = qkv.unbind(2)
    want = flash_attn_func(q, k, v, causal=True)
    assert torch.equal(out, want)
    out2 = flash_attn_kvpacked_func(q, torch.stack((k, v), 2), causal=True)
    assert torch.equal(out2, want)
    (g,) = torch.autograd.grad(out.sum(), qkv)
    qkv64 = qkv.detach().double().requires_grad_()
    ref, _ = attention_ref(*qkv64.unbind(2), causal=True)
    (gr,) = torch.autograd.grad(ref.sum(), qkv64)
    torch.testing.assert_close(g.double(), gr, atol=2e-5, rtol=1e-4)
    # varlen packed: two sequences of 20 and 30 tokens
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    qkv_u = qkv[0]
    out_v = flash_attn_varlen_qkvpacked_func(qkv_u, cu, 30, causal=True)
    want_v = flash_attn_varlen_func(qkv_u[:, 0], qkv_u[:, 1], qkv_u[:, 2], cu, cu, 30, 30, causal=True)
    assert torch.equal(out_v, want_v)
    out_kv = flash_attn_varlen_kvpacked_func(qkv_u[:, 0], qkv_u[:, 1:], cu, cu, 30, 30, causal=True)
    assert torch.equal(out_kv, want_v)
    first, _ = attention_ref(q[:1, :20], k[:1, :20], v[:1, :20], causal=True)
    torch.testing.assert_close(out_v[:20].double(), first[0], atol=2e-5, rtol=1e-4)


def test_bhnd_and_bnhd_agree_bitwise():
    """The same tensors in FlashAttention's layout and (through a transposed view) in SDPA's."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = make(2, 70, 90, 4, 2, 64, torch.bfloat16, gen)
    out = flash_attn_func(q, k, v, causal=True)
    from attnkit import _ops
    out_t, _ = _ops.attention(*(t.transpose(1, 2) for t in (q, k, v)), None, True, bnhd=False)
    assert torch.equal(out, out_t.transpose(1, 2))


@pytest.mark.parametrize("kw,needle", [
    (dict(dropout_p=0.1), "dropout_p"),
    (dict(window_size=(-2, 0)), "window_size"),
])
def test_refusals_name_the_argument(kw, needle):
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match=needle):
        flash_attn_func(q, q, q, **kw)


@pytest.mark.parametrize("args,needle", [
    ((torch.randn(1, 8, 3, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)), "multiple of H_kv"),
    ((torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 8), torch.randn(1, 8, 2, 8)), "head dim"),
    ((torch.randn(1, 8, 2, 16).double(),) * 3, "dtype"),
    ((torch.randn(8, 2, 16),) * 3, "4 dims"),
])
def test_bad_inputs_raise_value_error(args, needle):
    with pytest.raises(ValueError, match=needle):
        flash_attn_func(*args)
