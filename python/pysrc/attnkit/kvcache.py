"""``flash_attn_with_kvcache`` (FlashAttention 2.x) on the CPU: decoding against a KV cache.

Steps, as FlashAttention's kernel does them:
1. rotary (optional): ``rotary_cos``/``rotary_sin`` (seqlen_ro, rotary_dim / 2) rotate the first
   rotary_dim features of the new k at positions cache_seqlens - cache_leftpad + t, and of q at
   the same positions when causal or local (else all of q at position cache_seqlens -
   cache_leftpad); interleaved (GPT-J: pairs (0,1), (2,3), ...) or half-split (GPT-NeoX:
   pairs (i, i + rotary_dim/2)). Computed in float32, rounded to the input dtype.
2. append (optional): k and v are written **in place** into k_cache/v_cache at rows
   cache_seqlens[b]..cache_seqlens[b]+seqlen_new of cache entry cache_batch_idx[b].
3. attention of q over keys cache_leftpad[b] .. cache_seqlens[b]+seqlen_new of that entry, causal
   and windows bottom-right aligned to that range (attnkit's ``seqused_k``).

cache_leftpad shifts the keys to start at 0 (one gather of the cache); without it and without
cache_batch_idx the cache is read in place: the kernels take (B, N, H, D) rows with strides, so
decoding a token costs no O(cache) copy. Not differentiable (nor is FlashAttention's).

With ``block_table`` (a paged cache: k_cache/v_cache (num_blocks, page_size, nheads_k, headdim),
block_table (batch, max_blocks) int32) the same steps run in Rust on the pages in place
(``attnkit.paged.kvcache_attention``, which also takes NumPy arrays): the append writes into the
pages, the kernel reads them where they lie (no gather), cache_leftpad is supported, and
cache_batch_idx is refused (as FlashAttention 2 refuses it with block_table). The paged path is
one ``torch.library.custom_op`` (``attnkit::kvcache_paged``, mutating k_cache and v_cache), so
``torch.compile(fullgraph=True)`` compiles a decode step that calls it.
"""

import torch

from .flash_attn_interface import _check, _run
from . import _ops


def _rotary(x, cos, sin, pos, interleaved):
    """x (B, N, H, D) rotated at positions pos (B, N) on its first 2 * cos.shape[1] features."""
    rd = 2 * cos.shape[1]
    c, s = cos[pos].unsqueeze(2).float(), sin[pos].unsqueeze(2).float()  # (B, N, 1, rd/2)
    xr = x[..., :rd].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot.to(x.dtype), x[..., rd:]), dim=-1)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """q (batch, seqlen_q, nheads, headdim); k_cache, v_cache (batch_cache, seqlen_cache,
    nheads_k, headdim), or with block_table (num_blocks, page_size, nheads_k, headdim); k, v (batch, seqlen_new, nheads_k, headdim) appended in place;
    cache_seqlens int or (batch,) int32. Returns out, or (out, softmax_lse) with
    ``return_softmax_lse``."""
    _check(0.0, window_size, alibi_slopes)
    if block_table is not None:
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx cannot be used with block_table (FlashAttention 2 refuses the pair "
                             "too): the block table already maps each batch row to its pages; reorder block_table "
                             "rows instead")
        b = q.shape[0]
        if cache_seqlens is None:
            cap = block_table.shape[1] * k_cache.shape[1]
            seqlens = torch.full((b,), cap if k is None else 0, dtype=torch.int32)
        elif isinstance(cache_seqlens, int):
            seqlens = torch.full((b,), cache_seqlens, dtype=torch.int32)
        else:
            seqlens = cache_seqlens
        with torch.no_grad():
            out, lse = _ops.kvcache_paged(q, k_cache, v_cache, block_table, seqlens, k, v, rotary_cos, rotary_sin,
                                          bool(rotary_interleaved), cache_leftpad, softmax_scale, bool(causal),
                                          int(window_size[0]), int(window_size[1]), float(softcap), alibi_slopes)
        return (out, lse) if return_softmax_lse else out
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new keys and values to append)")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    b, nq = q.shape[0], q.shape[1]
    n_cache = k_cache.shape[1]
    if cache_seqlens is None:
        seqlens = torch.full((b,), n_cache if k is None else 0, dtype=torch.long)
    elif isinstance(cache_seqlens, int):
        seqlens = torch.full((b,), cache_seqlens, dtype=torch.long)
    else:
        seqlens = cache_seqlens.long()
    leftpad = None if cache_leftpad is None else cache_leftpad.long()
    idx = torch.arange(b) if cache_batch_idx is None else cache_batch_idx.long()
    n_new = 0 if k is None else k.shape[1]
    if int((seqlens + n_new).max()) > n_cache:
        raise ValueError(f"cache_seqlens + seqlen_new = {int((seqlens + n_new).max())} exceeds the cache's "
                         f"seqlen_cache={n_cache}")
    start = seqlens if leftpad is None else seqlens - leftpad  # rotary positions within the sequence
    if rotary_cos is not None:
        local = window_size[0] >= 0 or window_size[1] >= 0
        steps = torch.arange(nq) if (causal or local) else torch.zeros(nq, dtype=torch.long)
        q = _rotary(q, rotary_cos, rotary_sin, start[:, None] + steps, rotary_interleaved)
        if k is not None:
            k = _rotary(k, rotary_cos, rotary_sin, start[:, None] + torch.arange(n_new), rotary_interleaved)
    if k is not None:
        rows = seqlens[:, None] + torch.arange(n_new)  # (B, n_new)
        k_cache[idx[:, None], rows] = k.to(k_cache.dtype)
        v_cache[idx[:, None], rows] = v.to(v_cache.dtype)
    used = seqlens + n_new
    # The cache reaches the kernel in place (a strided (B, N, H, D) view read up to seqused_k, no
    # copy); only cache_batch_idx (a gather of the selected entries) and cache_leftpad copy.
    kc, vc = k_cache[:b], v_cache[:b]
    if cache_batch_idx is not None:
        kc, vc = k_cache[idx], v_cache[idx]
    if leftpad is not None:
        pos = (leftpad[:, None] + torch.arange(n_cache)).clamp(max=n_cache - 1)  # (B, n_cache)
        kc = kc[torch.arange(b)[:, None], pos]
        vc = vc[torch.arange(b)[:, None], pos]
        used = used - leftpad
    with torch.no_grad():
        out, lse = _run(q, kc, vc, softmax_scale, causal, window_size, softcap, alibi_slopes,
                        seqused_k=used.to(torch.int32))
    return (out, lse) if return_softmax_lse else out
