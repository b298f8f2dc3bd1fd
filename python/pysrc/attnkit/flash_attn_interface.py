"""FlashAttention 2.x's Python interface on the CPU, on attnkit's kernels.

Change one import and FlashAttention code runs on a CPU::

    from flash_attn import flash_attn_func          # before (CUDA only)
    from attnkit.flash_attn import flash_attn_func  # after  (CPU torch tensors)

Names, signatures, defaults, layouts and return conventions are FlashAttention 2.x's:
tensors (batch, seqlen, nheads, headdim), varlen tensors (total, nheads, headdim); the output
has the input's dtype (float32, float16, bfloat16); ``softmax_lse`` is float32
(batch, nheads, seqlen_q) ((nheads, total_q) for varlen); GQA/MQA from the shapes; causal masks
and windows are bottom-right aligned, as FlashAttention's. Head dims FlashAttention refuses
(not a multiple of 8, > 256) are allowed where attnkit takes them (D <= 4096).

Every function is differentiable (attnkit's deterministic FlashAttention-2 backward, so
``deterministic`` holds trivially) and compiles under ``torch.compile(fullgraph=True)``: the
work is two ``torch.library.custom_op``s (``attnkit._ops``).

Differences, each raised or documented rather than silent:
- ``dropout_p > 0`` raises ValueError (no dropout RNG yet): pass 0.0 (``model.eval()``).
- ``return_attn_probs=True`` returns ``(out, softmax_lse, None)``: the LSE as FlashAttention
  returns it, but no ``S_dmask`` (FlashAttention documents it as testing-only and not
  guaranteed correct; attnkit never materializes the probabilities).
- ``flash_attn_with_kvcache(block_table=...)`` (paged KV cache) runs on the pages in place
  (``attnkit.paged``); ``flash_attn_varlen_func(block_table=...)`` raises ValueError (paged
  varlen prefill is not implemented: use flash_attn_with_kvcache).
- ``num_splits`` is accepted and ignored (the CPU kernel splits the work itself).
"""

import torch

from . import _ops

__all__ = [
    "flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func", "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func", "flash_attn_with_kvcache",
]


def _check(dropout_p, window_size, alibi_slopes=None):
    if dropout_p != 0.0:
        raise ValueError(
            f"dropout_p={dropout_p} is not supported by attnkit's CPU FlashAttention (no dropout RNG yet); "
            "pass dropout_p=0.0 (as FlashAttention models do in eval mode)")
    if len(window_size) != 2 or min(window_size) < -1:
        raise ValueError(f"window_size={window_size} must be (left, right) with -1 for unbounded")
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        raise ValueError(f"alibi_slopes has dtype {alibi_slopes.dtype}; FlashAttention takes float32 "
                         "(nheads,) or (batch, nheads)")


def _result(out, lse, return_attn_probs):
    return (out, lse, None) if return_attn_probs else out


def _run(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes, cu_q=None, cu_k=None, seqused_k=None):
    return _ops.attention(q, k, v, softmax_scale, causal, window_size[0], window_size[1], softcap, alibi_slopes,
                          cu_q, cu_k, seqused_k)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (batch, seqlen_q, nheads, headdim), k and v (batch, seqlen_k, nheads_k, headdim);
    nheads a multiple of nheads_k. Returns out (q's shape and dtype), or with
    ``return_attn_probs`` (out, softmax_lse (batch, nheads, seqlen_q) float32, None)."""
    _check(dropout_p, window_size, alibi_slopes)
    out, lse = _run(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes)
    return _result(out, lse, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv (batch, seqlen, 3, nheads, headdim): the three slices are read in place (strided)."""
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv (batch, seqlen_k, 2, nheads_k, headdim)."""
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (total_q, nheads, headdim), k and v (total_k, nheads_k, headdim); sequence s owns rows
    cu_seqlens_q[s]:cu_seqlens_q[s+1] (int32, (batch+1,)). softmax_lse is (nheads, total_q).
    max_seqlen_* are accepted for compatibility (attnkit reads the lengths from cu_seqlens)."""
    _check(dropout_p, window_size, alibi_slopes)
    _refuse_block_table(block_table)
    out, lse = _run(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), softmax_scale, causal, window_size, softcap,
                    alibi_slopes, cu_seqlens_q, cu_seqlens_k)
    return _result(out.squeeze(0), lse.squeeze(0), return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv (total, 3, nheads, headdim)."""
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                  deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv (total_k, 2, nheads_k, headdim)."""
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                  deterministic, return_attn_probs)


def _refuse_block_table(block_table):
    if block_table is not None:
        raise ValueError(
            "block_table (a paged KV cache) is not supported by attnkit's flash_attn_varlen_func; pass contiguous "
            "k/v, or use flash_attn_with_kvcache(..., block_table=...), which reads the pages in place")


from .kvcache import flash_attn_with_kvcache  # noqa: E402  (uses _run and _check above)
