//! Decode and bf16 speed, side by side with the ceilings measured in the same run.
//!
//! ```text
//! cargo run --release --example decode_speed -- decode [REPS]    # 1×32768, D=128, H=32/8, causal
//! cargo run --release --example decode_speed -- sweep [REPS]     # N_k 1K…256K, H=32/8; 1K…64K, 32/32
//! cargo run --release --example decode_speed -- prefill [REPS]   # N=4096, D 64/128, f32 vs bf16
//! cargo run --release --example decode_speed -- one N_K f32|bf16 REPS [H H_KV D]  # one variant
//! cargo run --release --example decode_speed -- strided [REPS]   # (B,N,H_kv,D) cache vs (B,H_kv,N,D)
//! ```
//! `strided` times one decoded token (H=32, H_kv=8, D=128, B 1…4, N_k 4K…32K, f32 and bf16)
//! against a KV cache in FlashAttention's (B, N, H_kv, D) layout read in place and against
//! the same cache contiguous, alternated, and prints strided ÷ contiguous time with each one's
//! fraction of the bandwidth ceiling (measured before and after; the lower is used).
//! Variants of one problem run alternately, rep by rep, so machine noise hits them alike; each
//! figure is a median. `decode` also times the whole-head packing path (flash-cpu before the
//! decode strategy) and the f32 path on bf16 inputs (`avx512`, the bf16 kernel off). GB/s is
//! `ceiling::bytes_moved` over time; `frac` divides it by `ceiling::bandwidth_ceiling` measured
//! before and after (the lower is used). Compare with PyTorch by alternating with
//! `$PY ../shared/peers/torch_sdpa2.py 1 32768 128 32 8 f32 --causal`. Figures: reports/README.md.

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::bench::{GEMM_CEILING_SIZE, gemm_ceiling, median};
use attnkit::ceiling::{BANDWIDTH_BUFFER_BYTES, bandwidth_ceiling, bf16_dot_ceiling, bytes_moved};
use attnkit::simd::Isa;
use attnkit::tiled::{Packing, Plan};
use attnkit::{Attention, AttnArgs, DType, Layouts, PairData, Problem, RowLayout, Tensor};
use std::time::Instant;

/// Computes O for the given inputs.
type RunFn<'a> = Box<dyn Fn(&AttnArgs<'_>, &mut [f32]) + 'a>;

/// One timed configuration: a name and how it computes.
struct Variant<'a> {
    name: &'static str,
    dtype: DType,
    run: RunFn<'a>,
}

fn flash(isa: Isa) -> impl Fn(&AttnArgs<'_>, &mut [f32]) {
    let b = FlashCpu::with_isa(isa).expect("this CPU has the path");
    move |a, o| b.forward_into(a, o, None).expect("runs")
}

fn whole_heads(isa: Isa) -> impl Fn(&AttnArgs<'_>, &mut [f32]) {
    move |a, o| {
        let p = a.problem();
        let plan = Plan {
            name: "whole-heads",
            isa,
            packing: Packing::WholeHeads,
            range: Box::new(|b, i| p.key_range_at(b, i)),
        };
        plan.run(a, o, None).expect("runs")
    }
}

/// CPU seconds this process has used (all threads; Linux /proc, 10 ms ticks; 0 elsewhere). On
/// a loaded machine `work / (cpu_s / threads)` estimates the unloaded rate.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Times the variants on `p` alternately; returns (median wall seconds, mean CPU seconds per
/// call divided by the pool's threads) of each.
fn alternate(p: &Problem, variants: &[Variant<'_>], reps: usize) -> Vec<(f64, f64)> {
    let inputs: Vec<(Tensor, Tensor, Tensor)> =
        variants.iter().map(|v| attnkit::seeded::normal_qkv(&p.clone().with_dtype(v.dtype), 1)).collect();
    let probs: Vec<Problem> = variants.iter().map(|v| p.clone().with_dtype(v.dtype)).collect();
    let args: Vec<AttnArgs<'_>> = inputs
        .iter()
        .zip(&probs)
        .map(|((q, k, v), pp)| AttnArgs::new(pp, q.as_ref(), k.as_ref(), v.as_ref()).expect("valid"))
        .collect();
    let mut out = vec![0.0f32; p.out_len()];
    let mut times = vec![Vec::new(); variants.len()];
    let mut cpu = vec![0.0; variants.len()];
    for rep in 0..=reps {
        for (i, v) in variants.iter().enumerate() {
            let (t, c) = (Instant::now(), cpu_secs());
            (v.run)(&args[i], &mut out);
            if rep > 0 {
                times[i].push(t.elapsed().as_secs_f64());
                cpu[i] += cpu_secs() - c;
            }
        }
    }
    let threads = rayon::current_num_threads() as f64;
    times.iter().zip(&cpu).map(|(t, c)| (median(t), c / reps.max(1) as f64 / threads)).collect()
}

/// `t` (contiguous (B, heads, N, D)) rewritten in (B, N, heads, D) order (exact: same dtype).
fn to_bnhd(t: &Tensor, [_, h, n, d]: [usize; 4]) -> Tensor {
    let (src, l) = (t.to_f32(), RowLayout::bnhd(h, n, d));
    let mut dst = vec![0.0f32; src.len()];
    for (r, row) in src.chunks(d).enumerate() {
        let at = l.at(r / (h * n), r / n % h, r % n);
        dst[at..at + d].copy_from_slice(row);
    }
    Tensor::from_f32(&dst, t.as_ref().dtype())
}

/// Decode against a (B, N, H_kv, D) cache read in place and the same cache contiguous,
/// alternated rep by rep on `isa`: median (contiguous, strided) seconds.
fn strided_pair(p: &Problem, isa: Isa, reps: usize) -> (f64, f64) {
    let (q, k, v) = attnkit::seeded::normal_qkv(p, 1);
    let ks = [p.batch, p.kv_heads, p.seq_k, p.head_dim];
    let (kn, vn) = (to_bnhd(&k, ks), to_bnhd(&v, ks));
    let l = Some(RowLayout::bnhd(p.kv_heads, p.seq_k, p.head_dim));
    let contiguous = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).expect("valid");
    let lay = Layouts { q: None, k: l, v: l };
    let strided = AttnArgs::new_strided(p, q.as_ref(), kn.as_ref(), vn.as_ref(), PairData::default(), lay)
        .expect("valid strides");
    let run = flash(isa);
    let mut out = vec![0.0f32; p.out_len()];
    let mut times = [Vec::new(), Vec::new()];
    for rep in 0..=reps {
        // Order swapped every rep, so neither always runs on the other's warm caches.
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = Instant::now();
            run(if i == 0 { &contiguous } else { &strided }, &mut out);
            if rep > 0 {
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
    }
    (median(&times[0]), median(&times[1]))
}

/// One JSON line: both times, their ratio and each one's fraction of the bandwidth ceiling
/// `bw` (GB/s).
fn print_strided(p: &Problem, (tc, ts): (f64, f64), bw: f64) {
    let gb = bytes_moved(p) as f64 / 1e9;
    println!(
        "{{\"problem\":\"{p}\",\"contiguous_us\":{},\"strided_us\":{},\"strided_over_contiguous\":{},\"frac_bw_contiguous\":{},\"frac_bw_strided\":{}}}",
        num(tc * 1e6),
        num(ts * 1e6),
        num(ts / tc),
        num(gb / tc / bw),
        num(gb / ts / bw)
    );
}

/// `x` with 3 decimals, or `null` when not finite (a CPU time under one 10 ms tick reads 0).
fn num(x: f64) -> String {
    if x.is_finite() { format!("{x:.3}") } else { "null".into() }
}

/// One JSON line per variant; `cpu_*` figures use CPU time per thread instead of wall time.
fn print_rows(p: &Problem, variants: &[Variant<'_>], secs: &[(f64, f64)], bw: (f64, f64)) {
    for (v, &(t, c)) in variants.iter().zip(secs) {
        let pv = p.clone().with_dtype(v.dtype);
        let (gbs, cgbs) = (bytes_moved(&pv) as f64 / t / 1e9, bytes_moved(&pv) as f64 / c / 1e9);
        println!(
            "{{\"variant\":\"{}\",\"problem\":\"{pv}\",\"ms\":{},\"gflops\":{},\"gb_s\":{},\"frac_bw\":{},\"cpu_gflops\":{},\"cpu_gb_s\":{},\"cpu_frac_bw\":{},\"speed_vs_first\":{}}}",
            v.name,
            num(t * 1e3),
            num(pv.flops() / t / 1e9),
            num(gbs),
            num(gbs / bw.0),
            num(pv.flops() / c / 1e9),
            num(cgbs),
            num(cgbs / bw.1),
            num(secs[0].0 / t)
        );
    }
}

/// The bandwidth ceiling by wall time and by CPU time per thread.
fn bandwidth() -> (f64, f64) {
    // CPU time of 5 passes: a 6-rep call minus a 1-rep call (each also fills the buffer and
    // makes one warm-up pass), per thread.
    let c0 = cpu_secs();
    bandwidth_ceiling(BANDWIDTH_BUFFER_BYTES, 1).expect("ceiling");
    let c1 = cpu_secs();
    let c = bandwidth_ceiling(BANDWIDTH_BUFFER_BYTES, 6).expect("ceiling");
    let cpu = ((cpu_secs() - c1) - (c1 - c0)) / c.threads as f64 / 5.0;
    let cpu_gbs = c.bytes as f64 / cpu / 1e9;
    println!(
        "{{\"ceiling\":\"bandwidth\",\"bytes\":{},\"threads\":{},\"gb_s\":{:.2},\"cpu_gb_s\":{cpu_gbs:.2}}}",
        c.bytes, c.threads, c.gb_per_s
    );
    (c.gb_per_s, cpu_gbs)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("decode");
    let reps = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(7);
    let bf16 = if Isa::Avx512Bf16.is_available() { Isa::Avx512Bf16 } else { Isa::best() };
    let f32_isa = if bf16 == Isa::Avx512Bf16 { Isa::Avx512 } else { Isa::best() };
    match mode {
        "decode" => {
            let bw0 = bandwidth();
            let p = Problem::new(1, 32, 1, 128).with_kv_heads(8).with_seq_k(32768).with_causal(true);
            let variants = [
                Variant { name: "decode-f32", dtype: DType::F32, run: Box::new(flash(f32_isa)) },
                Variant { name: "decode-bf16", dtype: DType::BF16, run: Box::new(flash(bf16)) },
                Variant { name: "decode-bf16-kernel-off", dtype: DType::BF16, run: Box::new(flash(f32_isa)) },
                Variant { name: "whole-heads-f32", dtype: DType::F32, run: Box::new(whole_heads(f32_isa)) },
            ];
            let secs = alternate(&p, &variants, reps);
            let bw1 = bandwidth();
            let bw = (bw0.0.min(bw1.0), bw0.1.min(bw1.1));
            print_rows(&p, &variants, &secs, bw);
        }
        "sweep" => {
            let bw = bandwidth();
            // MHA stops at 64K keys: 256K keys × 32 KV heads would be 8.6 GB of f32 K/V.
            for (hkv, max_nk) in [(8, 262_144), (32, 65536)] {
                for nk in [1024, 4096, 16384, 65536, 262_144].into_iter().filter(|&n| n <= max_nk) {
                    let p = Problem::new(1, 32, 1, 128).with_kv_heads(hkv).with_seq_k(nk).with_causal(true);
                    let variants = [
                        Variant { name: "decode-f32", dtype: DType::F32, run: Box::new(flash(f32_isa)) },
                        Variant { name: "decode-bf16", dtype: DType::BF16, run: Box::new(flash(bf16)) },
                    ];
                    let secs = alternate(&p, &variants, reps);
                    print_rows(&p, &variants, &secs, bw);
                }
            }
        }
        "prefill" => {
            // CPU-time rates: work / (CPU seconds / threads), warm-up runs included in both.
            let threads = rayon::current_num_threads() as f64;
            let c0 = cpu_secs();
            let g = gemm_ceiling(GEMM_CEILING_SIZE, 3).expect("gemm");
            let cpu = (cpu_secs() - c0) / threads / 4.0;
            let gemm_flops = 2.0 * (GEMM_CEILING_SIZE as f64).powi(3);
            println!(
                "{{\"ceiling\":\"sgemm\",\"gflops\":{:.1},\"cpu_gflops\":{:.1}}}",
                g.gflops,
                gemm_flops / cpu / 1e9
            );
            let c0 = cpu_secs();
            if let Some(c) = bf16_dot_ceiling(3) {
                let cpu = (cpu_secs() - c0) / threads / 4.0;
                let cpu_gflops = c.gflops * c.median_s / cpu;
                println!(
                    "{{\"ceiling\":\"bf16-dot\",\"threads\":{},\"gflops\":{:.1},\"cpu_gflops\":{cpu_gflops:.1}}}",
                    c.threads, c.gflops
                );
            }
            for d in [64, 128] {
                for causal in [false, true] {
                    let p = Problem::new(1, 8, 4096, d).with_causal(causal);
                    let variants = [
                        Variant { name: "prefill-f32", dtype: DType::F32, run: Box::new(flash(f32_isa)) },
                        Variant { name: "prefill-bf16", dtype: DType::BF16, run: Box::new(flash(bf16)) },
                    ];
                    let secs = alternate(&p, &variants, reps);
                    print_rows(&p, &variants, &secs, (f64::NAN, f64::NAN));
                }
            }
        }
        "one" => {
            // One variant only, for `perf`: `one N_K f32|bf16 REPS [H H_KV D]` (default 32 8 128).
            let arg = |i: usize, default: usize| args.get(i).and_then(|r| r.parse().ok()).unwrap_or(default);
            let (nk, reps, h, hkv, d) = (arg(1, 32768), arg(3, 20), arg(4, 32), arg(5, 8), arg(6, 128));
            let dtype: DType = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(DType::F32);
            let p = Problem::new(1, h, 1, d).with_kv_heads(hkv).with_seq_k(nk).with_causal(true);
            let isa = if dtype == DType::BF16 { bf16 } else { f32_isa };
            let variants = [Variant { name: "one", dtype, run: Box::new(flash(isa)) }];
            let secs = alternate(&p, &variants, reps);
            print_rows(&p, &variants, &secs, (f64::NAN, f64::NAN));
        }
        "strided" => {
            let bw0 = bandwidth();
            let mut rows = Vec::new();
            for dtype in [DType::F32, DType::BF16] {
                let isa = if dtype == DType::BF16 { bf16 } else { f32_isa };
                for batch in [1, 2, 4] {
                    for nk in [4096, 16384, 32768] {
                        let p = Problem::new(batch, 32, 1, 128)
                            .with_kv_heads(8)
                            .with_seq_k(nk)
                            .with_causal(true)
                            .with_dtype(dtype);
                        let t = strided_pair(&p, isa, reps);
                        rows.push((p, t));
                    }
                }
            }
            let bw = bw0.0.min(bandwidth().0);
            for (p, t) in &rows {
                print_strided(p, *t, bw);
            }
        }
        other => eprintln!("unknown mode `{other}` (decode, sweep, prefill, one, strided)"),
    }
}
