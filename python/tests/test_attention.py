"""attnkit's Python door against a float64 NumPy oracle (and torch SDPA when torch imports).

Tolerances: f32 inputs within 2e-5 of the float64 oracle (absolute, outputs are O(1) convex
combinations of N(0,1) values: a few hundred f32 roundings); f16/bf16 inputs are compared with
the oracle on the *rounded* inputs, so only f32 accumulation error remains (same 2e-5). Torch
SDPA (f32 CPU) agrees within 1e-4.
"""

import math

import numpy as np
import pytest

import attnkit

try:
    import torch
except ImportError:  # the suite says how much it ran without torch (test_torch_* skip)
    torch = None


def oracle(q, k, v, causal=False, window=None, scale=None):
    """float64 softmax attention with attnkit's mask semantics (bottom-right causal,
    FlashAttention windows, GQA by head groups); rows with no allowed key are 0, LSE -inf."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, h, nq, d = q.shape
    hk, nk = k.shape[1], k.shape[2]
    k = np.repeat(k, h // hk, axis=1)
    v = np.repeat(v, h // hk, axis=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = np.einsum("bhid,bhjd->bhij", q, k) * scale
    i = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    allowed = np.ones((nq, nk), dtype=bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        left, right = window
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    z = e.sum(axis=-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", e / np.where(z == 0, 1, z), v)
    with np.errstate(divide="ignore"):
        lse = (np.log(z) + m)[..., 0]
    return out, lse


def qkv(b, h, hk, nq, nk, d, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    mk = lambda *s: rng.standard_normal(s).astype(dtype)
    return mk(b, h, nq, d), mk(b, hk, nk, d), mk(b, hk, nk, d)


# (name, B, H, H_kv, N_q, N_k, D, causal, window): ragged lengths, cross attention, GQA/MQA,
# windows that leave rows empty.
CASES = [
    ("n1", 1, 2, 2, 1, 1, 64, False, None),
    ("ragged17", 2, 2, 2, 17, 17, 64, False, None),
    ("cross", 1, 2, 2, 33, 130, 32, False, None),
    ("gqa", 1, 4, 2, 70, 70, 64, True, None),
    ("mqa_d40", 2, 4, 1, 65, 65, 40, False, None),
    ("causal_q_gt_k_empty_rows", 1, 1, 1, 150, 40, 64, True, None),
    ("window", 1, 2, 2, 100, 100, 80, False, (16, 4)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["auto", "flash-cpu", "sdpa"])
def test_matches_float64_oracle(case, backend):
    _, b, h, hk, nq, nk, d, causal, window = case
    q, k, v = qkv(b, h, hk, nq, nk, d)
    out, lse = attnkit.attention(q, k, v, backend=backend, causal=causal, window=window, return_lse=True)
    want, want_lse = oracle(q, k, v, causal, window)
    assert out.dtype == np.float32 and out.shape == q.shape and lse.shape == q.shape[:-1]
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=0)
    np.testing.assert_allclose(lse, want_lse, atol=2e-5, rtol=0)


def test_float16_rank3_scale_and_noncontiguous():
    q, k, v = qkv(1, 4, 2, 40, 50, 32, dtype=np.float16, seed=1)
    out = attnkit.attention(q[0], k[0], v[0], scale=0.3)
    assert out.shape == q[0].shape
    np.testing.assert_allclose(out, oracle(q, k, v, scale=0.3)[0][0], atol=2e-5, rtol=0)
    # Non-contiguous views (transposed storage, every other row, reversed keys) are gathered.
    qt = np.ascontiguousarray(q.astype(np.float32).transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    k2 = np.repeat(k.astype(np.float32), 2, axis=2)[:, :, ::2]
    v_rev = v.astype(np.float32)[:, :, ::-1].copy()[:, :, ::-1]
    assert not (qt.flags.c_contiguous or k2.flags.c_contiguous or v_rev.flags.c_contiguous)
    got = attnkit.attention(qt, k2, v_rev)
    np.testing.assert_allclose(got, oracle(q, k, v)[0], atol=2e-5, rtol=0)
    ro = q.astype(np.float32)
    ro.setflags(write=False)  # read-only arrays are fine: attnkit only reads
    attnkit.attention(ro, k2, v_rev)


def test_nan_stays_in_its_row():
    q, k, v = qkv(1, 2, 2, 20, 20, 16, seed=2)
    q[0, 1, 5, 3] = np.nan
    out = attnkit.attention(q, k, v, backend="flash-cpu")
    bad = ~np.isfinite(out).all(axis=-1)
    assert bad[0, 1, 5] and bad.sum() == 1
    clean = q.copy()
    clean[0, 1, 5] = 0
    ref = attnkit.attention(clean, k, v, backend="flash-cpu")
    mask = np.ones(bad.shape, dtype=bool)
    mask[0, 1, 5] = False
    assert np.array_equal(out[mask], ref[mask])


BAD = [
    ("float64", lambda q, k, v: (q.astype(np.float64), k, v), ValueError, "float64|<f8"),
    ("int32", lambda q, k, v: (q.astype(np.int32), k, v), ValueError, "<i4"),
    ("mixed dtypes", lambda q, k, v: (q, k.astype(np.float16), v), ValueError, "share a dtype"),
    ("head dim", lambda q, k, v: (q, k[..., :4], v[..., :4]), ValueError, "head dim differs"),
    ("kv heads", lambda q, k, v: (q[:, :3], k[:, :2], v[:, :2]), ValueError, "multiple of H_kv"),
    ("k vs v", lambda q, k, v: (q, k, v[:, :, :5]), ValueError, "must match"),
    ("rank 2", lambda q, k, v: (q[0, 0], k[0, 0], v[0, 0]), ValueError, "expected \\(B, H, N, D\\)"),
    ("empty", lambda q, k, v: (q[:, :, :0], k, v), ValueError, "seq_q must be ≥ 1"),
    ("list", lambda q, k, v: (q.tolist(), k, v), TypeError, "not an array"),
    ("masked", lambda q, k, v: (np.ma.masked_array(q), k, v), None, None),
]


@pytest.mark.parametrize("name,mutate,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise(name, mutate, exc, msg):
    q, k, v = qkv(1, 4, 4, 6, 6, 8)
    args = mutate(q, k, v)
    if exc is None:  # masked arrays: either refused or computed on the data, never a crash
        try:
            attnkit.attention(*args)
        except ValueError:
            pass
        return
    with pytest.raises(exc, match=msg):
        attnkit.attention(*args)


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"backend": "nope"}, ValueError, "unknown backend `nope`"),
        ({"scale": -1.0}, ValueError, "scale"),
        ({"window": (-3, 0)}, ValueError, "window"),
        ({"backend": "local-block", "block_size": 0}, ValueError, "block"),
        ({"bogus": 1}, TypeError, "unknown backend option `bogus`"),
        ({"backend": "flash-cuda"}, (ValueError, RuntimeError), "flash-cuda"),
    ],
)
def test_bad_options_raise(kwargs, exc, msg):
    q, k, v = qkv(1, 2, 2, 6, 6, 8)
    with pytest.raises(exc, match=msg):
        attnkit.attention(q, k, v, **kwargs)


def test_backend_options_reach_the_backend():
    q, k, v = qkv(1, 2, 2, 64, 64, 16)
    a = attnkit.attention(q, k, v, backend="performer", features=32, seed=1)
    b = attnkit.attention(q, k, v, backend="performer", features=32, seed=2)
    assert a.shape == q.shape and np.isfinite(a).all() and not np.array_equal(a, b)


def test_backends_lists_availability_with_reasons():
    rows = attnkit.backends()
    names = [r["name"] for r in rows]
    assert {"reference", "sdpa", "flash-cpu", "auto"} <= set(names)
    for r in rows:
        assert set(r) == {"name", "exactness", "device", "available", "reason"}
        assert r["available"] == (r["reason"] is None)
    assert next(r for r in rows if r["name"] == "flash-cpu")["available"]


def test_output_owns_its_memory():
    q, k, v = qkv(1, 2, 2, 8, 8, 8)
    out = attnkit.attention(q, k, v)
    del q, k, v
    assert out.base is not None and np.isfinite(out).all()  # wraps attnkit's buffer, alive


@pytest.mark.skipif(torch is None, reason="torch not importable")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_tensors_match_sdpa(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 33, 64, generator=g).to(getattr(torch, dtype))
    k = torch.randn(2, 4, 47, 64, generator=g).to(q.dtype)
    v = torch.randn(2, 4, 47, 64, generator=g).to(q.dtype)
    out = attnkit.attention(q, k, v, causal=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == q.shape
    # Oracle on the rounded inputs (bf16 has no NumPy dtype: widen in torch first).
    want = oracle(*(t.float().numpy() for t in (q, k, v)), causal=True)[0]
    # f32/f16 inputs are computed in f32. bf16 inputs run on AVX512_BF16 where the CPU has it,
    # with P rounded to bf16 as FlashAttention does on GPUs: each weight then carries a relative
    # error ≤ 2⁻⁹ and, since the weights sum to 1, the output an absolute one ≤ 2⁻⁹·max|v|
    # (doubled for the normalization); the Rust suites hold it to the bf16 tolerance rule.
    atol = 2.0**-8 * float(v.float().abs().max()) if dtype == "bfloat16" else 2e-5
    np.testing.assert_allclose(out.numpy(), want, atol=atol, rtol=0)
    if dtype == "float32":
        # torch's is_causal is top-left aligned; attnkit's bottom-right. Give SDPA the mask.
        i = torch.arange(33)[:, None] + (47 - 33)
        mask = torch.arange(47)[None, :] <= i
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, sdpa, atol=1e-4, rtol=0)
    # A transposed (non-contiguous) tensor and a tensor needing grad.
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(attnkit.attention(qt, k, v, causal=True), out)
    with pytest.raises((ValueError, RuntimeError, TypeError, BufferError)):
        attnkit.attention(q.float().requires_grad_(), k.float(), v.float())
