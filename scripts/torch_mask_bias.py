"""PyTorch CPU SDPA vs attnkit flash-cpu with the same dense boolean mask and the same additive
bias, measured in one run (issue 11). Alternates torch and attnkit per case; both on 2 threads.

Usage (python from ../shared/peers/setup.sh, attnkit built with `cargo build --release`):
  $PY scripts/torch_mask_bias.py [--n 16384] [--heads 1] [--dim 64] [--density 0.1]
                                 [--block 64] [--reps 3] [--bin target/release/attnkit]
Prints one JSON line per measurement and one with the ratios. The mask is block-sparse
(each block×block tile allowed with probability `density`), saved as bool .npy; the bias is
seeded N(0,1) float32 (1, 1, N, N). attnkit reads both files (`bench --mask/--bias`)."""
import argparse, json, os, subprocess, tempfile, time
import numpy as np
import torch
import torch.nn.functional as F


def median_time(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def attnkit(binary, n, h, d, reps, extra):
    cmd = [binary, "bench", "--json", "--threads", "2", "--backends", "flash-cpu", "--seq", str(n),
           "--heads", str(h), "--dim", str(d), "--reps", str(reps), "--max-time", "600"] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rec = [json.loads(l) for l in out.splitlines() if l.startswith("{")][-1]
    return rec["median_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bin", default="target/release/attnkit")
    a = ap.parse_args()
    torch.set_num_threads(2)
    n, h, d = a.n, a.heads, a.dim
    rng = np.random.default_rng(7)
    nb = -(-n // a.block)
    blocks = rng.random((nb, nb)) < a.density
    mask = np.repeat(np.repeat(blocks, a.block, 0), a.block, 1)[:n, :n].reshape(1, 1, n, n)
    bias = rng.standard_normal((1, 1, n, n), dtype=np.float32)
    tmp = tempfile.mkdtemp()
    mpath, bpath = os.path.join(tmp, "mask.npy"), os.path.join(tmp, "bias.npy")
    np.save(mpath, mask); np.save(bpath, bias)
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    tm, tb = torch.from_numpy(mask), torch.from_numpy(bias)
    res = {}
    res["torch_dense"] = median_time(lambda: F.scaled_dot_product_attention(q, k, v), a.reps)
    res["attnkit_dense"] = attnkit(a.bin, n, h, d, a.reps, [])
    res["torch_bool_mask"] = median_time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=tm), a.reps)
    res["attnkit_bool_mask"] = attnkit(a.bin, n, h, d, a.reps, ["--mask", mpath])
    res["torch_bias"] = median_time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=tb), a.reps)
    res["attnkit_bias"] = attnkit(a.bin, n, h, d, a.reps, ["--bias", bpath])
    for name, t in res.items():
        print(json.dumps({"case": name, "n": n, "heads": h, "dim": d, "threads": 2, "median_s": round(t, 4)}))
    print(json.dumps({
        "allowed_fraction": float(mask.mean()),
        "torch_over_attnkit_bool_mask": round(res["torch_bool_mask"] / res["attnkit_bool_mask"], 2),
        "torch_over_attnkit_bias": round(res["torch_bias"] / res["attnkit_bias"], 2),
        "attnkit_dense_over_mask": round(res["attnkit_dense"] / res["attnkit_bool_mask"], 2),
        "torch_version": torch.__version__}))
    for p in (mpath, bpath):
        os.remove(p)


if __name__ == "__main__":
    main()
