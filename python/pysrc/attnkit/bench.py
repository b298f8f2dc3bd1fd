"""``python -m attnkit.bench``: FlashAttention's interface against PyTorch's CPU SDPA on the same
tensors, in one process, alternating the contenders (order reversed every other round, a pause
before each call: PyTorch's OpenMP threads spin after a call), medians and ratios.

    python -m attnkit.bench [--n 4096] [--b 2] [--h 8] [--d 64] [--rounds 5] [--decode-n 16384] [--quick]
                            [--dtype float32 bfloat16] [--passes fwd fwdbwd]

Rows: forward and forward+backward in float32 and bfloat16 (flash_attn_func on (B, N, H, D)
against F.scaled_dot_product_attention on the (B, H, N, D) transposed views of the same
memory); the layout cost (the same flash call on contiguous (B, H, N, D)); decoding one token
against a (B, N, H_kv, D) KV cache of --decode-n keys (H_kv = H/4) read in place, against the
contiguous (B, H_kv, N, D) call, the copy-then-call the door did before the kernels took
strides, and one memcpy of K and V (a streaming ceiling); the f32 GEMM ceiling of the
same run; and the per-call overhead at N = 16 (flash_attn_func from Python minus the same
kernel timed inside Rust, with torch.neg alternated call by call as a trivial-op baseline).
Thread count: torch.get_num_threads() and attnkit's rayon pool (both follow the machine unless
RAYON_NUM_THREADS / torch.set_num_threads say otherwise).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from . import _attnkit, _ops
from .flash_attn_interface import flash_attn_func

PAUSE_S = 0.1


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def alternate(contenders, rounds):
    for f in contenders.values():
        f()
    times = {name: [] for name in contenders}
    for r in range(rounds):
        names = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in names:
            time.sleep(PAUSE_S)
            times[name].append(timed(contenders[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_ceiling(n=2048, reps=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = min(timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2.0 * n ** 3 / t / 1e9


def overhead(calls=3000):
    """Per-call cost of flash_attn_func at B=1, N=16, H=8, D=64 f32 beyond the kernel's own time,
    with a trivial torch op (torch.neg on q) alternated call by call as the baseline. Medians of
    (flash_attn_func, torch.neg, the kernel timed inside Rust on the same data)."""
    q, k, v = (torch.randn(1, 16, 8, 64) for _ in range(3))
    py, base = [], []
    for _ in range(calls):
        t = time.perf_counter()
        flash_attn_func(q, k, v)
        t1 = time.perf_counter()
        torch.neg(q)
        base.append(time.perf_counter() - t1)
        py.append(t1 - t)
    qt, kt, vt = (x.transpose(1, 2).contiguous().numpy() for x in (q, k, v))
    rust = _attnkit._time_in_rust(qt, kt, vt, reps=calls)
    return statistics.median(py), statistics.median(base), statistics.median(rust)


def shape_rows(b, n, h, d, dtype, rounds, backward):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, n, h, d, generator=gen).to(dtype).requires_grad_(backward) for _ in range(3))
    qt, kt, vt = (x.detach().transpose(1, 2) for x in (q, k, v))  # SDPA's layout, same memory
    qc, kc, vc = (x.contiguous() for x in (qt, kt, vt))
    flops = 4.0 * b * h * n * n * d * (3.5 if backward else 1.0)  # FlashAttention's convention
    if backward:
        qs, ks, vs = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        do = torch.randn(b, n, h, d, generator=gen).to(dtype)
        dot = do.transpose(1, 2)

        def fa():
            flash_attn_func(q, k, v).backward(do)

        def sd():
            F.scaled_dot_product_attention(qs, ks, vs).backward(dot)

        contenders = {"attnkit flash_attn_func": fa, "torch sdpa": sd}
    else:
        contenders = {
            "attnkit flash_attn_func": lambda: flash_attn_func(q, k, v),
            "attnkit (B,H,N,D) contiguous": lambda: _ops.attention(qc, kc, vc, bnhd=False),
            "torch sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt),
        }
    with torch.set_grad_enabled(backward):
        med = alternate(contenders, rounds)
    what = "fwd+bwd" if backward else "fwd"
    for name, t in med.items():
        print(f"{str(dtype)[6:]:>8} {what:<8} {name:<30} {t * 1e3:9.1f} ms {flops / t / 1e9:7.1f} GFLOP/s")
    fa = med["attnkit flash_attn_func"]
    print(f"{str(dtype)[6:]:>8} {what:<8} torch sdpa / flash_attn_func = {med['torch sdpa'] / fa:.2f}x")
    if not backward:
        print(f"{str(dtype)[6:]:>8} {what:<8} layout: (B,N,H,D) / (B,H,N,D) time = "
              f"{fa / med['attnkit (B,H,N,D) contiguous']:.3f}")


def decode_rows(b, n_cache, h, hkv, d, dtype, rounds):
    """One decoded token against a full (B, N, H_kv, D) KV cache: flash_attn_with_kvcache reading
    the cache in place, against the same kernel on a contiguous (B, H_kv, N, D) copy of it, the
    copy-then-call the door did before it took strides, and a streaming ceiling (one memcpy of
    K and V: each byte read once and written once, so at least the kernel's read traffic)."""
    from .kvcache import flash_attn_with_kvcache
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(b, 1, h, d, generator=gen).to(dtype)
    kc, vc = (torch.randn(b, n_cache, hkv, d, generator=gen).to(dtype) for _ in range(2))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, kc, vc))
    kb, vb = torch.zeros_like(kt), torch.zeros_like(vt)  # preallocated: no page faults in the copy
    contenders = {
        "attnkit with_kvcache (B,N,H,D)": lambda: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=n_cache),
        "attnkit (B,H,N,D) contiguous": lambda: _ops.attention(qt, kt, vt, bnhd=False),
        "copy to (B,H,N,D) + call (old)": lambda: _ops.attention(qt, kc.transpose(1, 2).contiguous(),
                                                             vc.transpose(1, 2).contiguous(), bnhd=False),
        "copy K and V once (ceiling)": lambda: (kb.copy_(kt), vb.copy_(vt)),
    }
    with torch.no_grad():
        med = alternate(contenders, rounds)
    gb = 2 * kc.numel() * kc.element_size() / 1e9
    for name, t in med.items():
        print(f"{str(dtype)[6:]:>8} decode   {name:<30} {t * 1e6:9.1f} us {gb / t:7.1f} GB/s")
    print(f"{str(dtype)[6:]:>8} decode   layout: (B,N,H,D) / (B,H,N,D) time = "
          f"{med['attnkit with_kvcache (B,N,H,D)'] / med['attnkit (B,H,N,D) contiguous']:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--b", type=int, default=2)
    ap.add_argument("--h", type=int, default=8)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    ap.add_argument("--passes", nargs="+", choices=["fwd", "fwdbwd"], default=["fwd", "fwdbwd"])
    ap.add_argument("--decode-n", type=int, default=16384, help="KV cache length of the decode rows (0: none)")
    ap.add_argument("--quick", action="store_true", help="N=512, 3 rounds, fewer overhead calls (a smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.n, a.rounds, a.decode_n = 512, 3, 2048
    print(f"B={a.b} N={a.n} H={a.h} D={a.d} non-causal; torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; GEMM ceiling f32 {gemm_ceiling():.1f} GFLOP/s")
    py, base, rust = overhead(300 if a.quick else 3000)
    print(f"overhead at N=16 (B=1 H=8 D=64 f32): flash_attn_func {py * 1e6:.1f} us, kernel in Rust "
          f"{rust * 1e6:.1f} us, overhead {(py - rust) * 1e6:.1f} us; torch.neg alternated {base * 1e6:.1f} us")
    for dtype in a.dtype:
        for p in a.passes:
            shape_rows(a.b, a.n, a.h, a.d, getattr(torch, dtype), a.rounds, p == "fwdbwd")
        if a.decode_n:
            decode_rows(a.b, a.decode_n, a.h, max(1, a.h // 4), a.d, getattr(torch, dtype), 5 * a.rounds)


if __name__ == "__main__":
    main()
