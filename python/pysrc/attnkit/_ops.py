"""The torch operators behind attnkit's torch functions: ``attnkit::fwd`` (O and the f32
log-sum-exp) and ``attnkit::bwd`` (dQ, dK, dV), each a ``torch.library.custom_op`` with a fake
(meta) implementation, and the autograd formula tying them together; and
``attnkit::kvcache_paged`` (flash_attn_with_kvcache on a paged cache, mutating its pages). ``torch.compile`` traces
them as single opaque nodes (no graph break); ``torch.library.opcheck`` checks them.

``attention(...)`` is the entry point: in eager mode, with no gradient to record, it calls the
Rust kernel directly (the dispatcher costs ~12 us per call, more than the N=16 kernel itself);
otherwise it goes through the operator.

Tensors are rank 4, (B, N, H, D) when ``bnhd`` else (B, H, N, D); LSE is (B, H, N_q) float32.
Small per-call lists (ALiBi slopes, cu_seqlens, seqused_k) travel as tensors in the op's
schema and as Python lists to Rust.
"""

from typing import Optional, Tuple

import torch

from . import _attnkit

Tensor = torch.Tensor


# The modifier dicts of calls without per-call lists, by their scalar arguments: Rust only reads
# them, and building one cost ~0.8 us of the ~21 us per-call overhead at N=16.
_PLAIN_MODS = {}


def _mods(scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, backend):
    if alibi is None and cu_q is None and cu_k is None and seqused_k is None:
        key = (scale, causal, wl, wr, softcap, backend)
        m = _PLAIN_MODS.get(key)
        if m is None:
            if len(_PLAIN_MODS) >= 64:
                _PLAIN_MODS.clear()
            m = _PLAIN_MODS[key] = _build_mods(scale, causal, wl, wr, softcap, None, None, None, None, backend)
        return m
    return _build_mods(scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, backend)


def _build_mods(scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, backend):
    lst = lambda t: None if t is None else t.tolist()
    return {
        "causal": bool(causal), "window": (int(wl), int(wr)), "scale": scale, "softcap": float(softcap),
        "alibi_slopes": None if alibi is None else alibi.float().reshape(-1).tolist(),
        "cu_seqlens_q": lst(cu_q), "cu_seqlens_k": lst(cu_k), "seqused_k": lst(seqused_k),
        "sinks": None, "backend": backend,
    }


def _lse_shape(q: Tensor, bnhd: bool):
    s = q.shape
    return (s[0], s[2], s[1]) if bnhd else (s[0], s[1], s[2])


def _fwd_impl(q, k, v, scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, bnhd, bias, mask, backend):
    # empty_like and positional sizes: ~2.5 us less per call than torch.empty(shape, dtype=...)
    # (measured at N=16), which matters when the kernel itself takes ~30 us.
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(*_lse_shape(q, bnhd), dtype=torch.float32)
    mods = (_mods(scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, backend))
    _attnkit._fwd(q, k, v, out, lse, mods, bnhd, bias, mask)
    return out, lse


@torch.library.custom_op("attnkit::fwd", mutates_args=(), device_types="cpu")
def fwd(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], causal: bool, wl: int, wr: int,
        softcap: float, alibi: Optional[Tensor], cu_q: Optional[Tensor], cu_k: Optional[Tensor],
        seqused_k: Optional[Tensor], bnhd: bool, bias: Optional[Tensor], mask: Optional[Tensor],
        backend: str) -> Tuple[Tensor, Tensor]:
    return _fwd_impl(q, k, v, scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, bnhd, bias, mask,
                     backend)


@fwd.register_fake
def _(q, k, v, scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, bnhd, bias, mask, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(_lse_shape(q, bnhd),
                                                                                   dtype=torch.float32)


@torch.library.custom_op("attnkit::bwd", mutates_args=(), device_types="cpu")
def bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: Optional[float],
        causal: bool, wl: int, wr: int, softcap: float, alibi: Optional[Tensor], cu_q: Optional[Tensor],
        cu_k: Optional[Tensor], seqused_k: Optional[Tensor], bnhd: bool, bias: Optional[Tensor],
        mask: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype) for t in (q, k, v))
    mods = (_mods(scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, backend))
    # dO arrives in whatever strides autograd produced (often expanded or transposed): Rust
    # reads any strides, so no .contiguous() here.
    _attnkit._bwd(dout, q, k, v, out, lse, dq, dk, dv, mods, bnhd, bias, mask)
    return dq, dk, dv


@bwd.register_fake
def _(dout, q, k, v, out, lse, *rest):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


_NONTENSOR = ("scale", "causal", "wl", "wr", "softcap", "alibi", "cu_q", "cu_k", "seqused_k", "bnhd", "bias",
              "mask", "backend")


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.rest = inputs[3:]


def _backward(ctx, dout, dlse):
    # dlse: FlashAttention's LSE is an output without a gradient of its own (as in flash_attn);
    # a loss through it is not propagated.
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = bwd(dout, q, k, v, out, lse, *ctx.rest)
    return (dq, dk, dv) + (None,) * len(_NONTENSOR)


fwd.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, scale=None, causal=False, wl=-1, wr=-1, softcap=0.0, alibi=None, cu_q=None, cu_k=None,
              seqused_k=None, bnhd=True, bias=None, mask=None, backend="auto"):
    """(O, LSE) through the operator, or straight into Rust when nothing needs the operator:
    eager mode, plain tensors, and no gradient to record."""
    if (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        return _fwd_impl(q, k, v, scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, bnhd, bias, mask,
                         backend)
    return fwd(q, k, v, scale, causal, wl, wr, softcap, alibi, cu_q, cu_k, seqused_k, bnhd, bias, mask, backend)


@torch.library.custom_op("attnkit::kvcache_paged", mutates_args=("k_cache", "v_cache"), device_types="cpu")
def kvcache_paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seqlens: Tensor,
                  k: Optional[Tensor], v: Optional[Tensor], rotary_cos: Optional[Tensor],
                  rotary_sin: Optional[Tensor], rotary_interleaved: bool, leftpad: Optional[Tensor],
                  scale: Optional[float], causal: bool, wl: int, wr: int, softcap: float,
                  alibi: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """flash_attn_with_kvcache(..., block_table=...) as one operator: appends k/v into the pages
    of k_cache/v_cache in place (declared in ``mutates_args``, so torch.compile orders it) and
    returns (out, softmax_lse) as fresh tensors."""
    from .paged import kvcache_attention
    return kvcache_attention(q, k_cache, v_cache, block_table, k, v, rotary_cos, rotary_sin, seqlens, leftpad,
                             scale, causal, (wl, wr), softcap, rotary_interleaved, alibi, True)


@kvcache_paged.register_fake
def _(q, k_cache, v_cache, block_table, seqlens, *rest):
    b, nq, h = q.shape[0], q.shape[1], q.shape[2]
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((b, h, nq), dtype=torch.float32)
