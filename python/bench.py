"""attnkit.attention against torch.nn.functional.scaled_dot_product_attention in one process, and
the Python bindings' overhead: the same call timed inside Rust (attnkit._time_in_rust, no Python
between the kernel's start and end) against the call from Python.

    python python/bench.py [N ...]        (default 1024 4096; B=1, H=8, D=64, float32, CPU)

Rounds alternate the contenders so background load hits them alike; medians are printed.
Results are in the README ("Python").
"""

import sys
import time

import numpy as np

import attnkit

try:
    import torch
except ImportError:
    torch = None

B, H, D = 1, 8, 64


def median(xs):
    return float(np.median(xs))


def bench(n, rounds):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, H, n, D)).astype(np.float32) for _ in range(3))
    contenders = {
        "attnkit (python call)": lambda: attnkit.attention(q, k, v),
        "attnkit (timed in rust)": None,
    }
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        contenders["attnkit (torch tensors)"] = lambda: attnkit.attention(tq, tk, tv)
        contenders["torch sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
    for name, f in contenders.items():  # warm-up: thread pools, allocations, backend cache
        f() if f else attnkit._time_in_rust(q, k, v, reps=1)
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, f in contenders.items():
            if f is None:
                times[name] += attnkit._time_in_rust(q, k, v, reps=1)
            else:
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
    med = {name: median(t) for name, t in times.items()}
    flops = 4.0 * B * H * n * n * D
    base = med["attnkit (python call)"]
    for name, m in med.items():
        print(f"{n:>6} {name:<24} {m * 1e3:>9.2f} ms {flops / m / 1e9:>8.1f} GFLOP/s {m / base:>7.3f} x")
    overhead = base / med["attnkit (timed in rust)"] - 1
    print(f"{n:>6} python overhead: {overhead * 100:+.1f}% (python call vs the same call timed in rust)")
    if torch is not None:
        print(f"{n:>6} torch sdpa / attnkit: {med['torch sdpa'] / base:.2f}")


def main():
    ns = [int(a) for a in sys.argv[1:]] or [1024, 4096]
    threads = torch.get_num_threads() if torch is not None else "n/a"
    print(f"B={B} H={H} D={D} float32, non-causal; torch {getattr(torch, '__version__', 'absent')} threads {threads}")
    for n in ns:
        bench(n, rounds=15 if n <= 1024 else 5)


if __name__ == "__main__":
    main()
