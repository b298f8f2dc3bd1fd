"""GPU peer timing for scripts/gpu-check/run.sh: PyTorch scaled_dot_product_attention with the FLASH
backend (FlashAttention-2) and the cuDNN backend, measured as `attnkit bench` measures flash-cuda:
inputs resident on the GPU, one warm-up, CUDA events around each call, median of --reps, FLOPs =
4·D per allowed (query, key) pair × B·H (causal with N_q = N_k: N(N+1)/2 pairs, as Problem::flops).

Usage: torch_sdpa_gpu.py --batch B --heads H --dim D --seq N[,N...] --dtype f16|bf16 [--causal]
       [--reps R] [--one]   (--one: a single call per backend, for ncu)
Prints one JSON line per (backend, N): backend, seq, dim, heads, batch, causal, dtype, status,
median_s, tflops (status "skipped: why" when torch refuses the backend)."""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = [("torch-fa2", SDPBackend.FLASH_ATTENTION), ("torch-cudnn", SDPBackend.CUDNN_ATTENTION)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--seq", required=True)
    ap.add_argument("--dtype", choices=["f16", "bf16"], required=True)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--one", action="store_true")
    a = ap.parse_args()
    dt = torch.float16 if a.dtype == "f16" else torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (int(x) for x in a.seq.split(",")):
        shape = (a.batch, a.heads, n, a.dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dt, generator=gen) for _ in range(3))
        pairs = n * (n + 1) // 2 if a.causal else n * n
        flops = 4 * a.dim * pairs * a.batch * a.heads
        for name, backend in BACKENDS:
            rec = {"backend": name, "seq": n, "dim": a.dim, "heads": a.heads, "batch": a.batch,
                   "causal": a.causal, "dtype": a.dtype, "status": "ok", "median_s": None, "tflops": None}
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)  # warm-up
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(1 if a.one else a.reps):
                        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)
                        stop.record()
                        stop.synchronize()
                        times.append(start.elapsed_time(stop) / 1e3)
                med = statistics.median(times)
                rec.update(median_s=med, tflops=flops / med / 1e12)
            except Exception as e:  # torch refuses a backend for a shape/dtype/card: report, go on
                rec["status"] = "skipped: " + str(e).splitlines()[0][:200]
            print(json.dumps(rec), flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
