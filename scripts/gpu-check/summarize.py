"""Summary table for scripts/gpu-check/run.sh: flash-cuda (`attnkit bench --json`) next to
PyTorch SDPA FA2 and cuDNN (torch_sdpa_gpu.py), TFLOP/s and the ratio to FA2, one row per
(dtype, D, causal, N). Usage: summarize.py ATTNKIT_JSONL TORCH_JSONL  -> Markdown on stdout."""
import json
import sys


def read(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return rows


def key(r):
    return (str(r.get("dtype")), int(r.get("dim", 0)), bool(r.get("causal")), int(r.get("seq", 0)))


def main(attn_path, torch_path):
    table = {}
    for r in read(attn_path):
        if r.get("backend") == "flash-cuda" and r.get("gflops") is not None:
            # Only CUDA-event timing compares with torch's; a host-timed row includes transfers.
            if str(r.get("timing", "device")).lower() == "device":
                table.setdefault(key(r), {})["flash-cuda"] = r["gflops"] / 1e3
    for r in read(torch_path):
        if r.get("tflops") is not None:
            table.setdefault(key(r), {})[r["backend"]] = r["tflops"]
    if not table:
        print("No speed results (see the bench logs).")
        return
    print("| dtype | D | causal | N | flash-cuda TFLOP/s | FA2 TFLOP/s | cuDNN TFLOP/s | flash-cuda / FA2 |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    for k in sorted(table):
        t = table[k]
        ours, fa2, cudnn = t.get("flash-cuda"), t.get("torch-fa2"), t.get("torch-cudnn")
        ratio = f"{ours / fa2:.2f}" if ours and fa2 else "-"
        print(f"| {k[0]} | {k[1]} | {'yes' if k[2] else 'no'} | {k[3]} | {fmt(ours)} | {fmt(fa2)} | {fmt(cudnn)} | {ratio} |")


def backward(attn_path, torch_path):
    """The backward rows: `attnkit bench --backward` (bwd_gflops, host-timed) and
    torch_bwd_gpu.py (bwd_tflops, CUDA events)."""
    table = {}
    for r in read(attn_path):
        if r.get("backend") == "flash-cuda" and r.get("bwd_gflops") is not None:
            table.setdefault(key(r), {})["flash-cuda"] = r["bwd_gflops"] / 1e3
    for r in read(torch_path):
        if r.get("bwd_tflops") is not None:
            table.setdefault(key(r), {})[r["backend"]] = r["bwd_tflops"]
    if not table:
        return
    print()
    print("Backward (flash-cuda host-timed, uploads and downloads included; torch (fwd+bwd) − fwd on CUDA events):")
    print()
    print("| dtype | D | causal | N | flash-cuda bwd TFLOP/s | FA2 bwd TFLOP/s | cuDNN bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    for k in sorted(table):
        t = table[k]
        print(f"| {k[0]} | {k[1]} | {'yes' if k[2] else 'no'} | {k[3]} | {fmt(t.get('flash-cuda'))} | "
              f"{fmt(t.get('torch-fa2'))} | {fmt(t.get('torch-cudnn'))} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    backward(sys.argv[1], sys.argv[2])
