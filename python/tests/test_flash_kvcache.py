"""flash_attn_with_kvcache against the float64 reference: append in place at cache_seqlens,
rotary (interleaved and half-split, computed here through complex numbers: an independent
formula), cache_batch_idx, cache_leftpad, GQA, causal and non-causal decoding, and the
block_table refusal."""

import pytest

torch = pytest.importorskip("torch")

from attnkit.flash_attn_interface import flash_attn_with_kvcache  # noqa: E402
from flash_ref import assert_fa_close, attention_ref  # noqa: E402


def rotary_ref(x, cos, sin, pos, interleaved):
    """x (B, N, H, D) float64 rotated at pos (B, N) through complex multiplication."""
    rd = 2 * cos.shape[1]
    x = x.double()
    ang = torch.complex(cos[pos].double(), sin[pos].double())[:, :, None, :]  # (B, N, 1, rd/2)
    xr = x[..., :rd]
    if interleaved:
        z = torch.view_as_complex(xr.reshape(*xr.shape[:-1], rd // 2, 2).contiguous())
        rot = torch.view_as_real(z * ang).flatten(-2)
    else:
        z = torch.complex(xr[..., : rd // 2], xr[..., rd // 2:]) * ang
        rot = torch.cat((z.real, z.imag), -1)
    return torch.cat((rot, x[..., rd:]), -1)


CASES = [
    # (name, dtype, B, Hq, Hk, D, n_cache, n_q, n_new, causal, rotary (None | interleaved), batch_idx, leftpad)
    ("decode_mha", torch.float32, 2, 4, 4, 64, 128, 1, 1, True, None, False, False),
    ("decode_gqa_rot_interleaved", torch.float32, 3, 8, 2, 64, 100, 1, 1, True, True, False, False),
    ("chunk_rot_halfsplit", torch.bfloat16, 2, 4, 2, 128, 200, 7, 7, True, False, False, False),
    ("noncausal_rot_q_at_seqlen", torch.float32, 2, 4, 4, 32, 64, 3, 3, False, True, False, False),
    ("no_append", torch.float16, 2, 4, 1, 64, 90, 5, 0, True, None, False, False),
    ("batch_idx", torch.float32, 2, 4, 2, 64, 80, 1, 2, True, False, True, False),
    ("leftpad_rot", torch.float32, 3, 4, 4, 64, 96, 2, 2, True, True, False, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kvcache(case):
    _, dtype, b, h, hk, d, nc, nq, nn, causal, rot, use_idx, use_lp = case
    gen = torch.Generator().manual_seed(nc + nq)
    bc = b + 2 if use_idx else b
    k_cache = torch.randn(bc, nc, hk, d, generator=gen).to(dtype)
    v_cache = torch.randn(bc, nc, hk, d, generator=gen).to(dtype)
    q = torch.randn(b, nq, h, d, generator=gen).to(dtype)
    k = torch.randn(b, nn, hk, d, generator=gen).to(dtype) if nn else None
    v = torch.randn(b, nn, hk, d, generator=gen).to(dtype) if nn else None
    seqlens = torch.randint(nq, nc - nn - 5, (b,), generator=gen, dtype=torch.int32)
    idx = torch.randperm(bc, generator=gen)[:b].to(torch.int32) if use_idx else None
    leftpad = torch.minimum(torch.randint(0, 10, (b,), generator=gen), seqlens.long() - nq).to(torch.int32) \
        if use_lp else None
    cos = sin = None
    if rot is not None:
        rd = d // 2
        ang = torch.arange(nc)[:, None] * (10000.0 ** (-torch.arange(rd // 2) / (rd // 2)))[None, :]
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    kc0, vc0 = k_cache.clone(), v_cache.clone()
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k, v, rotary_cos=cos, rotary_sin=sin,
                                       cache_seqlens=seqlens, cache_batch_idx=idx, cache_leftpad=leftpad,
                                       causal=causal, rotary_interleaved=bool(rot), return_softmax_lse=True)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (b, h, nq)
    # Expected cache and inputs of the attention, in float64.
    ii = torch.arange(b) if idx is None else idx.long()
    lp = torch.zeros(b, dtype=torch.long) if leftpad is None else leftpad.long()
    start = seqlens.long() - lp
    qr = q.double()
    if rot is not None:
        qpos = start[:, None] + (torch.arange(nq) if causal else torch.zeros(nq, dtype=torch.long))
        qr = rotary_ref(q, cos, sin, qpos, rot)
    kc_ref, vc_ref = kc0.clone(), vc0.clone()
    for bi in range(b):
        if nn:
            kn = rotary_ref(k[bi:bi + 1], cos, sin, start[bi:bi + 1, None] + torch.arange(nn), rot)[0] \
                if rot is not None else k[bi]
            kc_ref[ii[bi], seqlens[bi]:seqlens[bi] + nn] = kn.to(dtype)
            vc_ref[ii[bi], seqlens[bi]:seqlens[bi] + nn] = v[bi]
    # Appended rows carry one rounding of the rotary result to the dtype; the rest is untouched.
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(k_cache.double(), kc_ref.double(), atol=tol, rtol=tol)
    assert torch.equal(v_cache, vc_ref)
    used = seqlens.long() + nn - lp
    pad = lambda x, bi: torch.nn.functional.pad(x[ii[bi], lp[bi]:], (0, 0, 0, 0, 0, int(lp[bi])))
    keys = torch.stack([pad(kc_ref, bi) for bi in range(b)])
    vals = torch.stack([pad(vc_ref, bi) for bi in range(b)])
    ref, ref_lse = attention_ref(qr, keys.double(), vals.double(), causal=causal, k_lens=used)
    naive, _ = attention_ref(qr.to(dtype), keys, vals, causal=causal, k_lens=used, upcast=False)
    # The rotated q is rounded to the dtype before the kernel (as FlashAttention does): allow it
    # one extra naive error.
    assert_fa_close(out, ref, naive, dtype, "out", mult=3.0 if rot is not None and dtype != torch.float32 else 2.0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-3 if dtype != torch.float32 else 1e-4, rtol=1e-4)


def test_block_table_is_refused_by_name():
    q = torch.randn(1, 1, 2, 16)
    cache = torch.randn(1, 32, 2, 16)
    with pytest.raises(ValueError, match="block_table.*cache_seqlens"):
        flash_attn_with_kvcache(q, cache, cache, cache_seqlens=4, block_table=torch.zeros(1, 1, dtype=torch.int32))


def test_overflowing_append_is_refused():
    q = torch.randn(1, 1, 2, 16)
    cache = torch.randn(1, 8, 2, 16)
    new = torch.randn(1, 2, 2, 16)
    with pytest.raises(ValueError, match="seqlen_cache"):
        flash_attn_with_kvcache(q, cache, cache.clone(), new, new, cache_seqlens=7)
