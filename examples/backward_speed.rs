//! Backward speed, measured side by side: per round, the f32 GEMM ceiling (2048³ sgemm), then
//! `flash-cpu` forward (with LSE), backward alone, and — when a PyTorch python is given —
//! PyTorch's CPU SDPA forward and forward+backward (`../shared/peers/torch_bwd.py`), alternated.
//!
//! FLOPs by FlashAttention's convention: the forward's 4·D per allowed pair × H, the backward
//! 2.5× that.
//!
//! ```text
//! cargo run --release --example backward_speed -- NQ NK D H HKV f32|bf16 [--causal] [--rounds R] [--torch PY] [--once]
//! ```
//! Prints one line per round and the medians over rounds: backward GFLOP/s and its fraction of
//! the same round's ceiling, forward+backward time, and the ratio to PyTorch's.

use attnkit::bench::{gemm_ceiling, median};
use attnkit::{AttnArgs, DType, Problem, backend};
use std::process::Command;
use std::time::Instant;

fn time<T>(f: impl FnMut() -> T, reps: usize) -> f64 {
    let mut f = f;
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn torch(py: &str, a: &[String], causal: bool) -> Option<(f64, f64)> {
    let mut cmd = Command::new(py);
    cmd.arg("../shared/peers/torch_bwd.py").args(&a[..6]).args(["--threads", "2", "--reps", "3"]);
    if causal {
        cmd.arg("--causal");
    }
    let out = cmd.output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    Some((v["fwd_s"].as_f64()?, v["fwdbwd_s"].as_f64()?))
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 6 {
        eprintln!("usage: backward_speed NQ NK D H HKV f32|bf16 [--causal] [--rounds R] [--torch PY]");
        std::process::exit(64);
    }
    let n: Vec<usize> = a[..5].iter().map(|x| x.parse().expect("a number")).collect();
    let dtype: DType = a[5].parse().expect("f32 or bf16");
    let causal = a.iter().any(|x| x == "--causal");
    let opt = |k: &str| a.iter().position(|x| x == k).and_then(|i| a.get(i + 1)).cloned();
    let rounds: usize = opt("--rounds").map_or(3, |r| r.parse().unwrap());
    // `--once`: one forward and one backward, nothing timed (for profilers such as callgrind).
    let once = a.iter().any(|x| x == "--once");
    let py = opt("--torch");
    let p =
        Problem::new(1, n[3], n[0], n[2]).with_seq_k(n[1]).with_kv_heads(n[4]).with_causal(causal).with_dtype(dtype);
    let (q, k, v) = attnkit::seeded::normal_qkv(&p, 1);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let d_out = attnkit::seeded::normal_values(p.out_len(), 2);
    let b = backend("flash-cpu").unwrap();
    if once {
        let fwd = b.forward(&args, true).unwrap();
        let g = b.backward(&args, &fwd.out, fwd.lse.as_ref().unwrap(), &d_out, false).unwrap();
        println!("{p}: one forward and one backward, dq[0] = {}", g.dq[0]);
        return;
    }
    let fl = p.flops();
    let reps = if fl > 2e11 { 1 } else { 3 };
    let (mut fr, mut fb_ratio, mut fb_s) = (Vec::new(), Vec::new(), Vec::new());
    println!("{p}: forward {:.1} GFLOP, backward {:.1} GFLOP, {rounds} rounds", fl / 1e9, 2.5 * fl / 1e9);
    for r in 0..rounds {
        let ceil = gemm_ceiling(2048, 3).unwrap().gflops;
        let fwd = b.forward(&args, true).unwrap();
        let lse = fwd.lse.clone().unwrap();
        let tf = time(|| b.forward(&args, true).unwrap(), reps);
        let tb = time(|| b.backward(&args, &fwd.out, &lse, &d_out, false).unwrap(), reps);
        let bwd_gflops = 2.5 * fl / tb / 1e9;
        let mut line = format!(
            "round {r}: ceiling {ceil:.0} GFLOP/s | forward {tf:.3} s ({:.0} GFLOP/s) | backward {tb:.3} s ({bwd_gflops:.0} GFLOP/s, {:.2} of ceiling) | fwd+bwd {:.3} s",
            fl / tf / 1e9,
            bwd_gflops / ceil,
            tf + tb
        );
        fr.push(bwd_gflops / ceil);
        fb_s.push(tf + tb);
        if let Some(py) = &py
            && let Some((tt_f, tt_fb)) = torch(py, &a, causal)
        {
            line += &format!(" | torch fwd {tt_f:.3} s, fwd+bwd {tt_fb:.3} s: ours {:.2}x faster", tt_fb / (tf + tb));
            fb_ratio.push(tt_fb / (tf + tb));
        }
        println!("{line}");
    }
    let ratio = if fb_ratio.is_empty() { "n/a (no --torch)".to_string() } else { format!("{:.2}x", median(&fb_ratio)) };
    println!(
        "median: backward {:.2} of the GEMM ceiling; fwd+bwd {:.3} s; vs PyTorch fwd+bwd {ratio}",
        median(&fr),
        median(&fb_s)
    );
    let _ = b.name();
}
