"""A float64 PyTorch reference of FlashAttention's semantics, after FlashAttention's own
tests/test_flash_attn.py (attention_ref, construct_local_mask, padding helpers), written anew.

``attention_ref(..., upcast=False)`` is the naive computation in the input dtype: FlashAttention's
rule holds an implementation to at most 2x that computation's error against the float64 one,
plus a floor (``assert_fa_close``).
"""

import math

import torch


def local_mask(sq, sk, window, causal, q_lens=None, k_lens=None, b=1):
    """(B, 1, sq, sk) bool, True = masked out; bottom-right aligned per sequence lengths."""
    i = torch.arange(sq)[None, :, None]
    j = torch.arange(sk)[None, None, :]
    ql = torch.full((b,), sq) if q_lens is None else q_lens
    kl = torch.full((b,), sk) if k_lens is None else k_lens
    diag = i + (kl - ql)[:, None, None]
    left, right = window
    if causal:
        right = 0
    masked = (j >= kl[:, None, None]).expand(b, sq, sk).clone()
    if right >= 0:
        masked |= j > diag + right
    if left >= 0:
        masked |= j < diag - left
    return masked[:, None]


def attention_ref(q, k, v, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None, q_lens=None,
                  k_lens=None, upcast=True):
    """q (B, Nq, H, D), k, v (B, Nk, Hk, D). Returns (out (B, Nq, H, D), lse (B, H, Nq)).
    Rows past q_lens come out 0; keys past k_lens are masked."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // hk, dim=2)
    v = v.repeat_interleave(h // hk, dim=2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = torch.einsum("bthd,bshd->bhts", q * scale, k)
    if softcap > 0:
        s = torch.tanh(s / softcap) * softcap
    ql = torch.full((b,), sq) if q_lens is None else q_lens.long()
    kl = torch.full((b,), sk) if k_lens is None else k_lens.long()
    if alibi is not None:
        slopes = alibi.reshape(-1, h).expand(b, h).to(s.dtype)
        i = torch.arange(sq)[None, :, None] + (kl - ql)[:, None, None]
        dist = (i - torch.arange(sk)[None, None, :]).abs()
        s = s - slopes[:, :, None, None] * dist[:, None].to(s.dtype)
    masked = local_mask(sq, sk, window, causal, ql, kl, b)
    s = s.masked_fill(masked, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no key: 0
    out = torch.einsum("bhts,bshd->bthd", p.to(v.dtype), v)
    qmask = torch.arange(sq)[None, :] < ql[:, None]
    out = out.masked_fill(~qmask[:, :, None, None], 0.0)
    return out.to(dtype) if not upcast else out, lse


def unit_roundoff(dtype):
    return {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]


def score_term(q, k, v, scale=None):
    """u(f32) scale max||q_i|| max||k_j|| max|v|: the f32 rounding of one score, carried to the
    output (attnkit::validate's term; it matters where the reference is ~0, e.g. dQ with one key)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qn, kn = (t.double().norm(dim=-1).max().item() for t in (q, k))
    return 2.0 ** -24 * scale * qn * kn * v.double().abs().max().item()


def grad_term(q, k, v, dout, scale=None):
    """The f32 rounding of D_i = rowsum(dO_i * O_i) against dP_ij = dO_i . v_j, which cancel
    exactly in dS = P (dP - D) where one key takes the whole weight (N_k = 1, say; the naive
    computation, which never forms D, gets 0 there): u(f32) scale rms||dO_i|| rms||v_j||
    max|q|,|k|, grown as a random walk over the sqrt(rows) the gradient sums. In f32 it is
    ~1e-5 at these shapes (the rounding it models measured up to 1.1e-5 with N_k = 1, MQA);
    in f16/bf16 it is far below the naive error."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    rows = max(q.shape[1] * q.shape[2] // k.shape[2], k.shape[1])
    dn, vn = (t.double().norm(dim=-1).pow(2).mean().sqrt().item() for t in (dout, v))
    qk = max(q.double().abs().max().item(), k.double().abs().max().item())
    return 2.0 ** -24 * scale * math.sqrt(rows) * dn * vn * qk


def assert_fa_close(got, ref64, naive, dtype, what, mult=2.0, score=0.0):
    """FlashAttention's rule: max|got - ref| <= mult * max|naive - ref| + floor, with the floor of
    attnkit::validate: 4 u(dtype) max(1, max|ref|) (one rounding of the output) + ``score``
    (``score_term``)."""
    got, ref64, naive = got.double(), ref64.double(), naive.double()
    err = (got - ref64).abs().max().item()
    naive_err = (naive - ref64).abs().max().item()
    floor = 4 * unit_roundoff(dtype) * max(1.0, ref64.abs().max().item()) + score
    assert err <= mult * naive_err + floor, f"{what}: err {err:.3g} > {mult} x naive {naive_err:.3g} + {floor:.3g}"


def padding_mask(max_len, b, gen, min_len=1):
    """(B, max_len) bool with random lengths in [min_len, max_len] (FlashAttention's 'random'
    mode), and the lengths."""
    lens = torch.randint(min_len, max_len + 1, (b,), generator=gen)
    return torch.arange(max_len)[None, :] < lens[:, None], lens


def unpad(x, mask):
    """(B, N, ...) → (total, ...), cu_seqlens int32 (B+1,)."""
    lens = mask.sum(1)
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    return x[mask], cu
