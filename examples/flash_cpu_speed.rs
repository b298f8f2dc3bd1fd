//! Times `flash-cpu` (and `local`) and prints GFLOP/s from `Problem::flops()`, next to an f32
//! GEMM ceiling (`linalg::sgemm`, all threads) so the fraction of peak is visible.
//!
//! ```text
//! cargo run --release --example flash_cpu_speed -- [flash] [N] [D] [H] [REPS]
//! cargo run --release --example flash_cpu_speed -- local [N] [D] [H] [REPS]
//! ```
//! `flash` times non-causal and causal; `local` times `local` vs `flash-cpu` with the same
//! causal window (w, 0) for w in 32, 64, 128, 256. Each figure is the median of REPS runs after
//! one warm-up. Compare with PyTorch by alternating with
//! `$PY /work/shared/peers/torch_sdpa.py N D H [--causal] --reps 5`. Measured ratios are in
//! the `//!` headers of `src/backends/flash_cpu.rs` and `src/backends/local.rs`. `cpu_gflops`
//! divides by process CPU time (× threads) instead of wall time: steadier on a shared machine,
//! but only to the 10 ms tick.

use attnkit::linalg::{MatRef, Par, sgemm};
use attnkit::{Attention, AttnArgs, Problem, Window};
use std::time::Instant;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// CPU seconds this process has used (all threads), from /proc (Linux; 0 elsewhere). On a
/// shared, oversubscribed machine `flops / (cpu_s / threads)` is steadier than wall time.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Fields 14 and 15 (utime, stime, in 1/100 s) are the 12th and 13th after the command name.
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Median wall seconds and median CPU seconds of `reps` runs after one warm-up.
fn median_secs(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut ts = Vec::new();
    let mut cs = Vec::new();
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_secs());
        f();
        ts.push(t.elapsed().as_secs_f64());
        cs.push(cpu_secs() - c);
    }
    ts.sort_by(f64::total_cmp);
    cs.sort_by(f64::total_cmp);
    (ts[ts.len() / 2], cs[cs.len() / 2])
}

fn time_backend(b: &dyn Attention, p: &Problem, reps: usize) -> (f64, f64) {
    let (q, k, v) = (data(p.q_len(), 1), data(p.kv_len(), 2), data(p.kv_len(), 3));
    let args = AttnArgs::new(p, &q, &k, &v).expect("valid problem");
    let mut out = vec![0.0f32; p.out_len()];
    median_secs(reps, || b.forward_into(&args, &mut out, None).expect("runs"))
}

fn gemm_gflops(m: usize, n: usize, k: usize, reps: usize) -> (f64, f64) {
    let (a, b) = (data(m * k, 4), data(k * n, 5));
    let mut c = vec![0.0f32; m * n];
    let (t, cpu) = median_secs(reps, || {
        sgemm(MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), &mut c, n, 1.0, 0.0, Par::Rayon).expect("gemm")
    });
    let fl = 2.0 * (m * n * k) as f64;
    (fl / t / 1e9, fl / cpu * rayon::current_num_threads() as f64 / 1e9)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let local_mode = args.first().is_some_and(|a| a == "local");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let get = |i: usize, dflt: usize| nums.get(i).copied().unwrap_or(dflt);
    let threads = rayon::current_num_threads();
    let flash = attnkit::backend("flash-cpu").expect("registered");
    if local_mode {
        let (n, d, h, reps) = (get(0, 16384), get(1, 64), get(2, 4), get(3, 5));
        let local = attnkit::backend("local").expect("registered");
        for w in [32i64, 64, 128, 256] {
            let p = Problem::new(1, h, n, d).with_causal(true).with_window(Window::new(w, 0));
            // Interleave the two backends rep by rep so machine noise hits both alike.
            let (q, k, v) = (data(p.q_len(), 1), data(p.kv_len(), 2), data(p.kv_len(), 3));
            let args = AttnArgs::new(&p, &q, &k, &v).expect("valid problem");
            let mut out = vec![0.0f32; p.out_len()];
            let mut once = |b: &dyn Attention| {
                let t = Instant::now();
                b.forward_into(&args, &mut out, None).expect("runs");
                t.elapsed().as_secs_f64()
            };
            once(local.as_ref());
            once(flash.as_ref());
            let (mut tl, mut tf, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reps {
                let (a, b) = (once(local.as_ref()), once(flash.as_ref()));
                tl.push(a);
                tf.push(b);
                ratio.push(b / a);
            }
            let med = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (tl, tf, ratio) = (med(tl), med(tf), med(ratio));
            println!(
                "{{\"mode\":\"local\",\"n\":{n},\"d\":{d},\"h\":{h},\"window\":[{w},0],\"threads\":{threads},\"local_s\":{tl:.5},\"flash_s\":{tf:.5},\"local_gflops\":{:.1},\"flash_gflops\":{:.1},\"median_speedup\":{ratio:.2}}}",
                p.flops() / tl / 1e9,
                p.flops() / tf / 1e9,
            );
        }
        return;
    }
    let (n, d, h, reps) = (get(0, 4096), get(1, 64), get(2, 8), get(3, 5));
    for causal in [false, true] {
        let p = Problem::new(1, h, n, d).with_causal(causal);
        let (t, cpu) = time_backend(flash.as_ref(), &p, reps);
        println!(
            "{{\"mode\":\"flash-cpu\",\"n\":{n},\"d\":{d},\"h\":{h},\"causal\":{causal},\"threads\":{threads},\"median_s\":{t:.5},\"gflops\":{:.1},\"cpu_gflops\":{:.1}}}",
            p.flops() / t / 1e9,
            p.flops() / cpu * threads as f64 / 1e9
        );
    }
    let (g, gc) = gemm_gflops(2048, 2048, 2048, reps);
    println!("{{\"mode\":\"sgemm-ceiling\",\"m_n_k\":[2048,2048,2048],\"gflops\":{g:.1},\"cpu_gflops\":{gc:.1}}}");
}
