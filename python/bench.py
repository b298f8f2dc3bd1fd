"""attnkit.attention against torch.nn.functional.scaled_dot_product_attention in one process, and
the Python bindings' overhead: the same call timed inside Rust (attnkit._time_in_rust, no Python
between the kernel's start and end) against the call from Python.

    python python/bench.py [N ...]        (default 1024 4096; B=1, H=8, D=64, float32, CPU)

Rounds alternate the contenders, reversing their order every other round, so background load
and order effects hit them alike; the torch rounds pause before each call, because PyTorch's
OpenMP threads spin for a while after a call and would slow whichever contender comes next.
Medians are printed.
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
PAUSE_S = 0.2


def median(xs):
    return float(np.median(xs))


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def bench(n, rounds, cost):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, H, n, D)).astype(np.float32) for _ in range(3))
    flops = 4.0 * B * H * n * n * D

    # 1. Overhead: the Python call against the same call timed in Rust, alternating which goes
    #    first, with nothing else in between.
    py, rust = [], []
    attnkit.attention(q, k, v)  # warm-up: thread pool, allocations, backend cache
    for r in range(rounds):
        for first in ([True, False] if r % 2 == 0 else [False, True]):
            if first:
                py.append(timed(lambda: attnkit.attention(q, k, v)))
            else:
                rust += attnkit._time_in_rust(q, k, v, reps=1)
    for name, t in [("attnkit (python call)", py), ("attnkit (timed in rust)", rust)]:
        print(f"{n:>6} {name:<24} {median(t) * 1e3:>9.2f} ms {flops / median(t) / 1e9:>8.1f} GFLOP/s")
    print(f"{n:>6} python overhead: {(median(py) / median(rust) - 1) * 100:+.1f}% of medians; "
          f"fixed cost / kernel time: {cost * 100 / median(rust):.3f}%")

    # 2. Against torch SDPA on the same memory, order reversed every other round, with a pause
    #    before each call (PyTorch's OpenMP threads spin after a call and would slow the next).
    if torch is None:
        return
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    contenders = {
        "attnkit (numpy)": lambda: attnkit.attention(q, k, v),
        "attnkit (torch tensors)": lambda: attnkit.attention(tq, tk, tv),
        "torch sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv),
    }
    for f in contenders.values():
        f()
    times = {name: [] for name in contenders}
    for r in range(rounds):
        names = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in names:
            time.sleep(PAUSE_S)
            times[name].append(timed(contenders[name]))
    med = {name: median(t) for name, t in times.items()}
    for name, m in med.items():
        print(f"{n:>6} {name:<24} {m * 1e3:>9.2f} ms {flops / m / 1e9:>8.1f} GFLOP/s")
    print(f"{n:>6} torch sdpa / attnkit: {med['torch sdpa'] / med['attnkit (torch tensors)']:.2f}")


def fixed_cost(calls=3000):
    """The bindings' own cost per call, from a problem so small the kernel is negligible
    (B=1, H=1, N=16, D=64): the Python call's median minus the same call timed in Rust."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 16, D)).astype(np.float32) for _ in range(3))
    py = []
    for _ in range(calls):
        t = time.perf_counter()
        attnkit.attention(q, k, v)
        py.append(time.perf_counter() - t)
    rust = attnkit._time_in_rust(q, k, v, reps=calls)
    return median(py) - median(rust), median(py), median(rust)


def main():
    ns = [int(a) for a in sys.argv[1:]] or [1024, 4096]
    threads = torch.get_num_threads() if torch is not None else "n/a"
    print(f"B={B} H={H} D={D} float32, non-causal; torch {getattr(torch, '__version__', 'absent')} threads {threads}")
    cost, py, rust = fixed_cost()
    print(f"bindings' fixed cost per call: {cost * 1e6:.1f} us (python {py * 1e6:.1f} us, rust {rust * 1e6:.1f} us at N=16)")
    for n in ns:
        bench(n, 21 if n <= 1024 else 5, cost)


if __name__ == "__main__":
    main()
