//! One test per input the fuzz targets (fuzz/fuzz_targets, run by .ci/fuzz.sh) found to crash,
//! hang or disagree with the oracle, each rebuilt from the finding's decoded input so that the
//! fix stays fixed without the fuzzer.

use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{AttnArgs, AttnError, Device, Exactness, Problem, Tensor, backend, backend_names};

/// Every available exact CPU backend on `args`, against the oracle by the crate's tolerance rule.
fn exact_backends_match_the_oracle(args: &AttnArgs<'_>) {
    let want = oracle(args);
    for name in backend_names() {
        let b = backend(name).unwrap();
        if b.device() != Device::Cpu || b.availability().is_err() || b.exactness() != Exactness::Exact {
            continue;
        }
        let Ok(got) = b.forward(args, true) else { continue };
        let tol = exact_tolerance(args, &want, b.compute_precision(args));
        let err = compare(&got.out, &want);
        assert!(err.within(tol.bound), "{name}: {err:?} vs {tol:?}");
    }
}

/// The `problem` target: a softcap below f32's normal range (1e-40) made 1/c = ∞, so a zero score
/// became 0·∞ = NaN in every CPU kernel while the f64 oracle stayed finite; likewise a scale/c
/// that overflows f32. Both are now refused by validation with the value named, before any
/// kernel runs; the smallest accepted cap still agrees with the oracle.
#[test]
fn subnormal_softcap_is_refused_and_the_smallest_normal_one_computes() {
    let p = Problem::new(1, 1, 3, 4).with_seq_k(5);
    for (bad, needle) in
        [(p.clone().with_softcap(1e-40), "1e-40"), (p.clone().with_scale(1e30).with_softcap(1e-9), "1e-9")]
    {
        match bad.validate() {
            Err(AttnError::InvalidArgument(msg)) => assert!(msg.contains(needle) && msg.contains("too small"), "{msg}"),
            other => panic!("{needle}: expected Invalid, got {other:?}"),
        }
    }
    let ok = p.with_softcap(f32::MIN_POSITIVE);
    // Zero rows in Q and K: every score is exactly 0, the case that produced 0·∞.
    let mut q = vec![0.0f32; ok.q_len()];
    q[4..8].copy_from_slice(&[0.5, -1.0, 2.0, 0.25]);
    let k: Vec<f32> = (0..ok.kv_len()).map(|i| if i < 4 { 0.0 } else { (i % 7) as f32 - 3.0 }).collect();
    let v: Vec<f32> = (0..ok.kv_len()).map(|i| i as f32 * 0.1).collect();
    let (q, k, v) = (Tensor::from_f32(&q, ok.dtype), Tensor::from_f32(&k, ok.dtype), Tensor::from_f32(&v, ok.dtype));
    let args = AttnArgs::new(&ok, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    exact_backends_match_the_oracle(&args);
}

/// The `problem` target: performer at a large head dimension (D = 4096, one query row) ran for
/// minutes (the fuzzer's per-input timeout) building its features: each block of D orthogonal
/// rows was orthonormalized whole, O(D³), although only m = 256 rows are used. It now
/// orthonormalizes the rows it uses (the same features; see performer_features.rs), and this
/// call takes well under a second in release.
#[test]
fn performer_features_at_the_largest_head_dim_are_quick() {
    let p = Problem::new(1, 1, 1, 4096).with_seq_k(2);
    let x: Vec<f32> = (0..p.kv_len()).map(|i| ((i * 13) % 11) as f32 * 0.01).collect();
    let (q, k) = (Tensor::from_f32(&x[..p.q_len()], p.dtype), Tensor::from_f32(&x, p.dtype));
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), k.as_ref()).unwrap();
    let got = backend("performer").unwrap().forward(&args, true).unwrap();
    assert!(got.out.iter().all(|x| x.is_finite()));
}

/// The `problem` target: a softcap near f32::MAX (2.03e38) with scale 0.5 left `s·scale/c`
/// subnormal, so `c·tanh(s·scale/c)` kept only a few of the score's bits: sdpa missed the
/// oracle by 3× the tolerance (1.0e-6 against a bound of 3.4e-7). The kernels now multiply the
/// rational tanh fit by the scaled score itself (`y·p(x²)/q(x²)`, simd/score_mod.rs), and the
/// backward's scalar step keeps the score where tanh is linear. The failing shape, with the
/// fuzzer's two sinks (one subnormal), on deterministic data.
#[test]
fn softcap_near_f32_max_keeps_the_scores_bits() {
    let p = Problem::new(1, 2, 6, 4)
        .with_kv_heads(1)
        .with_seq_k(10)
        .with_scale(0.5)
        .with_softcap(2.033_719e38)
        .with_sinks(vec![0.5, 8.8e-44]);
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
    };
    let q: Vec<f32> = (0..p.q_len()).map(|_| next()).collect();
    let k: Vec<f32> = (0..p.kv_len()).map(|_| next()).collect();
    let v: Vec<f32> = (0..p.kv_len()).map(|_| next()).collect();
    let (q, k, v) = (Tensor::from_f32(&q, p.dtype), Tensor::from_f32(&k, p.dtype), Tensor::from_f32(&v, p.dtype));
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    exact_backends_match_the_oracle(&args);
}

/// The `problem` target: inputs alternating NaN and a subnormal (every row of Q, K and V holds a
/// NaN), a two-key window (left 0, right 1) bottom-right aligned, N_q = 5 over N_k = 258, D = 5,
/// GQA 2/1, scale 1.5e-36. flash-cpu's decode path splits the keys into chunks of 256; rows whose
/// band lay inside one chunk merged a NaN partial with the other chunk's empty one, and
/// `merge_partials` took max(NaN, −∞) = −∞ for "no key" and wrote zeros: 8 of 10 rows lost their
/// NaN. A NaN LSE now poisons the merged row.
#[test]
fn nan_rows_stay_nan_across_decode_key_chunks() {
    let p = Problem::new(1, 2, 5, 5)
        .with_kv_heads(1)
        .with_seq_k(258)
        .with_scale(1.504_971_4e-36)
        .with_window(attnkit::Window::new(0, 1));
    let data = [f32::NAN, 4.3405e-41];
    let fill = |len: usize, off: usize| -> Vec<f32> { (0..len).map(|i| data[(i + off) % 2]).collect() };
    let (q, k, v) = (fill(p.q_len(), 0), fill(p.kv_len(), 7), fill(p.kv_len(), 13));
    let (q, k, v) = (Tensor::from_f32(&q, p.dtype), Tensor::from_f32(&k, p.dtype), Tensor::from_f32(&v, p.dtype));
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    assert!(oracle(&args).iter().all(|x| x.is_nan()));
    exact_backends_match_the_oracle(&args);
}
