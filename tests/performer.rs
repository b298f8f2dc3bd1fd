//! `performer` (FAVOR+): agreement with a dense f64 evaluation of the same estimator with the
//! same features, the m^(−1/2) error law, feature construction, refusals, options, determinism.
//!
//! Tolerance: outputs within 1e-4 of the f64 estimator relative to max(1, max|O|), LSE within
//! 1e-3 nats (f32 feature exponents of size ~10 carry ~1e-6 absolute error, amplified by exp and
//! accumulated over ≤ 600 keys).

mod approx_common;

use approx_common::{lse_max_err, randn, rel_err, scaled_max_err, with_threads};
use attnkit::backends::performer::{DENOM_STABILIZER, Performer, orthogonal_features};
use attnkit::backends::reference::attention_f64;
use attnkit::options::Kernel;
use attnkit::{
    Attention, AttnArgs, AttnError, BackendOptions, DType, Exactness, Problem, Tensor, TensorRef, Window, backend_with,
};

fn inputs(p: &Problem, seed: u64, std: f64) -> (Tensor, Tensor, Tensor) {
    let t = |s, n| Tensor::from_f32(&randn(seed * 3 + s, n, std), p.dtype);
    (t(0, p.q_len()), t(1, p.kv_len()), t(2, p.kv_len()))
}

/// The FAVOR+ estimator in f64 with the backend's ω, the same shifts and δ: (O, LSE).
#[allow(clippy::needless_range_loop)] // index loops mirror the formula
fn dense_f64(perf: &Performer, args: &AttnArgs<'_>) -> (Vec<f64>, Vec<f64>) {
    let p = args.problem();
    let (nq, nk, d, m) = (p.seq_q, p.seq_k, p.head_dim, perf.features());
    let omega: Vec<f64> = perf.feature_matrix(d).unwrap().iter().map(|&x| x as f64).collect();
    let s = p.scale as f64;
    let half_ln_m = 0.5 * (m as f64).ln();
    let exps = |t: TensorRef<'_>, base: usize| -> Vec<f64> {
        let x: Vec<f64> = (0..d).map(|c| t.get_f32(base + c) as f64).collect();
        let sq: f64 = x.iter().map(|v| v * v).sum();
        (0..m).map(|r| s.sqrt() * (0..d).map(|c| omega[r * d + c] * x[c]).sum::<f64>() - s * sq / 2.0).collect()
    };
    let mut out = vec![0.0; p.out_len()];
    let mut lse = vec![f64::NEG_INFINITY; p.lse_len()];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * nk * d;
            let kexp: Vec<Vec<f64>> = (0..nk).map(|j| exps(args.k(), kv_base + j * d)).collect();
            let key_shift = kexp.iter().flatten().cloned().fold(f64::NEG_INFINITY, f64::max);
            let kf: Vec<Vec<f64>> =
                kexp.iter().map(|row| row.iter().map(|a| (a - key_shift - half_ln_m).exp()).collect()).collect();
            for i in 0..nq {
                let row = (b * p.heads + h) * nq + i;
                let (lo, hi) = p.key_range(i);
                if lo == hi {
                    continue;
                }
                let a = exps(args.q(), row * d);
                let q_shift = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let qf: Vec<f64> = a.iter().map(|x| (x - q_shift - half_ln_m).exp()).collect();
                let mut den = 0.0;
                for j in lo..hi {
                    let w: f64 = qf.iter().zip(&kf[j]).map(|(x, y)| x * y).sum();
                    den += w;
                    for c in 0..d {
                        out[row * d + c] += w * args.v().get_f32(kv_base + j * d + c) as f64;
                    }
                }
                for c in 0..d {
                    out[row * d + c] /= den + DENOM_STABILIZER as f64;
                }
                lse[row] = den.ln() + q_shift + key_shift;
            }
        }
    }
    (out, lse)
}

#[test]
fn matches_dense_f64_estimator() {
    // (B, H, H_kv, N_q, N_k, D, m, causal, dtype, scale, iid)
    let cases = [
        (1, 2, 2, 33, 47, 16, 24, false, DType::F32, None, false),
        (2, 4, 2, 20, 64, 8, 16, false, DType::F16, None, false),
        (1, 4, 1, 17, 9, 8, 10, false, DType::BF16, Some(0.2), true),
        (1, 2, 2, 300, 300, 16, 32, true, DType::F32, None, false),
        (1, 2, 1, 150, 420, 8, 20, true, DType::F16, None, false),
        (2, 2, 2, 200, 70, 16, 16, true, DType::F32, Some(0.5), false),
        (1, 1, 1, 1, 600, 32, 64, true, DType::BF16, None, true),
    ];
    for (b, h, hkv, nq, nk, d, m, causal, dtype, scale, iid) in cases {
        let mut p = Problem::new(b, h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_causal(causal).with_dtype(dtype);
        if let Some(s) = scale {
            p = p.with_scale(s);
        }
        let mut perf = Performer::new(m, 21).unwrap();
        if iid {
            perf = perf.with_iid_features();
        }
        let (q, k, v) = inputs(&p, 1, 1.0);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let got = perf.forward(&args, true).unwrap();
        let (want, want_lse) = dense_f64(&perf, &args);
        let err = scaled_max_err(&got.out, &want);
        let lerr = lse_max_err(got.lse.as_ref().unwrap(), &want_lse);
        assert!(err < 1e-4 && lerr < 1e-3, "{p} m={m} iid={iid}: out err {err:.2e}, lse err {lerr:.2e}");
        if causal && nq > nk {
            // Rows before the first key see nothing: zeros and −∞, by contract.
            let empty = nq - nk;
            assert!(got.out[..empty * d].iter().all(|&x| x == 0.0));
            assert!(got.lse.as_ref().unwrap()[..empty].iter().all(|&x| x == f32::NEG_INFINITY));
        }
    }
}

#[test]
fn orthogonal_features_are_orthogonal_blocks_with_chi_norms() {
    let d = 16;
    let w = orthogonal_features(d * 40, d, 3);
    let norms: Vec<f64> = w.chunks(d).map(|r| r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()).collect();
    for (b, block) in w.chunks(d * d).enumerate() {
        for i in 0..d {
            for j in 0..i {
                let dot: f64 = (0..d).map(|c| block[i * d + c] as f64 * block[j * d + c] as f64).sum();
                let cos = dot / (norms[b * d + i] * norms[b * d + j]);
                assert!(cos.abs() < 1e-5, "block {b} rows {i},{j}: cos {cos}");
            }
        }
    }
    // ‖ω‖² ~ χ²(d): mean d, variance 2d; 640 draws put the mean within ~0.35 (2σ).
    let mean_sq = norms.iter().map(|n| n * n).sum::<f64>() / norms.len() as f64;
    assert!((mean_sq - d as f64).abs() < 0.8, "mean ‖ω‖² = {mean_sq}");
    // Block b depends only on (seed, d, b): fewer features are a prefix of more.
    assert_eq!(orthogonal_features(37, d, 3), w[..37 * d].to_vec());
    assert_ne!(orthogonal_features(37, d, 4), w[..37 * d].to_vec());
}

/// On small-norm inputs the error against exact attention falls like m^(−1/2). Mean over 8
/// seeds at each m, least-squares slope of log(error) on log(m), accepted in [−0.75, −0.25].
/// Deterministic seeds: the outcome is fixed, not a flake risk.
#[test]
fn error_falls_like_inverse_sqrt_m() {
    let p = Problem::new(1, 2, 64, 16);
    let ms = [16usize, 64, 256, 1024];
    let mut logs = Vec::new();
    for &m in &ms {
        let mut total = 0.0;
        for seed in 0..8 {
            let (q, k, v) = inputs(&p, 100 + seed, 0.5);
            let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            let (exact, _) = attention_f64(&args);
            let got = Performer::new(m, seed).unwrap().forward(&args, false).unwrap().out;
            total += rel_err(&got, &exact);
        }
        logs.push(((m as f64).ln(), (total / 8.0).ln()));
    }
    let n = logs.len() as f64;
    let (mx, my) = logs.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxy: f64 = logs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = logs.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let slope = sxy / sxx;
    let errs: Vec<f64> = logs.iter().map(|(_, y)| y.exp()).collect();
    println!("performer m = {ms:?}: mean rel. error {errs:.4?}, fitted slope {slope:.3}");
    assert!((-0.75..=-0.25).contains(&slope), "slope {slope:.3}, errors {errs:?}");
}

#[test]
fn windows_are_refused_with_the_reason() {
    let perf = Performer::new(8, 0).unwrap();
    let p = Problem::new(1, 1, 16, 8);
    let (q, k, v) = inputs(&p, 3, 1.0);
    for w in [Window::new(4, 0), Window::new(-1, 3)] {
        let problem = p.clone().with_causal(true).with_window(w);
        let args = AttnArgs::new(&problem, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        match perf.forward(&args, false) {
            Err(AttnError::Unsupported { reasons, .. }) => {
                assert!(reasons[0].contains("sliding window"), "{reasons:?}")
            }
            other => panic!("{problem}: expected Unsupported, got {other:?}"),
        }
    }
    assert!(perf.supports(&p.clone().with_causal(true)));
}

#[test]
fn registry_honours_features_and_seed() {
    let p = Problem::new(1, 2, 40, 16);
    let (q, k, v) = inputs(&p, 4, 1.0);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let opts = |features, seed| BackendOptions {
        proj_dim: Some(3),
        features,
        seed,
        block_size: Some(5),
        ..Default::default()
    };
    let via_registry = backend_with("performer", &opts(Some(24), 5)).unwrap();
    assert_eq!(via_registry.exactness(), Exactness::Approximate);
    let a = via_registry.forward(&args, false).unwrap().out;
    assert_eq!(a, Performer::new(24, 5).unwrap().forward(&args, false).unwrap().out);
    let other_seed = backend_with("performer", &opts(Some(24), 6)).unwrap();
    assert_ne!(a, other_seed.forward(&args, false).unwrap().out);
    let default_m = backend_with("performer", &opts(None, 5)).unwrap();
    assert_eq!(
        default_m.forward(&args, false).unwrap().out,
        Performer::new(256, 5).unwrap().forward(&args, false).unwrap().out
    );
    assert!(matches!(backend_with("performer", &opts(Some(0), 5)), Err(AttnError::InvalidArgument(_))));
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let p = Problem::new(1, 1, 8, 8);
    let x = vec![0.5f32; p.q_len()];
    let args = AttnArgs::new(&p, &x, &x, &x).unwrap();
    let r = Performer::new(1 << 40, 0).unwrap().forward(&args, false);
    assert!(matches!(r, Err(AttnError::MemoryBudget { .. })), "{:?}", r.map(|_| ()));
}

#[test]
fn bitwise_identical_across_thread_counts() {
    for causal in [false, true] {
        let p = Problem::new(2, 4, 300, 16).with_kv_heads(2).with_seq_k(450).with_causal(causal);
        let (q, k, v) = inputs(&p, 5, 1.0);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let run = |t| with_threads(t, || Performer::new(32, 3).unwrap().forward(&args, true).unwrap());
        let (a, b) = (run(1), run(3));
        assert_eq!(a.out, b.out, "causal={causal}");
        assert_eq!(a.lse, b.lse, "causal={causal}");
    }
}

#[test]
fn nan_stays_in_its_head() {
    for causal in [false, true] {
        let p = Problem::new(1, 2, 20, 8).with_causal(causal);
        let (q, k, v) = inputs(&p, 6, 1.0);
        let mut v = v.to_f32();
        v[0] = f32::NAN; // head 0, key 0
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), &v).unwrap();
        let out = Performer::new(8, 1).unwrap().forward(&args, false).unwrap().out;
        let (h0, h1) = out.split_at(p.out_len() / 2);
        assert!(h0.iter().any(|x| x.is_nan()), "causal={causal}");
        assert!(h1.iter().all(|x| x.is_finite()), "causal={causal}");
    }
}

/// Generalized attention with the ReLU kernel in f64, from its definition: φ(x)_r =
/// ReLU(ω_r·√s·x / √m) + 1e-3 and O_i = Σ_{j ∈ band(i)} φ(q_i)·φ(k_j) v_j / (Σ φ(q_i)·φ(k_j) + δ),
/// LSE = ln Σ φ(q_i)·φ(k_j). Returns (O, LSE).
fn relu_f64(perf: &Performer, args: &AttnArgs<'_>) -> (Vec<f64>, Vec<f64>) {
    let p = args.problem();
    let (nq, nk, d, m) = (p.seq_q, p.seq_k, p.head_dim, perf.features());
    let omega: Vec<f64> = perf.feature_matrix(d).unwrap().iter().map(|&x| x as f64).collect();
    let c = (p.scale as f64).sqrt() / (m as f64).sqrt();
    let phi = |t: TensorRef<'_>, base: usize| -> Vec<f64> {
        (0..m)
            .map(|r| (c * (0..d).map(|k| omega[r * d + k] * t.get_f32(base + k) as f64).sum::<f64>()).max(0.0) + 1e-3)
            .collect()
    };
    let mut out = vec![0.0; p.out_len()];
    let mut lse = vec![f64::NEG_INFINITY; p.lse_len()];
    for row in 0..p.batch * p.heads * nq {
        let (bh, i) = (row / nq, row % nq);
        let kv_base = ((bh / p.heads) * p.kv_heads + p.kv_head_of(bh % p.heads)) * nk * d;
        let (lo, hi) = p.key_range(i);
        if lo == hi {
            continue;
        }
        let fq = phi(args.q(), row * d);
        let mut den = 0.0;
        for j in lo..hi {
            let w: f64 = fq.iter().zip(phi(args.k(), kv_base + j * d)).map(|(a, b)| a * b).sum();
            den += w;
            for t in 0..d {
                out[row * d + t] += w * args.v().get_f32(kv_base + j * d + t) as f64;
            }
        }
        (0..d).for_each(|t| out[row * d + t] /= den + DENOM_STABILIZER as f64);
        lse[row] = den.ln();
    }
    (out, lse)
}

#[test]
fn relu_kernel_matches_its_f64_formula() {
    // (B, H, H_kv, N_q, N_k, D, m, causal, dtype)
    let cases = [
        (1, 2, 2, 33, 47, 16, 24, false, DType::F32),
        (2, 4, 2, 20, 300, 8, 16, false, DType::F16),
        (1, 2, 2, 300, 300, 16, 32, true, DType::F32),
        (1, 2, 1, 150, 420, 8, 20, true, DType::BF16),
        (2, 2, 2, 200, 70, 16, 16, true, DType::F32),
    ];
    for (b, h, hkv, nq, nk, d, m, causal, dtype) in cases {
        let p = Problem::new(b, h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_causal(causal).with_dtype(dtype);
        let perf = Performer::new(m, 21).unwrap().with_kernel(Kernel::Relu);
        let (q, k, v) = inputs(&p, 1, 1.0);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let got = perf.forward(&args, true).unwrap();
        let (want, want_lse) = relu_f64(&perf, &args);
        let err = scaled_max_err(&got.out, &want);
        let lerr = lse_max_err(got.lse.as_ref().unwrap(), &want_lse);
        assert!(err < 1e-4 && lerr < 1e-3, "{p} m={m}: out err {err:.2e}, lse err {lerr:.2e}");
    }
    // The registry's kernel option selects it; softmax stays the default.
    let p = Problem::new(1, 2, 40, 16);
    let (q, k, v) = inputs(&p, 2, 1.0);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let opts = |kernel| BackendOptions { features: Some(16), kernel, ..Default::default() };
    let relu = backend_with("performer", &opts(Some(Kernel::Relu))).unwrap().forward(&args, false).unwrap().out;
    let soft = backend_with("performer", &opts(None)).unwrap().forward(&args, false).unwrap().out;
    let explicit = Performer::new(16, 0).unwrap().with_kernel(Kernel::Relu).forward(&args, false).unwrap().out;
    assert_eq!(relu, explicit);
    assert_ne!(relu, soft);
    assert_eq!(Performer::from_options(&opts(None)).unwrap().kernel(), Kernel::Softmax);
}

#[test]
fn nan_in_q_stays_in_its_row() {
    let p = Problem::new(1, 2, 30, 8);
    let (q, k, v) = inputs(&p, 9, 1.0);
    let mut qn = q.to_f32();
    qn[17 * 8 + 2] = f32::NAN;
    for kernel in [Kernel::Softmax, Kernel::Relu] {
        for causal in [false, true] {
            let pc = p.clone().with_causal(causal);
            let perf = Performer::new(16, 1).unwrap().with_kernel(kernel);
            let clean = perf.forward(&AttnArgs::new(&pc, q.as_ref(), k.as_ref(), v.as_ref()).unwrap(), false);
            let dirty = perf.forward(&AttnArgs::new(&pc, &qn, k.as_ref(), v.as_ref()).unwrap(), false);
            let (clean, dirty) = (clean.unwrap().out, dirty.unwrap().out);
            for (r, (c, d)) in clean.chunks(8).zip(dirty.chunks(8)).enumerate() {
                if r == 17 {
                    assert!(d.iter().any(|x| x.is_nan()), "{kernel} causal={causal}");
                } else {
                    assert!(c.iter().zip(d).all(|(x, y)| x.to_bits() == y.to_bits()), "{kernel} row {r}");
                }
            }
        }
    }
}

/// Sinks through FAVOR+'s log-normalizer: the result with sinks is the one without merged with a
/// zero-valued part of LSE σ (`merge_partials`, an independent formulation), rows with no key
/// (causal, N_q > N_k) get O = 0 and LSE = σ, and the ReLU kernel refuses sinks.
#[test]
fn sinks_join_the_estimated_normalizer() {
    for causal in [false, true] {
        let base = Problem::new(1, 2, 40, 16).with_seq_k(30).with_causal(causal);
        let p = base.clone().with_sinks(vec![0.5, -2.0]);
        let perf = Performer::new(32, 5).unwrap();
        let (q, k, v) = inputs(&p, 4, 1.0);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let plain_args = AttnArgs::new(&base, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let got = perf.forward(&args, true).unwrap();
        let plain = perf.forward(&plain_args, true).unwrap();
        let (mut out, mut lse) = (plain.out.clone(), plain.lse.unwrap());
        let sink_lse: Vec<f32> = (0..p.lse_len()).map(|r| [0.5f32, -2.0][r / p.seq_q]).collect();
        let zeros = vec![0.0f32; out.len()];
        attnkit::merge_partials(&mut out, &mut lse, &zeros, &sink_lse, p.head_dim).unwrap();
        let gl = got.lse.as_ref().unwrap();
        assert!(got.out.iter().zip(&out).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)), "{p}");
        assert!(gl.iter().zip(&lse).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)), "{p}");
        if causal {
            // Rows 0..10 see no key: O = 0, LSE = σ.
            assert!(got.out[..10 * 16].iter().all(|&x| x == 0.0));
            assert_eq!(gl[0], 0.5);
        }
    }
    let relu = Performer::new(32, 5).unwrap().with_kernel(Kernel::Relu);
    let p = Problem::new(1, 2, 8, 16).with_sinks(vec![0.0; 2]);
    assert!(relu.not_supported_reasons(&p).iter().any(|r| r.contains("sinks")));
}

/// Used key lengths: each batch entry's result is the same call on that entry cut to its used
/// keys (the sums over keys, the key shift and the causal alignment all run over them), for both
/// kernels, causal or not, GQA, and an entry with no used key (O = 0, LSE = −∞). The cut runs the
/// same operations in the same order, so they must agree to the last bit.
#[test]
fn seqused_k_equals_each_entry_cut_to_its_used_keys() {
    let used = [23usize, 0, 30, 7];
    for (kernel, causal) in
        [(Kernel::Softmax, false), (Kernel::Softmax, true), (Kernel::Relu, false), (Kernel::Relu, true)]
    {
        let perf = Performer::new(32, 5).unwrap().with_kernel(kernel);
        let (h, hkv, nq, nk, d) = (4, 2, 9, 30, 16);
        let p = Problem::new(used.len(), h, nq, d)
            .with_kv_heads(hkv)
            .with_seq_k(nk)
            .with_causal(causal)
            .with_seqused_k(used.to_vec());
        assert!(perf.supports(&p), "{:?}", perf.not_supported_reasons(&p));
        let (q, k, v) = inputs(&p, 6, 0.5);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let got = perf.forward(&args, true).unwrap();
        let got_lse = got.lse.unwrap();
        let (qf, kf, vf) = (q.as_ref().to_f32_cow(), k.as_ref().to_f32_cow(), v.as_ref().to_f32_cow());
        for (b, &n) in used.iter().enumerate() {
            let (rows, lse_rows) = (h * nq * d, h * nq);
            let (o, l) = (&got.out[b * rows..(b + 1) * rows], &got_lse[b * lse_rows..(b + 1) * lse_rows]);
            if n == 0 {
                assert!(o.iter().all(|&x| x == 0.0) && l.iter().all(|&x| x == f32::NEG_INFINITY), "{kernel:?}");
                continue;
            }
            let cut = Problem::new(1, h, nq, d).with_kv_heads(hkv).with_seq_k(n).with_causal(causal);
            // Entry b's keys: for each KV head, its first n rows.
            let keys = |x: &[f32]| -> Vec<f32> {
                (0..hkv).flat_map(|g| x[((b * hkv + g) * nk) * d..][..n * d].to_vec()).collect()
            };
            let (cq, ck, cv) = (&qf[b * rows..(b + 1) * rows], keys(&kf), keys(&vf));
            let cut_args = AttnArgs::new(&cut, cq, &ck, &cv).unwrap();
            let want = perf.forward(&cut_args, true).unwrap();
            assert_eq!(o, want.out.as_slice(), "{kernel:?} causal={causal} entry {b}");
            assert_eq!(l, want.lse.unwrap().as_slice(), "{kernel:?} causal={causal} entry {b}");
        }
    }
    // The other per-pair modifiers are still refused.
    let perf = Performer::new(32, 5).unwrap();
    let p = Problem::new(1, 2, 8, 16).with_seqused_k(vec![4]).with_softcap(5.0);
    let reasons = perf.not_supported_reasons(&p);
    assert!(reasons.iter().any(|r| r.contains("softcap")) && !reasons.iter().any(|r| r.contains("seqused_k")));
}
