"""``torch.nn.functional.scaled_dot_product_attention`` on attnkit: PyTorch's signature and
semantics, (..., L, D) query and (..., S, D) key/value (rank 3 or 4), differentiable.

Causal alignment differs between the two interfaces, and each follows its origin:

=====================  ====================================  ==============================
                       PyTorch SDPA (``is_causal``)           FlashAttention (``causal``)
=====================  ====================================  ==============================
query i sees keys      j <= i            (top-left)           j <= i + S - L (bottom-right)
L = S                  the same mask                          the same mask
L < S (decode, chunk)  the last S - L keys are never seen     every key up to the diagonal
L > S                  every row sees key 0                   the first L - S rows see none
=====================  ====================================  ==============================

attnkit's kernels are bottom-right; top-left is had without a mask: L < S reads only the first
L keys (a view), and L > S is a window (-1, L - S) on the bottom-right diagonal.

``attn_mask``: bool (True = attend) or float (added to the scores), broadcastable to
(B, H, L, S); it gets no gradient. ``dropout_p > 0`` raises ValueError. ``enable_gqa`` as in
PyTorch: H a multiple of H_kv needs ``enable_gqa=True``.
"""

import math

import torch

from . import _ops


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p} is not supported by attnkit's scaled_dot_product_attention; "
                         "pass dropout_p=0.0")
    if is_causal and attn_mask is not None:
        raise ValueError("attn_mask and is_causal=True cannot both be set (as in PyTorch): fold the causal "
                         "mask into attn_mask")
    rank = query.dim()
    if rank not in (3, 4) or key.dim() != rank or value.dim() != rank:
        raise ValueError(f"query, key, value must all be rank 3 or 4; got {query.dim()}, {key.dim()}, {value.dim()}")
    if rank == 3:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    h, hk = query.shape[1], key.shape[1]
    if h != hk and not enable_gqa:
        raise ValueError(f"query has {h} heads and key/value {hk}: pass enable_gqa=True for grouped-query "
                         "attention (as in PyTorch)")
    b, l, s = query.shape[0], query.shape[2], key.shape[2]
    wr = -1
    if is_causal and l < s:  # top-left: keys >= L are never seen
        key, value = key[:, :, :l], value[:, :, :l]
    elif is_causal and l > s:  # top-left: j <= i is the window right = L - S from bottom-right
        wr, is_causal = l - s, False
    bias = mask = None
    if attn_mask is not None:
        m = attn_mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        mb = b if m.shape[0] != 1 else 1
        mh = h if m.shape[1] != 1 else 1
        m = m.expand(mb, mh, l, s).contiguous()
        if m.dtype == torch.bool:
            mask = m
        else:
            bias = m.detach()
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    out, _ = _ops.attention(query, key, value, scale, is_causal, -1, wr, 0.0, None, None, None, None, False, bias,
                            mask)
    return out.squeeze(0) if rank == 3 else out
