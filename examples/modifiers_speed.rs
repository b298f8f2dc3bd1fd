//! Cost of the score modifiers and masks in `flash-cpu`, measured side by side with plain
//! `flash-cpu` in one run (f32, a 2-thread pool; runs alternate round by round so machine
//! noise hits every variant alike; each figure is the median over the rounds).
//!
//! ```text
//! cargo run --release --example modifiers_speed -- [mods|varlen|mask|all] [ROUNDS]
//! ```
//! - `mods`: N = 4096, D = 64, H = 8 (non-causal): plain vs ALiBi, softcap 30, sinks, all
//!   three (issue 11 target: each ≤ 1.15× plain), and an f32 bias broadcast over heads.
//! - `varlen`: eight packed causal sequences of 4096 (total 32768, H = 2) vs eight separate
//!   causal 4096 runs (target ≤ 1.2×), and one causal 32768 run for scale (one round).
//! - `mask`: N = 16384, H = 1: a block-sparse boolean mask allowing 10% of 64×64 blocks vs
//!   dense plain flash-cpu (target ≥ 5× faster); the mask's block summary is built inside each
//!   timed call, as it is in use.
//!
//! PyTorch's CPU SDPA with the same mask and bias: `scripts/torch_mask_bias.py`. Measured
//! figures go to reports/, not here.

use attnkit::{Attention, AttnArgs, PairData, Problem, alibi_slopes};
use std::time::Instant;

struct Variant {
    name: String,
    problems: Vec<Problem>,
    mask: Option<Vec<bool>>,
    bias: Option<Vec<f32>>,
}

fn variant(name: &str, problems: Vec<Problem>) -> Variant {
    Variant { name: name.into(), problems, mask: None, bias: None }
}

/// Seconds for one pass over the variant's problems (inputs prepared outside the timing).
struct Prepared<'a> {
    v: &'a Variant,
    inputs: Vec<(attnkit::Tensor, attnkit::Tensor, attnkit::Tensor)>,
    outs: Vec<Vec<f32>>,
}

impl<'a> Prepared<'a> {
    fn new(v: &'a Variant) -> Self {
        let inputs = v.problems.iter().map(|p| attnkit::seeded::normal_qkv(p, 1)).collect();
        let outs = v.problems.iter().map(|p| vec![0.0f32; p.out_len()]).collect();
        Prepared { v, inputs, outs }
    }
    fn once(&mut self, b: &dyn Attention) -> f64 {
        let t = Instant::now();
        for ((p, (q, k, vv)), out) in self.v.problems.iter().zip(&self.inputs).zip(&mut self.outs) {
            let pair = PairData { bias: self.v.bias.as_ref().map(|b| b.into()), mask: self.v.mask.as_deref() };
            let args = AttnArgs::new_with(p, q.as_ref(), k.as_ref(), vv.as_ref(), pair).expect("valid");
            b.forward_into(&args, out, None).expect("runs");
        }
        t.elapsed().as_secs_f64()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Alternates the variants for `rounds` rounds after one warm-up; prints each median and its
/// ratio to the first variant (the baseline).
fn compare(group: &str, variants: &[Variant], rounds: usize) {
    let b = attnkit::backend("flash-cpu").expect("registered");
    let mut prepared: Vec<Prepared<'_>> = variants.iter().map(Prepared::new).collect();
    prepared.iter_mut().for_each(|p| {
        p.once(b.as_ref());
    });
    let mut times = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (p, t) in prepared.iter_mut().zip(&mut times) {
            t.push(p.once(b.as_ref()));
        }
    }
    let base = median(times[0].clone());
    for (v, t) in variants.iter().zip(times) {
        let m = median(t);
        let flops: f64 = v.problems.iter().map(|p| p.flops()).sum();
        println!(
            "{{\"group\":\"{group}\",\"variant\":\"{}\",\"threads\":{},\"rounds\":{rounds},\"median_s\":{m:.4},\"ratio_to_{}\":{:.3},\"band_gflops\":{:.1}}}",
            v.name,
            rayon::current_num_threads(),
            variants[0].name,
            m / base,
            flops / m / 1e9
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("all", |s| s.as_str()).to_string();
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    pool.install(|| {
        if what == "mods" || what == "all" {
            let p = Problem::new(1, 8, 4096, 64);
            let all = p.clone().with_alibi(alibi_slopes(8)).with_softcap(30.0).with_sinks(vec![0.5; 8]);
            let mut bias = variant("bias_f32_11NN", vec![p.clone().with_bias(1, 1)]);
            bias.bias = Some(attnkit::seeded::normal_values(4096 * 4096, 3));
            compare(
                "mods_n4096_d64_h8",
                &[
                    variant("plain", vec![p.clone()]),
                    variant("alibi", vec![p.clone().with_alibi(alibi_slopes(8))]),
                    variant("softcap30", vec![p.clone().with_softcap(30.0)]),
                    variant("sinks", vec![p.clone().with_sinks(vec![0.5; 8])]),
                    variant("alibi+softcap+sinks", vec![all]),
                    bias,
                ],
                rounds,
            );
        }
        if what == "varlen" || what == "all" {
            let one = Problem::new(1, 2, 4096, 64).with_causal(true);
            let cu: Vec<usize> = (0..=8).map(|s| s * 4096).collect();
            let packed = Problem::new(1, 2, 8 * 4096, 64).with_causal(true).with_varlen(cu.clone(), cu);
            compare(
                "varlen_8x4096_causal_h2",
                &[variant("8_separate_runs", vec![one; 8]), variant("packed_varlen", vec![packed])],
                rounds,
            );
            let full = Problem::new(1, 2, 8 * 4096, 64).with_causal(true);
            compare("varlen_8x4096_causal_h2", &[variant("one_causal_32768", vec![full])], 1);
        }
        if what == "mask" || what == "all" {
            let n = 16384;
            let p = Problem::new(1, 1, n, 64);
            let mut masked = variant("mask_10pct_of_64x64_blocks", vec![p.clone().with_mask(1, 1)]);
            let m = attnkit::seeded::block_sparse_mask(n, n, 64, 0.1, 7);
            let density = m.iter().filter(|&&x| x).count() as f64 / m.len() as f64;
            println!("{{\"group\":\"mask_n16384_h1\",\"allowed_fraction\":{density:.4}}}");
            masked.mask = Some(m);
            compare("mask_n16384_h1", &[variant("dense", vec![p]), masked], rounds);
        }
    });
}
