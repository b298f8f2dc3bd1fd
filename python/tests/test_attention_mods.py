"""attnkit.attention's modifiers (alibi_slopes, softcap, sinks, bias, mask, cu_seqlens_q/k,
seqused_k) on NumPy arrays, against a float64 NumPy oracle of attnkit's documented semantics
(src/problem/modifiers.rs: softcap, then ALiBi bottom-right, then bias, then masks; sinks join
the denominator), and varlen / seqused_k against the same call on the pieces. Tolerance: 2e-5
absolute (f32 inputs, O(1) outputs, as test_attention.py)."""

import math

import numpy as np
import pytest

import attnkit


def oracle(q, k, v, softcap=None, alibi_slopes=None, bias=None, mask=None, sinks=None):
    alibi = alibi_slopes
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, h, nq, d = q.shape
    nk = k.shape[2]
    s = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    if softcap:
        s = softcap * np.tanh(s / softcap)
    if alibi is not None:
        dist = np.abs(np.arange(nq)[:, None] + nk - nq - np.arange(nk)[None, :])
        s = s - np.asarray(alibi, np.float64).reshape(-1, h)[:, :, None, None] * dist
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    m = s.max(-1, keepdims=True)
    if sinks is not None:
        m = np.maximum(m, np.asarray(sinks, np.float64)[None, :, None, None])
    e = np.exp(s - m)
    z = e.sum(-1, keepdims=True)
    if sinks is not None:
        z = z + np.exp(np.asarray(sinks, np.float64)[None, :, None, None] - m)
    return np.einsum("bhij,bhjd->bhid", e / z, v)


def data(b=2, h=3, nq=20, nk=28, d=16, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return rng, f(b, h, nq, d), f(b, h, nk, d), f(b, h, nk, d)


@pytest.mark.parametrize("which", ["softcap", "alibi", "alibi_per_batch", "bias", "mask", "sinks", "all"])
def test_modifier_matches_oracle(which):
    rng, q, k, v = data()
    kw = {}
    if which in ("softcap", "all"):
        kw["softcap"] = 2.0
    if which in ("alibi", "all"):
        kw["alibi_slopes"] = [0.5, 0.25, 0.125]
    if which == "alibi_per_batch":
        kw["alibi_slopes"] = rng.random(6).astype(np.float32).tolist()
    if which in ("bias", "all"):
        kw["bias"] = rng.standard_normal((1, 3, 20, 28)).astype(np.float32)
    if which in ("mask", "all"):
        m = rng.random((2, 1, 20, 28)) > 0.4
        m[..., 0] = True
        kw["mask"] = m
    if which in ("sinks", "all"):
        kw["sinks"] = [0.5, -1.0, 2.0]
    got = attnkit.attention(q, k, v, backend="flash-cpu", **kw)
    want = oracle(q, k, v, **kw)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_varlen_and_seqused_k_match_the_pieces():
    _, q, k, v = data(b=1, h=2, nq=30, nk=30)
    cu = [0, 12, 30]
    got = attnkit.attention(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
    for a, e in zip(cu, cu[1:]):
        piece = attnkit.attention(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], causal=True)
        np.testing.assert_allclose(got[:, :, a:e], piece, atol=1e-6, rtol=0)
    used = attnkit.attention(q, k, v, causal=True, seqused_k=[17])
    np.testing.assert_allclose(used, attnkit.attention(q, k[:, :, :17], v[:, :, :17], causal=True), atol=1e-6)


@pytest.mark.parametrize("kw,needle", [
    (dict(softcap=0.0), "softcap"),
    (dict(alibi_slopes=[1.0]), "alibi"),
    (dict(cu_seqlens_q=[0, 20]), "cu_seqlens"),
    (dict(bias=np.zeros((1, 1, 5, 5), np.float32)), "bias"),
])
def test_bad_modifiers_raise_value_error(kw, needle):
    _, q, k, v = data()
    with pytest.raises(ValueError, match=needle):
        attnkit.attention(q, k, v, **kw)
