"""Attention over a paged KV cache, FlashAttention's ``flash_attn_with_kvcache(..., block_table=...)``
semantics, on NumPy arrays or CPU torch tensors (this module never imports torch).

Layout (FlashAttention's and FlashInfer's NHD pages): ``k_cache``/``v_cache`` are
(num_blocks, page_size, nheads_k, headdim), contiguous, float32, float16 or bfloat16 (torch);
``block_table`` (batch, max_blocks) int; sequence b's token t lives in slot t % page_size of page
block_table[b, t // page_size]. ``page_size`` >= 16 (FlashAttention 2 needs a multiple of 256,
FlashAttention 3 takes any: attnkit takes any from 16).

Steps, as FlashAttention's kernel does them:
1. every check first: shapes and dtypes, every block_table entry the new and attended slots
   reach must be a page index (entries past them are never read and may be padding, e.g. -1),
   seqlen + seqlen_new must fit the table (max_blocks * page_size), the rotary tables must reach
   the positions: a refusal is a ValueError naming the argument, and nothing is written;
2. rotary (with k and v only, as FlashAttention): the first rotary_dim features of the new k are
   rotated at positions cache_seqlens - cache_leftpad + t, q likewise when causal or local (else
   all of q at cache_seqlens - cache_leftpad); interleaved (GPT-J) or half-split (GPT-NeoX); in f32;
3. append: k and v are rounded to the cache's dtype and written **in place into the pages** at
   cache_seqlens[b] .. cache_seqlens[b] + seqlen_new (cache_seqlens itself is the caller's to
   advance, as in FlashAttention);
4. attention of q over keys cache_leftpad[b] .. cache_seqlens[b] + seqlen_new, causal and windows
   bottom-right aligned, read from the pages where they lie (no gather into a contiguous copy),
   in f32; out has q's dtype, softmax_lse is float32 (batch, nheads, seqlen_q).

``cache_batch_idx`` is not taken with pages (FlashAttention 2 refuses the pair too: the block
table already says where each sequence lives). Not differentiable (nor is FlashAttention's).
"""

from . import _attnkit

__all__ = ["kvcache_attention"]


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _int_list(x):
    return [int(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]


def _f32(x):
    """A contiguous float32 copy-or-view of a rotary table (the kernel reads f32 tables)."""
    if x is None:
        return None
    if _is_torch(x):
        return x.float().contiguous()
    import numpy as np

    return np.ascontiguousarray(x, dtype=np.float32)


def kvcache_attention(q, k_cache, v_cache, block_table, k=None, v=None, rotary_cos=None, rotary_sin=None,
                      cache_seqlens=None, cache_leftpad=None, softmax_scale=None, causal=False,
                      window_size=(-1, -1), softcap=0.0, rotary_interleaved=True, alibi_slopes=None,
                      return_softmax_lse=False):
    """q (batch, seqlen_q, nheads, headdim); k_cache, v_cache (num_blocks, page_size, nheads_k,
    headdim); block_table (batch, max_blocks) int; k, v (batch, seqlen_new, nheads_k, headdim)
    appended in place; cache_seqlens int or (batch,) int (default: the table's full capacity
    without k, 0 with k); cache_leftpad (batch,) int or None. Returns out (q's shape and dtype),
    or (out, softmax_lse) with ``return_softmax_lse``."""
    if len(window_size) != 2 or min(window_size) < -1:
        raise ValueError(f"window_size={window_size} must be (left, right) with -1 for unbounded")
    b, nq, h = q.shape[0], q.shape[1], q.shape[2]
    table = block_table.tolist() if hasattr(block_table, "tolist") else [list(r) for r in block_table]
    if cache_seqlens is None:
        cap = len(table[0]) * k_cache.shape[1] if table else 0
        seqlens = [cap if k is None else 0] * b
    elif isinstance(cache_seqlens, int):
        seqlens = [cache_seqlens] * b
    else:
        seqlens = _int_list(cache_seqlens)
    leftpad = None if cache_leftpad is None else _int_list(cache_leftpad)
    alibi = None
    if alibi_slopes is not None:
        alibi = [float(s) for s in (alibi_slopes.reshape(-1).tolist() if hasattr(alibi_slopes, "reshape")
                                    else alibi_slopes)]
    mods = {"causal": bool(causal), "window": (int(window_size[0]), int(window_size[1])), "scale": softmax_scale,
            "softcap": float(softcap), "alibi_slopes": alibi, "cu_seqlens_q": None, "cu_seqlens_k": None,
            "seqused_k": None, "sinks": None, "backend": "flash-cpu"}
    if _is_torch(q):
        import torch

        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty((b, h, nq), dtype=torch.float32)
    else:
        import numpy as np

        out = np.empty(q.shape, dtype=q.dtype)
        lse = np.empty((b, h, nq), dtype=np.float32)
    _attnkit._kvcache_paged(q, k_cache, v_cache, table, seqlens, out, lse, mods, k, v, _f32(rotary_cos),
                            _f32(rotary_sin), bool(rotary_interleaved), leftpad)
    return (out, lse) if return_softmax_lse else out
