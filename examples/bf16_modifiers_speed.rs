//! Score modifiers on the bf16 prefill kernel, measured side by side in one run: plain bf16,
//! bf16 with ALiBi + softcap, bf16 with a block-sparse boolean mask (10% of 64×64 blocks
//! allowed, and 90% allowed), and the same problems in f32, on `flash-cpu` with the
//! process-wide SIMD path (`ATTNKIT_SIMD` selects it) and a 2-thread pool. Variants alternate
//! round by round so machine noise hits them alike; every figure is a median over the rounds,
//! next to the f32 GEMM ceiling and the `vdpbf16ps` peak (when the CPU has it) measured in the
//! same run.
//!
//! ```text
//! cargo run --release --example bf16_modifiers_speed -- [ROUNDS] [N]    # B=1, H=8, D=64
//! ```
//! Targets: each bf16 modifier variant within 1.15× of plain bf16 (ratio_to_bf16_plain), and
//! bf16 with modifiers ≥ 1.6× faster than f32 with the same modifiers (f32_over_bf16). On a
//! CPU without AVX512_BF16, bf16 inputs run the f32 kernels (widened while packing), so the
//! second ratio is about 1 there.

use attnkit::bench::{gemm_ceiling, median};
use attnkit::ceiling::bf16_dot_ceiling;
use attnkit::{Attention, AttnArgs, DType, PairData, Problem, Tensor, alibi_slopes};
use std::time::Instant;

/// One timed problem: name, problem, its inputs and its mask.
struct Variant {
    name: String,
    p: Problem,
    qkv: (Tensor, Tensor, Tensor),
    mask: Option<Vec<bool>>,
    out: Vec<f32>,
}

impl Variant {
    fn new(name: &str, p: Problem, mask: Option<Vec<bool>>) -> Self {
        let qkv = attnkit::seeded::normal_qkv(&p, 1);
        let out = vec![0.0; p.out_len()];
        Variant { name: name.into(), p, qkv, mask, out }
    }

    fn once(&mut self, b: &dyn Attention) -> f64 {
        let (q, k, v) = &self.qkv;
        let pair = PairData { bias: None, mask: self.mask.as_deref() };
        let args = AttnArgs::new_with(&self.p, q.as_ref(), k.as_ref(), v.as_ref(), pair).expect("valid");
        let t = Instant::now();
        b.forward_into(&args, &mut self.out, None).expect("runs");
        t.elapsed().as_secs_f64()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    pool.install(|| {
        let b = attnkit::backend("flash-cpu").expect("registered");
        let base = Problem::new(1, 8, n, 64);
        let sparse = attnkit::seeded::block_sparse_mask(n, n, 64, 0.1, 7);
        let dense = attnkit::seeded::block_sparse_mask(n, n, 64, 0.9, 7);
        let mut vs = Vec::new();
        for (dt, tag) in [(DType::BF16, "bf16"), (DType::F32, "f32")] {
            let p = base.clone().with_dtype(dt);
            vs.push(Variant::new(&format!("{tag}_plain"), p.clone(), None));
            vs.push(Variant::new(
                &format!("{tag}_alibi+softcap"),
                p.clone().with_alibi(alibi_slopes(8)).with_softcap(30.0),
                None,
            ));
            vs.push(Variant::new(&format!("{tag}_mask10pct"), p.clone().with_mask(1, 1), Some(sparse.clone())));
            vs.push(Variant::new(&format!("{tag}_mask90pct"), p.clone().with_mask(1, 1), Some(dense.clone())));
        }
        for v in vs.iter_mut() {
            v.once(b.as_ref());
        }
        let (mut times, mut gemm, mut dot) = (vec![Vec::new(); vs.len()], Vec::new(), Vec::new());
        for _ in 0..rounds {
            gemm.push(gemm_ceiling(1024, 1).map_or(f64::NAN, |c| c.gflops));
            dot.push(bf16_dot_ceiling(1).map_or(f64::NAN, |c| c.gflops));
            for (v, t) in vs.iter_mut().zip(&mut times) {
                t.push(v.once(b.as_ref()));
            }
        }
        let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
        let isa = attnkit::simd::Isa::selected().map_or_else(|e| e, |i| i.to_string());
        println!(
            "{{\"isa\":\"{isa}\",\"threads\":2,\"rounds\":{rounds},\"n\":{n},\"gemm_ceiling_gflops\":{:.1},\"bf16_dot_peak_gflops\":{:.1}}}",
            median(&gemm),
            median(&dot)
        );
        let half = vs.len() / 2;
        for (i, v) in vs.iter().enumerate() {
            let (plain, f32_twin) = (med[i / half * half], med[i % half + half]);
            println!(
                "{{\"variant\":\"{}\",\"median_s\":{:.4},\"ratio_to_{}_plain\":{:.3},\"f32_over_bf16\":{:.3},\"gflops_dense_equiv\":{:.1}}}",
                v.name,
                med[i],
                if i < half { "bf16" } else { "f32" },
                med[i] / plain,
                f32_twin / med[i % half],
                v.p.flops() / med[i] / 1e9
            );
        }
    });
}
