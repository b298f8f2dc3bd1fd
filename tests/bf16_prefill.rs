//! The AVX512_BF16 prefill kernel (whole-head packing of bf16 pairs, `vdpbf16ps`) forced on
//! (`Isa::Avx512Bf16`) and off (`Isa::Avx512`) over the shared shape table in bf16, plain and
//! with each score modifier: both inside the bf16 tolerance rule (`validate::exact_tolerance`),
//! and different from each other on every shape with more than one key per row (so the bf16
//! kernel really ran). Without AVX512_BF16 only the refusal is checked here; the pair format's
//! block loop is also tested through its portable reference (`src/tiled/bf16_tests.rs`).

mod common;

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::seeded::normal_values;
use attnkit::simd::Isa;
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{Attention, AttnArgs, DType, PairData, Problem, Tensor, alibi_slopes};
use common::{qkv, randn, shape_table};

/// Runs the bf16 kernel (`on`) and the f32 path (`off`), checks both against the oracle under
/// the bf16 tolerance rule; returns both outputs and the bf16 kernel's error / bound.
fn on_and_off((on, off): (&FlashCpu, &FlashCpu), args: &AttnArgs<'_>, name: &str) -> (Vec<f32>, Vec<f32>, f64) {
    let want = oracle(args);
    let tol = exact_tolerance(args, &want, DType::BF16);
    let a = on.forward(args, false).unwrap().out;
    let b = off.forward(args, false).unwrap().out;
    for (what, got) in [("bf16 kernel", &a), ("f32 path", &b)] {
        let e = compare(got, &want);
        assert!(e.within(tol.bound), "{name} {what}: {e:?} over {:.3e}", tol.bound);
    }
    let ratio = compare(&a, &want).max_abs / tol.bound;
    (a, b, ratio)
}

#[test]
fn bf16_prefill_kernel_forced_on_and_off() {
    if !Isa::Avx512Bf16.is_available() {
        assert!(FlashCpu::with_isa(Isa::Avx512Bf16).is_err());
        println!("no AVX512_BF16 on this CPU: only the refusal was checked");
        return;
    }
    let (on, off) = (FlashCpu::with_isa(Isa::Avx512Bf16).unwrap(), FlashCpu::with_isa(Isa::Avx512).unwrap());
    let (mut worst, mut checked, mut differed) = (0.0f64, 0, 0);
    for case in shape_table() {
        let p = case.problem.clone().with_dtype(DType::BF16);
        if attnkit::tiled::decode_applies(&p) {
            continue; // the decode strategy has its own bf16 kernel (tests/decode.rs)
        }
        let (q, k, v) = qkv(&p, 31);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (a, b, ratio) = on_and_off((&on, &off), &args, case.name);
        worst = worst.max(ratio);
        checked += 1;
        differed += usize::from(a != b);
    }
    println!("bf16 prefill kernel: {checked} shapes, worst error / bound = {worst:.3}");
    assert!(checked >= 15, "only {checked} shapes took the prefill path");
    assert!(differed + 2 >= checked, "the bf16 kernel matched the f32 path on {} shapes", checked - differed);
}

/// One modifier variant: label, problem, bias, mask.
type Modified = (&'static str, Problem, Option<Tensor>, Option<Vec<bool>>);

/// The modifier variants of one bf16 problem.
fn modified(p: &Problem) -> Vec<Modified> {
    let (b, h, nq, nk) = (p.batch, p.heads, p.seq_q, p.seq_k);
    let mask = |n: usize, seed: u64| normal_values(n, seed).iter().map(|&x| x > -0.5).collect::<Vec<bool>>();
    let used = (0..b).map(|i| (nk * (i + 2) / (b + 2)).max(1)).collect();
    vec![
        ("alibi_softcap", p.clone().with_alibi(alibi_slopes(h)).with_softcap(2.0), None, None),
        ("sinks", p.clone().with_sinks(normal_values(h, 1)), None, None),
        ("seqused_k", p.clone().with_seqused_k(used), None, None),
        ("bias_f32", p.clone().with_bias(1, h), Some(randn(h * nq * nk, 2, DType::F32)), None),
        ("mask", p.clone().with_mask(b, h), None, Some(mask(b * h * nq * nk, 3))),
        (
            "all",
            p.clone()
                .with_alibi(alibi_slopes(h))
                .with_softcap(3.0)
                .with_sinks(vec![0.5; h])
                .with_bias(b, 1)
                .with_mask(1, 1),
            Some(randn(b * nq * nk, 4, DType::BF16)),
            Some(mask(nq * nk, 5)),
        ),
    ]
}

#[test]
fn bf16_prefill_kernel_with_modifiers_forced_on_and_off() {
    if !Isa::Avx512Bf16.is_available() {
        println!("no AVX512_BF16 on this CPU: nothing to check here");
        return;
    }
    let (on, off) = (FlashCpu::with_isa(Isa::Avx512Bf16).unwrap(), FlashCpu::with_isa(Isa::Avx512).unwrap());
    let (mut worst, mut checked) = (0.0f64, 0);
    for case in shape_table().into_iter().filter(|c| c.name != "ragged1000") {
        for (label, p, bias, mask) in modified(&case.problem.clone().with_dtype(DType::BF16)) {
            if attnkit::tiled::decode_applies(&p) {
                continue; // seqused_k alone keeps decode shapes on the decode kernel
            }
            let (q, k, v) = qkv(&p, 32);
            let pair = PairData { bias: bias.as_ref().map(|b| b.as_ref()), mask: mask.as_deref() };
            let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap();
            let (a, b, ratio) = on_and_off((&on, &off), &args, &format!("{} {label}", case.name));
            worst = worst.max(ratio);
            checked += 1;
            // With one key per row, P = 1 is exact in bf16 and both paths give V's row.
            if !["n1", "n1_causal", "window_0_0_diag"].contains(&case.name) {
                assert!(a != b, "{} {label}: the bf16 kernel matched the f32 path bit for bit", case.name);
            }
        }
    }
    println!("bf16 prefill kernel with modifiers: {checked} runs, worst error / bound = {worst:.3}");
    assert!(checked >= 6 * 20, "only {checked} runs took the prefill path");
}
