"""attnkit's attention kernels for NumPy arrays and PyTorch CPU tensors.

- ``attnkit.attention(q, k, v, ...)``: (B, H, N, D) NumPy arrays or CPU tensors, float32 output.
- ``attnkit.flash_attn_interface`` (also ``attnkit.flash_attn``): FlashAttention 2.x's functions
  (``flash_attn_func``, varlen, packed, ``flash_attn_with_kvcache``) on CPU torch tensors,
  differentiable and ``torch.compile``-able (needs torch).
- ``attnkit.kvcache_attention`` (``attnkit.paged``): FlashAttention's ``flash_attn_with_kvcache``
  with ``block_table`` (a paged KV cache, appended and read in place) on NumPy arrays or tensors.
- ``attnkit.scaled_dot_product_attention``: ``torch.nn.functional.scaled_dot_product_attention``'s
  signature and semantics (top-left causal when L != S), on attnkit's kernels (needs torch).

torch is optional: importing attnkit never imports it.
"""

from ._attnkit import __version__, _time_in_rust, attention, backends
from .paged import kvcache_attention

__all__ = ["attention", "backends", "kvcache_attention", "scaled_dot_product_attention", "__version__", "_time_in_rust"]


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` on attnkit (see attnkit.sdpa)."""
    from .sdpa import scaled_dot_product_attention as sdpa

    return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                scale=scale, enable_gqa=enable_gqa)
