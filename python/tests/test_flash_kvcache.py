"""flash_attn_with_kvcache against float64 references: append in place at cache_seqlens, rotary
(interleaved and half-split, computed here through complex numbers or an explicit rotation in
float64: independent formulas), cache_batch_idx, cache_leftpad, GQA, causal and non-causal
decoding; and the paged cache (block_table): NumPy tests that run without torch (as CI runs
them) against a NumPy float64 reference that gathers the pages, torch tests that compare the
paged call with the contiguous one, and every block_table refusal (nothing written).

Tolerances of the NumPy tests: the kernel computes in float32 from the cache's values, so
against the float64 reference on the same (rounded) cache values the error is float32
accumulation (1e-4 absolute on outputs of magnitude <= ~3) plus, for float16, the output's
rounding to float16 (2^-11 relative, so 2e-3 absolute). Appended rows: one rounding of the
float32 rotation to the cache dtype (1e-6 in float32, 2e-3 in float16)."""

import numpy as np
import pytest

try:
    import torch
except ImportError:
    torch = None

from attnkit import kvcache_attention  # noqa: E402

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
if torch is not None:
    from attnkit.flash_attn_interface import flash_attn_with_kvcache  # noqa: E402
    from attnkit import _ops  # noqa: E402
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
    ("decode_mha", "float32", 2, 4, 4, 64, 128, 1, 1, True, None, False, False),
    ("decode_gqa_rot_interleaved", "float32", 3, 8, 2, 64, 100, 1, 1, True, True, False, False),
    ("chunk_rot_halfsplit", "bfloat16", 2, 4, 2, 128, 200, 7, 7, True, False, False, False),
    ("noncausal_rot_q_at_seqlen", "float32", 2, 4, 4, 32, 64, 3, 3, False, True, False, False),
    ("no_append", "float16", 2, 4, 1, 64, 90, 5, 0, True, None, False, False),
    ("batch_idx", "float32", 2, 4, 2, 64, 80, 1, 2, True, False, True, False),
    ("leftpad_rot", "float32", 3, 4, 4, 64, 96, 2, 2, True, True, False, True),
]


@needs_torch
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kvcache(case):
    _, dtype, b, h, hk, d, nc, nq, nn, causal, rot, use_idx, use_lp = case
    dtype = getattr(torch, dtype)
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


@needs_torch
def test_overflowing_append_is_refused():
    q = torch.randn(1, 1, 2, 16)
    cache = torch.randn(1, 8, 2, 16)
    new = torch.randn(1, 2, 2, 16)
    with pytest.raises(ValueError, match="seqlen_cache"):
        flash_attn_with_kvcache(q, cache, cache.clone(), new, new, cache_seqlens=7)


# ---- The paged cache (block_table) ------------------------------------------------------------


def np_rotate(x, cos, sin, pos, interleaved):
    """x (B, N, H, D) float64 rotated at pos (B, N): an explicit 2x2 rotation of each pair."""
    x = x.copy()
    half = cos.shape[1]
    c, s = cos[pos].astype(np.float64)[:, :, None, :], sin[pos].astype(np.float64)[:, :, None, :]
    a, b = (np.arange(half) * 2, np.arange(half) * 2 + 1) if interleaved else (np.arange(half), np.arange(half) + half)
    x0, x1 = x[..., a].copy(), x[..., b].copy()
    x[..., a], x[..., b] = x0 * c - x1 * s, x0 * s + x1 * c
    return x


def np_paged_ref(q, kc, vc, table, seqlens, leftpad, k, v, cos, sin, interleaved, causal, window):
    """The expected caches after the append (cache dtype) and the float64 output, on the pages
    gathered into contiguous keys per sequence."""
    kc, vc = kc.copy(), vc.copy()
    b, nq, h, d = q.shape
    ps, hk = kc.shape[1], kc.shape[2]
    nn = 0 if k is None else k.shape[1]
    q64 = q.astype(np.float64)
    start = seqlens - leftpad
    if cos is not None:
        local = window[0] >= 0 or window[1] >= 0
        steps = np.arange(nq) if (causal or local) else np.zeros(nq, dtype=np.int64)
        q64 = np_rotate(q64, cos, sin, start[:, None] + steps, interleaved)
        k = np_rotate(k.astype(np.float64), cos, sin, start[:, None] + np.arange(nn), interleaved)
    for bi in range(b):
        for t in range(nn):
            pos = seqlens[bi] + t
            page, slot = table[bi, pos // ps], pos % ps
            kc[page, slot], vc[page, slot] = k[bi, t].astype(kc.dtype), v[bi, t].astype(vc.dtype)
    out = np.zeros((b, nq, h, d))
    for bi in range(b):
        pos = np.arange(leftpad[bi], seqlens[bi] + nn)
        n = len(pos)
        keys = kc[table[bi, pos // ps], pos % ps].astype(np.float64)  # (n, hk, d)
        vals = vc[table[bi, pos // ps], pos % ps].astype(np.float64)
        i, j = np.arange(nq)[:, None], np.arange(n)[None, :]
        diag = i + n - nq
        allowed = np.ones((nq, n), dtype=bool)
        right = 0 if causal else window[1]
        if right >= 0:
            allowed &= j <= diag + right
        if window[0] >= 0:
            allowed &= j >= diag - window[0]
        for hi in range(h):
            g = hi // (h // hk)
            s = np.where(allowed, q64[bi, :, hi] @ keys[:, g].T / np.sqrt(d), -np.inf)
            m = s.max(axis=1, keepdims=True)
            p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
            den = p.sum(axis=1, keepdims=True)
            out[bi, :, hi] = np.where(den > 0, p @ vals[:, g] / np.where(den > 0, den, 1.0), 0.0)
    return kc, vc, out


def rotary_tables(n, rd):
    ang = np.arange(n)[:, None] * (10000.0 ** (-np.arange(rd // 2) / (rd // 2)))[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


PAGED = [
    # (name, dtype, B, Hq, Hk, D, page, max_pages, n_q, n_new, causal, window, rotary, leftpad, lens)
    ("decode_gqa_rot_interleaved", np.float32, 3, 8, 2, 64, 16, 9, 1, 1, True, (-1, -1), True, False, [0, 37, 130]),
    ("decode_mqa_f16", np.float16, 2, 4, 1, 32, 16, 6, 1, 1, True, (-1, -1), None, False, [15, 80]),
    ("chunk_rot_halfsplit_f16", np.float16, 2, 4, 2, 64, 32, 4, 5, 5, True, (-1, -1), False, False, [27, 64]),
    ("full_table_after_append", np.float32, 1, 2, 2, 16, 16, 3, 2, 2, True, (-1, -1), None, False, [46]),
    ("noncausal_window", np.float32, 2, 4, 2, 32, 16, 8, 3, 3, False, (20, 1), True, False, [100, 40]),
    ("leftpad_rot", np.float32, 2, 4, 4, 32, 16, 8, 2, 2, True, (-1, -1), True, True, [50, 90]),
    ("no_append_page_ne_len", np.float32, 2, 4, 2, 32, 16, 7, 4, 0, True, (-1, -1), None, False, [1, 101]),
]


@pytest.mark.parametrize("case", PAGED, ids=[c[0] for c in PAGED])
def test_paged_numpy(case):
    """Runs without torch: the paged path on NumPy arrays against the NumPy float64 reference,
    with a shuffled block table (pages of different sequences interleaved, spare pages between)."""
    _, dtype, b, h, hk, d, ps, mp, nq, nn, causal, window, rot, use_lp, lens = case
    rng = np.random.default_rng(nq * 31 + d)
    num_pages = b * mp + 3
    table = rng.permutation(num_pages)[: b * mp].reshape(b, mp).astype(np.int32)
    kc = rng.standard_normal((num_pages, ps, hk, d)).astype(dtype)
    vc = rng.standard_normal((num_pages, ps, hk, d)).astype(dtype)
    q = rng.standard_normal((b, nq, h, d)).astype(dtype)
    k = rng.standard_normal((b, nn, hk, d)).astype(dtype) if nn else None
    v = rng.standard_normal((b, nn, hk, d)).astype(dtype) if nn else None
    seqlens = np.array(lens, dtype=np.int32)
    leftpad = np.minimum(rng.integers(0, 10, b), seqlens).astype(np.int32) if use_lp else None
    cos = sin = None
    if rot is not None:
        cos, sin = rotary_tables(mp * ps, d // 2)
    kc0, vc0 = kc.copy(), vc.copy()
    out, lse = kvcache_attention(q, kc, vc, table, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                 cache_leftpad=leftpad, causal=causal, window_size=window,
                                 rotary_interleaved=bool(rot), return_softmax_lse=True)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (b, h, nq) and lse.dtype == np.float32
    lp = np.zeros(b, dtype=np.int64) if leftpad is None else leftpad.astype(np.int64)
    kc_ref, vc_ref, ref = np_paged_ref(q, kc0, vc0, table, seqlens.astype(np.int64), lp, k, v, cos, sin, rot, causal,
                                       window)
    tol = 1e-6 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(kc.astype(np.float64), kc_ref.astype(np.float64), atol=tol, rtol=tol)
    assert np.array_equal(vc, vc_ref), "v rows written elsewhere than their pages, or rounded differently"
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=1e-4 if dtype == np.float32 else 2e-3, rtol=1e-3)


def small_paged(num_pages=4, ps=16, b=1, mp=2):
    rng = np.random.default_rng(5)
    kc = rng.standard_normal((num_pages, ps, 2, 16)).astype(np.float32)
    return (rng.standard_normal((b, 1, 2, 16)).astype(np.float32), kc, kc.copy(),
            rng.standard_normal((b, 1, 2, 16)).astype(np.float32), np.zeros((b, mp), dtype=np.int32))


@pytest.mark.parametrize("name,table,seqlens,match", [
    ("bad_page_index", [[0, 9]], [20], r"block_table\[0\]\[1\] = 9 is not a page index in \[0, 4\)"),
    ("negative_page_reached_by_append", [[0, -1]], [16], r"block_table\[0\]\[1\] = -1"),
    ("table_too_small", [[0, 1]], [32], r"cache full.*block_table.*cannot append 1"),
    ("page_outside_int32", [[0, 2 ** 40]], [20], r"block_table\[0\]\[1\] = 1099511627776.*outside int32"),
    ("negative_seqlen", [[0, 1]], [-1], r"cache_seqlens\[0\] = -1 is negative"),
    ("table_rows", [[0, 1], [2, 3]], [3], r"block_table has 2 rows, expected batch = 1"),
])
def test_paged_refusals_name_the_argument_and_write_nothing(name, table, seqlens, match):
    q, kc, vc, new, _ = small_paged()
    kc0, vc0 = kc.copy(), vc.copy()
    with pytest.raises(ValueError, match=match):
        kvcache_attention(q, kc, vc, np.array(table, dtype=np.int64), new, new.copy(), cache_seqlens=seqlens)
    assert np.array_equal(kc, kc0) and np.array_equal(vc, vc0), f"{name}: the refused call wrote into the cache"


def test_paged_padding_past_the_reached_slots_is_never_read():
    """Entries past seqlen + seqlen_new are padding (-1 here, as engines leave them)."""
    q, kc, vc, new, _ = small_paged(mp=3)
    out = kvcache_attention(q, kc, vc, np.array([[2, -1, -1]]), new, new.copy(), cache_seqlens=[5])
    ref = kvcache_attention(q, kc, vc, np.array([[2, 0, 1]]), cache_seqlens=[6])
    assert np.array_equal(out, ref)


def test_paged_other_refusals():
    q, kc, vc, new, table = small_paged()
    with pytest.raises(ValueError, match="rotary_cos/rotary_sin need k and v"):
        cos, sin = rotary_tables(32, 8)
        kvcache_attention(q, kc, vc, table, rotary_cos=cos, rotary_sin=sin, cache_seqlens=[4])
    with pytest.raises(ValueError, match="rotary tables hold 4 positions, position 4 is needed"):
        cos, sin = rotary_tables(4, 8)
        kvcache_attention(q, kc, vc, table, new, new.copy(), rotary_cos=cos, rotary_sin=sin, cache_seqlens=[4])
    with pytest.raises(ValueError, match="k_cache and v_cache share memory"):
        kvcache_attention(q, kc, kc, table, new, new.copy(), cache_seqlens=[4])
    with pytest.raises(ValueError, match="v_cache must be a contiguous"):
        kvcache_attention(q, kc, vc[:, :8], table, cache_seqlens=[4])
    with pytest.raises(ValueError, match="page size 8 is below the minimum 16"):
        kvcache_attention(q, kc[:, :8].copy(), vc[:, :8].copy(), table, cache_seqlens=[4])


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("rot", [None, True, False])
def test_paged_equals_contiguous_flash_attn_with_kvcache(dtype, rot):
    """The paged call (shuffled pages of 16) against the contiguous call on the same tokens:
    the same caches after the append and the same output within FlashAttention's rule."""
    dtype = getattr(torch, dtype)
    b, h, hk, d, ps, mp, nn = 2, 8, 2, 64, 16, 8, 3
    gen = torch.Generator().manual_seed(3)
    nc = ps * mp
    k_cont = torch.randn(b, nc, hk, d, generator=gen).to(dtype)
    v_cont = torch.randn(b, nc, hk, d, generator=gen).to(dtype)
    table = torch.randperm(b * mp + 2, generator=gen)[: b * mp].reshape(b, mp).to(torch.int32)
    k_pages = torch.zeros(b * mp + 2, ps, hk, d, dtype=dtype)
    v_pages = torch.zeros_like(k_pages)
    k_pages[table.long()] = k_cont.reshape(b, mp, ps, hk, d)
    v_pages[table.long()] = v_cont.reshape(b, mp, ps, hk, d)
    q = torch.randn(b, nn, h, d, generator=gen).to(dtype)
    k = torch.randn(b, nn, hk, d, generator=gen).to(dtype)
    v = torch.randn(b, nn, hk, d, generator=gen).to(dtype)
    seqlens = torch.tensor([17, 100], dtype=torch.int32)
    leftpad = torch.tensor([0, 6], dtype=torch.int32)
    cos = sin = None
    if rot is not None:
        ang = torch.arange(nc)[:, None] * (10000.0 ** (-torch.arange(16) / 16))[None, :]
        cos, sin = ang.cos(), ang.sin()
    kw = dict(rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens, cache_leftpad=leftpad, causal=True,
              rotary_interleaved=bool(rot), return_softmax_lse=True)
    out_p, lse_p = flash_attn_with_kvcache(q, k_pages, v_pages, k, v, block_table=table, **kw)
    out_c, lse_c = flash_attn_with_kvcache(q, k_cont, v_cont, k, v, **kw)
    gathered = k_pages[table.long()].reshape(b, nc, hk, d)
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(gathered.double(), k_cont.double(), atol=tol, rtol=tol)
    assert torch.equal(v_pages[table.long()].reshape(b, nc, hk, d), v_cont)
    # The contiguous path rounds the rotated q to the dtype, the paged one keeps it in f32.
    atol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(out_p.double(), out_c.double(), atol=atol, rtol=atol)
    torch.testing.assert_close(lse_p, lse_c, atol=atol * 10, rtol=1e-3)


@needs_torch
def test_paged_refuses_cache_batch_idx():
    q = torch.randn(1, 1, 2, 16)
    cache = torch.randn(2, 16, 2, 16)
    with pytest.raises(ValueError, match="cache_batch_idx cannot be used with block_table"):
        flash_attn_with_kvcache(q, cache, cache.clone(), cache_seqlens=4, cache_batch_idx=torch.tensor([0]),
                                block_table=torch.zeros(1, 1, dtype=torch.int32))


def test_paged_serving_loop():
    """The README's Python serving loop, checked: after prefill and 10 decode steps each
    sequence's pages hold its 30 tokens, and the last output matches the reference."""
    batch, heads, kv_heads, d, page = 2, 8, 2, 64, 16
    rng = np.random.default_rng(0)
    x = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    k_cache = np.zeros((8, page, kv_heads, d), np.float32)
    v_cache = np.zeros_like(k_cache)
    block_table = np.array([[5, 2, 7, 0], [1, 6, 3, 4]], np.int32)
    seqlens = np.zeros(batch, np.int32)
    ks, vs = [], []
    for n in [20] + [1] * 10:
        q, k, v = x(batch, n, heads, d), x(batch, n, kv_heads, d), x(batch, n, kv_heads, d)
        kc0, vc0 = k_cache.copy(), v_cache.copy()
        out = kvcache_attention(q, k_cache, v_cache, block_table, k, v, cache_seqlens=seqlens, causal=True)
        ks.append(k)
        vs.append(v)
        _, _, ref = np_paged_ref(q, kc0, vc0, block_table, seqlens.astype(np.int64), np.zeros(batch, np.int64), k, v,
                                 None, None, None, True, (-1, -1))
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)
        seqlens += n
    kall = np.concatenate(ks, axis=1)  # (batch, 30, kv_heads, d)
    pos = np.arange(30)
    for b in range(batch):
        assert np.array_equal(k_cache[block_table[b, pos // page], pos % page], kall[b])


@needs_torch
def test_varlen_block_table_is_refused_by_name():
    from attnkit.flash_attn_interface import flash_attn_varlen_func

    x = torch.randn(4, 2, 16)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="block_table.*flash_attn_with_kvcache"):
        flash_attn_varlen_func(x, x, x, cu, cu, 4, 4, block_table=torch.zeros(1, 1, dtype=torch.int32))


@needs_torch
def test_paged_kvcache_compiles_fullgraph_and_opchecks():
    """The paged path is one custom op mutating k_cache/v_cache: a decode step calling
    flash_attn_with_kvcache(..., block_table=...) compiles with fullgraph=True (no graph break),
    appends into the pages like eager, returns the same output; opcheck passes on the op."""
    gen = torch.Generator().manual_seed(4)
    b, h, hk, d, ps, mp = 2, 4, 2, 32, 16, 3
    pages = torch.randn(b * mp, ps, hk, d, generator=gen)
    table = torch.arange(b * mp, dtype=torch.int32).flip(0).reshape(b, mp)
    q = torch.randn(b, 1, h, d, generator=gen)
    k, v = (torch.randn(b, 1, hk, d, generator=gen) for _ in range(2))
    seqlens = torch.tensor([5, 20], dtype=torch.int32)

    def step(q, kc, vc, k, v):
        out = flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, block_table=table, causal=True)
        return out * 2.0

    ke, ve = pages.clone(), pages.clone() + 1.0
    eager = step(q, ke, ve, k, v)
    torch._dynamo.reset()
    kc, vc = pages.clone(), pages.clone() + 1.0
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(q, kc, vc, k, v)
    assert torch.equal(compiled, eager)
    assert torch.equal(kc, ke) and torch.equal(vc, ve) and not torch.equal(kc, pages), "append lost or wrong"
    args = (q, pages.clone(), pages.clone(), table, seqlens, k, v, None, None, True, None, None, True, -1, -1, 0.0,
            None)
    torch.library.opcheck(_ops.kvcache_paged, args)
