"""GPU peer timing for the flash-cuda backward (kernels/flash_bwd.cu; run.sh benches both): PyTorch's SDPA forward+backward
with the FLASH (FlashAttention-2) and cuDNN backends on the same shapes as run.sh's forward bench.
Backward alone = (fwd+bwd) − fwd, each the median of --reps CUDA-event timings; FLOPs by
FlashAttention's convention: forward 4·D per allowed pair × B·H, backward 2.5× that.

Usage: torch_bwd_gpu.py --batch B --heads H --dim D --seq N[,N...] --dtype f16|bf16 [--causal] [--reps R]
Prints one JSON line per (backend, N) with fwd_s, fwd_bwd_s, bwd_s, bwd_tflops."""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = [("torch-fa2", SDPBackend.FLASH_ATTENTION), ("torch-cudnn", SDPBackend.CUDNN_ATTENTION)]


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--seq", required=True)
    ap.add_argument("--dtype", choices=["f16", "bf16"], required=True)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    dt = torch.float16 if a.dtype == "f16" else torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (int(x) for x in a.seq.split(",")):
        shape = (a.batch, a.heads, n, a.dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dt, generator=gen).requires_grad_() for _ in range(3))
        do = torch.randn(shape, device="cuda", dtype=dt, generator=gen)
        pairs = n * (n + 1) // 2 if a.causal else n * n
        fwd_flops = 4 * a.dim * pairs * a.batch * a.heads
        for name, backend in BACKENDS:
            rec = {"backend": name, "seq": n, "dim": a.dim, "heads": a.heads, "batch": a.batch,
                   "causal": a.causal, "dtype": a.dtype, "status": "ok"}
            try:
                with sdpa_kernel(backend):
                    def fwd():
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)

                    def fwd_bwd():
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)
                        torch.autograd.grad(o, (q, k, v), do)

                    f = timed(fwd, a.reps)
                    fb = timed(fwd_bwd, a.reps)
                rec.update(fwd_s=f, fwd_bwd_s=fb, bwd_s=fb - f, fwd_tflops=fwd_flops / f / 1e12,
                           bwd_tflops=2.5 * fwd_flops / (fb - f) / 1e12)
            except Exception as e:  # torch refuses a backend for a shape/dtype/card: report, go on
                rec["status"] = "skipped: " + str(e).splitlines()[0][:200]
            print(json.dumps(rec), flush=True)
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
