"""attnkit.scaled_dot_product_attention against PyTorch's float64 SDPA (top-left causal with
L != S, masks, GQA, gradients); torch.compile(fullgraph=True) of a small model calling
flash_attn_func; torch.library.opcheck of both operators."""

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import attnkit  # noqa: E402
from attnkit import _ops  # noqa: E402
from attnkit.flash_attn import flash_attn_func  # noqa: E402

SDPA_CASES = [
    # (name, B, H, Hk, L, S, D, is_causal, mask kind)
    ("plain", 2, 4, 4, 33, 33, 64, False, None),
    ("causal_square", 2, 4, 4, 40, 40, 32, True, None),
    ("causal_L_lt_S_top_left", 1, 2, 2, 17, 50, 64, True, None),
    ("causal_L_gt_S_top_left", 1, 2, 2, 50, 17, 64, True, None),
    ("gqa", 2, 8, 2, 30, 45, 64, False, None),
    ("bool_mask", 2, 4, 4, 20, 36, 64, False, "bool"),
    ("float_mask_bcast", 2, 4, 4, 20, 36, 64, False, "float"),
]


@pytest.mark.parametrize("case", SDPA_CASES, ids=[c[0] for c in SDPA_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_matches_torch_float64(case, dtype):
    _, b, h, hk, l, s, d, causal, mkind = case
    gen = torch.Generator().manual_seed(l * s)
    q = torch.randn(b, h, l, d, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(b, hk, s, d, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(b, hk, s, d, generator=gen).to(dtype).requires_grad_()
    mask = None
    if mkind == "bool":
        mask = torch.rand(b, 1, l, s, generator=gen) > 0.3
        mask[..., 0] = True  # no fully masked row (PyTorch and attnkit differ there)
    elif mkind == "float":
        mask = torch.randn(1, h, l, s, generator=gen).to(dtype)
    gqa = h != hk
    out = attnkit.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    m64 = mask.double() if mkind == "float" else mask
    ref = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=m64, is_causal=causal, enable_gqa=gqa)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 3e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=10 * tol, rtol=10 * tol)


def test_sdpa_refusals():
    q = torch.randn(1, 4, 8, 16)
    k = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="enable_gqa"):
        attnkit.scaled_dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match="dropout_p"):
        attnkit.scaled_dot_product_attention(q, q, q, dropout_p=0.5)


class TinyAttn(torch.nn.Module):
    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        return self.proj(flash_attn_func(q, k, v, causal=True).reshape(b, n, c))


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    model = TinyAttn()
    x = torch.randn(2, 24, 64)
    eager = model(x)
    (ge,) = torch.autograd.grad(eager.sum(), model.qkv.weight)
    torch._dynamo.reset()
    # aot_eager: dynamo (fullgraph: no graph break allowed) and AOTAutograd through the fake and
    # autograd registrations, without inductor's C++ build (tens of seconds on 2 cores).
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (gc,) = torch.autograd.grad(out.sum(), model.qkv.weight)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gc, ge)


def test_opcheck_fwd_and_bwd():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 12, 4, 32, generator=gen, requires_grad=True)
    k = torch.randn(2, 20, 2, 32, generator=gen, requires_grad=True)
    v = torch.randn(2, 20, 2, 32, generator=gen, requires_grad=True)
    rest = (None, True, -1, -1, 0.0, None, None, None, None, True, None, None, "auto")
    torch.library.opcheck(_ops.fwd, (q, k, v) + rest)
    slopes = torch.rand(4, generator=gen)
    torch.library.opcheck(_ops.fwd, (q, k, v, 0.2, False, 8, 2, 20.0, slopes, None, None, None, True, None, None,
                                     "auto"))
    with torch.no_grad():
        out, lse = _ops.fwd(q, k, v, *rest)
    dout = torch.randn(out.shape, generator=gen)
    torch.library.opcheck(_ops.bwd, (dout, q.detach(), k.detach(), v.detach(), out, lse) + rest)


def test_import_without_torch_keeps_numpy_api():
    """attnkit's NumPy entry points never import torch (checked in a fresh interpreter)."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, attnkit; q = np.ones((1, 1, 4, 8), 'f4'); attnkit.attention(q, q, q); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


STRIDED_CASES = [
    # (name, B, Nq, Nk, H, Hk, D, causal): prefill (whole-head waves) and decode (N_q·group <= 16)
    ("prefill_gqa", 2, 70, 90, 4, 2, 64, True),
    ("decode_gqa", 2, 1, 300, 8, 2, 64, False),
    ("decode_mha", 1, 2, 40, 2, 2, 32, True),
]


@pytest.mark.parametrize("case", STRIDED_CASES, ids=[c[0] for c in STRIDED_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_strided_inputs_are_read_in_place_bitwise(case, dtype):
    """(B, N, H, D) tensors, qkv-packed slices and a longer KV cache give bitwise the output of
    the same data in contiguous (B, H, N, D): the kernels read the strided rows in place."""
    _, b, nq, nk, h, hk, d, causal = case
    gen = torch.Generator().manual_seed(nq * nk)
    q = torch.randn(b, nq, h, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, nk, hk, d, generator=gen).to(dtype) for _ in range(2))
    want, want_lse = _ops.attention(*(x.transpose(1, 2).contiguous() for x in (q, k, v)), causal=causal, bnhd=False)
    out, lse = _ops.attention(q, k, v, causal=causal)
    assert torch.equal(out.transpose(1, 2), want) and torch.equal(lse, want_lse)
    # K and V as slices of one packed (B, N, 2, H_kv, D) buffer (row stride 2·H_kv·D).
    kv = torch.stack((k, v), dim=2)
    out2, _ = _ops.attention(q, kv[:, :, 0], kv[:, :, 1], causal=causal)
    assert torch.equal(out2, out)
    # A cache with room for more tokens, read up to seqused_k (flash_attn_with_kvcache's path).
    cache_k, cache_v = (torch.cat((x, torch.full_like(x, float("nan"))), dim=1) for x in (k, v))
    used = torch.full((b,), nk, dtype=torch.int32)
    out3, _ = _ops.attention(q, cache_k, cache_v, causal=causal, seqused_k=used)
    want3, _ = _ops.attention(q, k, v, causal=causal, seqused_k=used)
    assert torch.equal(out3, want3)
