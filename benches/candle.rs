//! attnkit through its candle door against candle-nn's CPU attention, in one run on the same
//! tensors: `cargo bench --features candle-bench --bench candle [-- N...]`.
//!
//! Contenders, per N (B = 1, H = 8, D = 64, non-causal), for f32 and f16:
//! - `attnkit bhnd`: `attnkit::candle::attention` (auto) on (B, H, N, D) tensors, no copy in;
//! - `attnkit bnhd`: the same on (B, N, H, D) tensors (copied into (B, H, N, D) first);
//! - `candle flash`: `candle_nn::attention::flash_attn` (candle's CPU flash attention), (B, N, H, D);
//! - `candle matmul`: q·kᵀ → `candle_nn::ops::softmax_last_dim` → ·v, (B, H, N, D).
//!
//! Rounds alternate the contenders so background load hits them alike; each prints the median
//! of its rounds, GFLOP/s (4·N²·D·H) and its time over `attnkit bhnd`'s. Results are in the
//! README ("candle").

use attnkit::interop::{AttnOptions, Layout};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::attention::{AttnMask, flash_attn};
use std::time::Instant;

const B: usize = 1;
const H: usize = 8;
const D: usize = 64;

type Contender = (&'static str, Box<dyn Fn() -> Result<Tensor>>);

fn contenders(n: usize, dtype: DType) -> Result<Vec<Contender>> {
    let p = attnkit::Problem::new(B, H, n, D).with_dtype(attnkit::DType::F32);
    let (q, k, v) = attnkit::seeded::normal_qkv(&p, 1);
    let bhnd = |t: &attnkit::Tensor| Tensor::from_vec(t.to_f32(), (B, H, n, D), &Device::Cpu)?.to_dtype(dtype);
    let (q, k, v) = (bhnd(&q)?, bhnd(&k)?, bhnd(&v)?);
    let to_bnhd = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    let (qn, kn, vn) = (to_bnhd(&q)?, to_bnhd(&k)?, to_bnhd(&v)?);
    let scale = 1.0 / (D as f64).sqrt();
    let (a, b, c) = (q.clone(), k.clone(), v.clone());
    let (an, bn, cn) = (qn.clone(), kn.clone(), vn.clone());
    let (fq, fk, fv) = (qn, kn, vn);
    let mut out: Vec<Contender> = vec![
        ("attnkit bhnd", Box::new(move || attnkit::candle::attention(&a, &b, &c, &AttnOptions::default()))),
        (
            "attnkit bnhd",
            Box::new(move || {
                attnkit::candle::attention(&an, &bn, &cn, &AttnOptions::default().with_layout(Layout::Bnhd))
            }),
        ),
    ];
    out.push((
        "candle flash",
        Box::new(move || match dtype {
            DType::F16 => flash_attn::<half::f16>(&fq, &fk, &fv, scale as f32, AttnMask::None, None, None),
            _ => flash_attn::<f32>(&fq, &fk, &fv, scale as f32, AttnMask::None, None, None),
        }),
    ));
    out.push((
        "candle matmul",
        Box::new(move || {
            let s = (q.matmul(&k.t()?)? * scale)?;
            candle_nn::ops::softmax_last_dim(&s)?.matmul(&v)
        }),
    ));
    Ok(out)
}

fn main() -> Result<()> {
    let ns: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ns = if ns.is_empty() { vec![1024, 2048] } else { ns };
    println!("B={B} H={H} D={D}, non-causal, {} rayon threads", rayon::current_num_threads());
    println!("{:>6} {:>5} {:<14} {:>10} {:>9} {:>10}", "N", "dtype", "contender", "median ms", "GFLOP/s", "× attnkit");
    for &n in &ns {
        for dtype in [DType::F32, DType::F16] {
            let cs = contenders(n, dtype)?;
            for (_, f) in &cs {
                f()?; // warm-up (allocations, thread pool, page faults)
            }
            let rounds = if n <= 1024 { 7 } else { 3 };
            let mut times = vec![Vec::new(); cs.len()];
            for _ in 0..rounds {
                for (i, (_, f)) in cs.iter().enumerate() {
                    let t = Instant::now();
                    f()?;
                    times[i].push(t.elapsed().as_secs_f64());
                }
            }
            let med: Vec<f64> = times.iter().map(|t| attnkit::bench::median(t)).collect();
            let flops = 4.0 * (n * n * D * H * B) as f64;
            for ((name, _), &m) in cs.iter().zip(&med) {
                println!(
                    "{n:>6} {:>5} {name:<14} {:>10.2} {:>9.1} {:>10.2}",
                    format!("{dtype:?}").to_lowercase(),
                    m * 1e3,
                    flops / m / 1e9,
                    m / med[0]
                );
            }
        }
    }
    Ok(())
}
