//! `linformer`: agreement with a dense f64 evaluation of the same formula (Gaussian and pooled
//! projections), exactness with identity projections and with pooled k = N_k, typed refusals,
//! options, determinism.
//!
//! Tolerance: outputs within 1e-4 of the f64 formula relative to max(1, max|O|) and LSE within
//! 1e-3 nats (f32 GEMMs over up to 64 keys, widened f16/bf16 inputs are exact so the dtype does
//! not loosen it); with E = F = I or pooled k = N_k, 2e-5 against `reference`.

mod approx_common;

use approx_common::{lse_max_err, randn, rel_err, scaled_max_err, with_threads};
use attnkit::backends::linformer::{Linformer, Sharing};
use attnkit::backends::reference::attention_f64;
use attnkit::options::Projection;
use attnkit::{
    Attention, AttnArgs, AttnError, BackendOptions, DType, Exactness, Problem, Tensor, Window, backend_with,
};

/// Inputs rounded to the problem's dtype, and their f32 values.
fn inputs(p: &Problem, seed: u64) -> (Tensor, Tensor, Tensor) {
    let t = |s, n| Tensor::from_f32(&randn(seed * 3 + s, n, 1.0), p.dtype);
    (t(0, p.q_len()), t(1, p.kv_len()), t(2, p.kv_len()))
}

/// Linformer's formula in f64 with the backend's own E and F: (O, LSE).
#[allow(clippy::needless_range_loop)] // index loops mirror the formula
fn dense_f64(lin: &Linformer, args: &AttnArgs<'_>) -> (Vec<f64>, Vec<f64>) {
    let p = args.problem();
    let (nq, nk, d, k) = (p.seq_q, p.seq_k, p.head_dim, lin.proj_dim());
    let g = |t: attnkit::TensorRef<'_>, i: usize| t.get_f32(i) as f64;
    let mut out = vec![0.0; p.out_len()];
    let mut lse = vec![0.0; p.lse_len()];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let kvh = p.kv_head_of(h);
            let (e, f) = lin.projection_pair(nk, p.kv_heads, kvh).unwrap();
            let kv_base = (b * p.kv_heads + kvh) * nk * d;
            let proj = |m: &[f32], t: attnkit::TensorRef<'_>| -> Vec<f64> {
                let mut r = vec![0.0; k * d];
                for row in 0..k {
                    for j in 0..nk {
                        let w = m[row * nk + j] as f64;
                        for c in 0..d {
                            r[row * d + c] += w * g(t, kv_base + j * d + c);
                        }
                    }
                }
                r
            };
            let (kp, vp) = (proj(&e, args.k()), proj(&f, args.v()));
            for i in 0..nq {
                let row = (b * p.heads + h) * nq + i;
                let s: Vec<f64> = (0..k)
                    .map(|r| (0..d).map(|c| g(args.q(), row * d + c) * kp[r * d + c]).sum::<f64>() * p.scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = w.iter().sum();
                for c in 0..d {
                    out[row * d + c] = (0..k).map(|r| w[r] * vp[r * d + c]).sum::<f64>() / sum;
                }
                lse[row] = m + sum.ln();
            }
        }
    }
    (out, lse)
}

#[test]
fn matches_dense_f64_formula() {
    // (B, H, H_kv, N_q, N_k, D, k, dtype, sharing, scale)
    let cases = [
        (1, 2, 2, 33, 47, 16, 8, DType::F32, Sharing::Separate, None),
        (2, 4, 2, 20, 64, 8, 16, DType::F16, Sharing::KeyValue, None),
        (1, 4, 1, 17, 9, 8, 24, DType::BF16, Sharing::Headwise, None),
        (1, 3, 3, 140, 40, 32, 40, DType::F32, Sharing::Layerwise, Some(0.3)),
        (1, 1, 1, 5, 600, 4, 3, DType::F32, Sharing::Separate, None),
    ];
    for (b, h, hkv, nq, nk, d, k, dtype, sharing, scale) in cases {
        let mut p = Problem::new(b, h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_dtype(dtype);
        if let Some(s) = scale {
            p = p.with_scale(s);
        }
        let lin = Linformer::new(k, 11).unwrap().with_sharing(sharing).unwrap();
        let (q, kk, v) = inputs(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), kk.as_ref(), v.as_ref()).unwrap();
        let got = lin.forward(&args, true).unwrap();
        let (want, want_lse) = dense_f64(&lin, &args);
        let err = scaled_max_err(&got.out, &want);
        let lerr = lse_max_err(got.lse.as_ref().unwrap(), &want_lse);
        assert!(err < 1e-4 && lerr < 1e-3, "{p} k={k} {sharing:?}: out err {err:.2e}, lse err {lerr:.2e}");
    }
}

fn identity(n: usize) -> Vec<f32> {
    (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect()
}

#[test]
fn identity_projections_reproduce_exact_attention() {
    for (h, hkv, nq, nk, d) in [(2, 2, 24, 24, 16), (4, 2, 7, 31, 8), (3, 1, 50, 20, 32)] {
        let p = Problem::new(2, h, nq, d).with_kv_heads(hkv).with_seq_k(nk);
        let (q, k, v) = inputs(&p, 2);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (want, want_lse) = attention_f64(&args);
        // Shared (one E = F) and per-head separate E, F: both must be exact.
        let shared = Linformer::with_projections(vec![identity(nk)], None, nk, nk).unwrap();
        let per_head =
            Linformer::with_projections(vec![identity(nk); hkv], Some(vec![identity(nk); hkv]), nk, nk).unwrap();
        let kind = if hkv == 1 { Sharing::Headwise } else { Sharing::Separate };
        assert_eq!((shared.sharing(), per_head.sharing()), (Sharing::Layerwise, kind));
        for lin in [shared, per_head] {
            let got = lin.forward(&args, true).unwrap();
            let err = scaled_max_err(&got.out, &want);
            let lerr = lse_max_err(got.lse.as_ref().unwrap(), &want_lse);
            assert!(err < 2e-5 && lerr < 2e-5, "{p}: out err {err:.2e}, lse err {lerr:.2e}");
        }
    }
}

/// Sinks through the log-normalizer: with identity projections linformer is exact attention, so
/// with sinks it must match the oracle with sinks (rows, LSE and GQA heads each with their own σ).
#[test]
fn identity_projections_with_sinks_match_the_oracle() {
    for (h, hkv, nq, nk, d) in [(2, 2, 24, 24, 16), (4, 2, 7, 31, 8)] {
        let p = Problem::new(2, h, nq, d)
            .with_kv_heads(hkv)
            .with_seq_k(nk)
            .with_sinks((0..h).map(|i| i as f32 - 1.0).collect());
        let (q, k, v) = inputs(&p, 3);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (want, want_lse) = attention_f64(&args);
        let lin = Linformer::with_projections(vec![identity(nk)], None, nk, nk).unwrap();
        let got = lin.forward(&args, true).unwrap();
        let (err, lerr) = (scaled_max_err(&got.out, &want), lse_max_err(got.lse.as_ref().unwrap(), &want_lse));
        assert!(err < 2e-5 && lerr < 2e-5, "{p}: out err {err:.2e}, lse err {lerr:.2e}");
        // Without asking for the LSE the rows are the same.
        assert_eq!(lin.forward(&args, false).unwrap().out, got.out);
    }
}

#[test]
fn masks_are_refused_with_the_reason() {
    let lin = Linformer::new(8, 0).unwrap();
    let p = Problem::new(1, 1, 16, 8);
    let (q, k, v) = inputs(&p, 3);
    for (problem, needle) in [
        (p.clone().with_causal(true), "causal"),
        (p.clone().with_window(Window::new(4, 4)), "sliding window"),
        (p.clone().with_window(Window::new(100, -1)), "sliding window"),
    ] {
        let args = AttnArgs::new(&problem, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        match lin.forward(&args, false) {
            Err(AttnError::Unsupported { backend, reasons }) => {
                assert_eq!(backend, "linformer");
                assert!(reasons.iter().any(|r| r.contains(needle)), "{reasons:?}");
            }
            other => panic!("{problem}: expected Unsupported, got {other:?}"),
        }
    }
    assert!(lin.supports(&p));
}

#[test]
fn bad_projections_and_options_are_typed_errors() {
    let id = identity(4);
    let cases: Vec<(&str, Result<Linformer, AttnError>)> = vec![
        ("k = 0", Linformer::new(0, 1)),
        ("short E", Linformer::with_projections(vec![vec![0.0; 15]], None, 4, 4)),
        ("NaN in F", Linformer::with_projections(vec![id.clone()], Some(vec![vec![f32::NAN; 16]]), 4, 4)),
        ("E/F count", Linformer::with_projections(vec![id.clone(); 2], Some(vec![id.clone()]), 4, 4)),
        ("no E", Linformer::with_projections(vec![], None, 4, 4)),
        (
            "sharing of supplied",
            Linformer::with_projections(vec![id.clone()], None, 4, 4).and_then(|l| l.with_sharing(Sharing::Separate)),
        ),
    ];
    for (what, r) in cases {
        match r {
            Err(AttnError::Shape(_) | AttnError::InvalidArgument(_)) => {}
            other => panic!("{what}: expected a Shape/InvalidArgument error, got {:?}", other.map(|_| ())),
        }
    }
    // Supplied for N_k = 4 and 3 heads: other N_k or head counts are refused with the reason.
    let lin = Linformer::with_projections(vec![id.clone(); 3], None, 4, 4).unwrap();
    let reasons = lin.not_supported_reasons(&Problem::new(1, 2, 5, 8));
    assert!(reasons.iter().any(|r| r.contains("N_k = 4")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("3 per-head")), "{reasons:?}");
    assert!(lin.supports(&Problem::new(2, 3, 4, 8)));
}

#[test]
fn sharing_variants_share_what_they_say() {
    let (nk, hkv) = (12, 3);
    for (sharing, e_eq_f, same_across_heads) in [
        (Sharing::Separate, false, false),
        (Sharing::KeyValue, true, false),
        (Sharing::Headwise, false, true),
        (Sharing::Layerwise, true, true),
    ] {
        let lin = Linformer::new(5, 9).unwrap().with_sharing(sharing).unwrap();
        let (e0, f0) = lin.projection_pair(nk, hkv, 0).unwrap();
        let (e2, f2) = lin.projection_pair(nk, hkv, 2).unwrap();
        assert_eq!(e0.len(), 5 * nk);
        assert_eq!(e0 == f0, e_eq_f, "{sharing:?}");
        assert_eq!((e0 == e2, f0 == f2), (same_across_heads, same_across_heads), "{sharing:?}");
    }
    // Entries are N(0, 1/k): check the variance on a large draw.
    let (e, _) = Linformer::new(64, 1).unwrap().projection_pair(4096, 1, 0).unwrap();
    let var = e.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / e.len() as f64;
    assert!((var * 64.0 - 1.0).abs() < 0.02, "k·var = {}", var * 64.0);
}

#[test]
fn registry_honours_proj_dim_and_seed() {
    let p = Problem::new(1, 2, 40, 16);
    let (q, k, v) = inputs(&p, 4);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let opts = |proj_dim, seed| BackendOptions {
        proj_dim,
        features: Some(3),
        seed,
        block_size: Some(5),
        projection: Some(Projection::Gaussian),
        ..Default::default()
    };
    let via_registry = backend_with("linformer", &opts(Some(8), 5)).unwrap();
    assert_eq!(via_registry.exactness(), Exactness::Approximate);
    let a = via_registry.forward(&args, false).unwrap().out;
    assert_eq!(a, Linformer::new(8, 5).unwrap().forward(&args, false).unwrap().out);
    let other_seed = backend_with("linformer", &opts(Some(8), 6)).unwrap().forward(&args, false).unwrap().out;
    assert_ne!(a, other_seed);
    let default_k = backend_with("linformer", &opts(None, 5)).unwrap().forward(&args, false).unwrap().out;
    assert_eq!(default_k, Linformer::new(256, 5).unwrap().forward(&args, false).unwrap().out);
    assert!(matches!(backend_with("linformer", &opts(Some(0), 5)), Err(AttnError::InvalidArgument(_))));
    // Without a projection option the registry builds the pooled one, which ignores the seed.
    let pooled = |seed| BackendOptions { proj_dim: Some(8), seed, ..Default::default() };
    let a = backend_with("linformer", &pooled(5)).unwrap().forward(&args, false).unwrap().out;
    assert_eq!(a, backend_with("linformer", &pooled(6)).unwrap().forward(&args, false).unwrap().out);
    assert_eq!(a, Linformer::pooled(8).unwrap().forward(&args, false).unwrap().out);
    assert_eq!(Linformer::pooled(8).unwrap().projection(), Projection::Pooled);
    assert!(matches!(Linformer::pooled(0), Err(AttnError::InvalidArgument(_))));
    assert!(matches!(
        Linformer::pooled(4).unwrap().with_sharing(Sharing::Separate),
        Err(AttnError::InvalidArgument(_))
    ));
}

/// Pooled Linformer in f64, written from its definition: segment r of k covers keys
/// [⌊r·N_k/k⌋, ⌊(r+1)·N_k/k⌋) (k clamped to N_k), K′_r and V′_r are the segment means and
/// pooled key r's logit gets + ln |segment r|. Returns (O, LSE).
fn pooled_f64(k: usize, args: &AttnArgs<'_>) -> (Vec<f64>, Vec<f64>) {
    let p = args.problem();
    let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
    let k = k.min(nk);
    let g = |t: attnkit::TensorRef<'_>, i: usize| t.get_f32(i) as f64;
    let (mut out, mut lse) = (vec![0.0; p.out_len()], vec![0.0; p.lse_len()]);
    for row in 0..p.batch * p.heads * nq {
        let bh = row / nq;
        let kv_base = ((bh / p.heads) * p.kv_heads + p.kv_head_of(bh % p.heads)) * nk * d;
        let segs: Vec<(usize, usize)> = (0..k).map(|r| (r * nk / k, (r + 1) * nk / k)).collect();
        let mean = |t, (lo, hi): (usize, usize), c: usize| {
            (lo..hi).map(|j| g(t, kv_base + j * d + c)).sum::<f64>() / (hi - lo) as f64
        };
        let s: Vec<f64> = segs
            .iter()
            .map(|&sg| {
                let dot: f64 = (0..d).map(|c| g(args.q(), row * d + c) * mean(args.k(), sg, c)).sum();
                dot * p.scale as f64 + ((sg.1 - sg.0) as f64).ln()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let sum: f64 = w.iter().sum();
        for c in 0..d {
            out[row * d + c] = segs.iter().zip(&w).map(|(&sg, w)| w * mean(args.v(), sg, c)).sum::<f64>() / sum;
        }
        lse[row] = m + sum.ln();
    }
    (out, lse)
}

#[test]
fn pooled_matches_its_f64_formula_and_is_exact_at_k_equal_n() {
    // (B, H, H_kv, N_q, N_k, D, k, dtype): divisible and ragged segments, k > N_k, GQA/MQA.
    let cases = [
        (1, 2, 2, 33, 64, 16, 8, DType::F32),
        (2, 4, 2, 20, 70, 8, 16, DType::F16),
        (1, 4, 1, 17, 9, 8, 24, DType::BF16),
        (1, 3, 3, 140, 600, 32, 40, DType::F32),
        (1, 1, 1, 5, 37, 4, 37, DType::F32),
    ];
    for (b, h, hkv, nq, nk, d, k, dtype) in cases {
        let p = Problem::new(b, h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_dtype(dtype);
        let (q, kk, v) = inputs(&p, 8);
        let args = AttnArgs::new(&p, q.as_ref(), kk.as_ref(), v.as_ref()).unwrap();
        let lin = Linformer::pooled(k).unwrap();
        assert_eq!(lin.effective_proj_dim(nk), k.min(nk));
        let got = lin.forward(&args, true).unwrap();
        let (want, want_lse) = pooled_f64(k, &args);
        let err = scaled_max_err(&got.out, &want);
        let lerr = lse_max_err(got.lse.as_ref().unwrap(), &want_lse);
        assert!(err < 1e-4 && lerr < 1e-3, "{p} k={k}: out err {err:.2e}, lse err {lerr:.2e}");
        if k >= nk {
            // One key per segment, ln 1 = 0: exact attention, LSE included.
            let (exact, exact_lse) = attention_f64(&args);
            let err = scaled_max_err(&got.out, &exact);
            let lerr = lse_max_err(got.lse.as_ref().unwrap(), &exact_lse);
            assert!(err < 2e-5 && lerr < 2e-5, "{p} k={k} ≥ N_k: out err {err:.2e}, lse err {lerr:.2e}");
        }
    }
}

#[test]
fn nan_in_q_stays_in_its_row() {
    let p = Problem::new(1, 2, 30, 8);
    let (q, k, v) = inputs(&p, 9);
    let mut qn = q.to_f32();
    qn[17 * 8 + 2] = f32::NAN; // head 0, row 17
    for lin in [Linformer::pooled(8).unwrap(), Linformer::new(8, 1).unwrap()] {
        let clean = lin.forward(&AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap(), false).unwrap().out;
        let dirty = lin.forward(&AttnArgs::new(&p, &qn, k.as_ref(), v.as_ref()).unwrap(), false).unwrap().out;
        for (r, (c, d)) in clean.chunks(8).zip(dirty.chunks(8)).enumerate() {
            if r == 17 {
                assert!(d.iter().any(|x| x.is_nan()), "{:?}", lin.projection());
            } else {
                assert!(c.iter().zip(d).all(|(x, y)| x.to_bits() == y.to_bits()), "row {r}");
            }
        }
    }
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let p = Problem::new(1, 1, 8, 8);
    let x = vec![0.5f32; p.q_len()];
    let args = AttnArgs::new(&p, &x, &x, &x).unwrap();
    let r = Linformer::new(1 << 40, 0).unwrap().forward(&args, false);
    assert!(matches!(r, Err(AttnError::MemoryBudget { .. })), "{:?}", r.map(|_| ()));
}

#[test]
fn bitwise_identical_across_thread_counts() {
    let p = Problem::new(2, 4, 300, 16).with_kv_heads(2).with_seq_k(700);
    let (q, k, v) = inputs(&p, 5);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let run = |threads| with_threads(threads, || Linformer::new(32, 3).unwrap().forward(&args, true).unwrap());
    let (a, b) = (run(1), run(3));
    assert_eq!(a.out, b.out);
    assert_eq!(a.lse, b.lse);
}

#[test]
fn nan_stays_in_its_head() {
    let p = Problem::new(1, 2, 20, 8);
    let (q, k, v) = inputs(&p, 6);
    let mut k = k.to_f32();
    k[3] = f32::NAN; // head 0
    let args = AttnArgs::new(&p, q.as_ref(), &k, v.as_ref()).unwrap();
    let out = Linformer::new(8, 1).unwrap().forward(&args, false).unwrap().out;
    let (h0, h1) = out.split_at(p.out_len() / 2);
    assert!(h0.iter().any(|x| x.is_nan()));
    assert!(h1.iter().all(|x| x.is_finite()));
}

/// The documented caveat: untrained Gaussian projections are far from softmax attention.
/// (The full measurement is in examples/approx_scaling.rs; this keeps the claim honest.)
#[test]
fn untrained_projections_do_not_approximate_softmax() {
    let p = Problem::new(1, 2, 512, 64);
    let (q, k, v) = inputs(&p, 7);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (exact, _) = attention_f64(&args);
    let got = Linformer::new(64, 0).unwrap().forward(&args, false).unwrap().out;
    let err = rel_err(&got, &exact);
    assert!(err > 1.0 && err.is_finite(), "relative error {err}: the docs claim it exceeds 1");
}

/// Used key lengths: with identity projections (the projected keys past an entry's used length
/// are reached by no used key and dropped) and with pooled k ≥ N_k (one key per segment),
/// linformer is exact attention over the used keys, so it must match the oracle with
/// `seqused_k`, including an entry with no used key (O = 0, LSE = −∞); with sinks too.
/// Tolerance as `identity_projections_reproduce_exact_attention` (2e-5).
#[test]
fn seqused_k_with_identity_or_one_key_segments_matches_the_oracle() {
    let (h, hkv, nq, nk, d) = (4, 2, 7, 31, 8);
    for (used, sinks) in [(vec![31, 12, 0], None), (vec![1, 30, 17], Some(vec![0.5, -1.0, 0.0, 2.0]))] {
        let mut p = Problem::new(used.len(), h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_seqused_k(used.clone());
        p.mods.sinks = sinks;
        let (q, k, v) = inputs(&p, 5);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (want, want_lse) = attention_f64(&args);
        let identity = Linformer::with_projections(vec![identity(nk)], None, nk, nk).unwrap();
        for lin in [identity, Linformer::pooled(64).unwrap()] {
            assert!(lin.supports(&p), "{:?}", lin.not_supported_reasons(&p));
            let got = lin.forward(&args, true).unwrap();
            let (err, lerr) = (scaled_max_err(&got.out, &want), lse_max_err(got.lse.as_ref().unwrap(), &want_lse));
            assert!(err < 2e-5 && lerr < 2e-5, "{p} {:?}: out err {err:.2e}, lse err {lerr:.2e}", lin.projection());
        }
    }
}

/// Dense Gaussian projections with used key lengths: E and F keep their first n columns, so an
/// entry's result is the same as supplying those columns for the entry cut to n keys.
#[test]
fn seqused_k_keeps_the_first_columns_of_dense_projections() {
    let (h, hkv, nq, nk, d, kp) = (2, 1, 6, 20, 8, 5);
    let used = [20usize, 9];
    let p = Problem::new(2, h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_seqused_k(used.to_vec());
    let lin = Linformer::new(kp, 3).unwrap();
    let (q, k, v) = inputs(&p, 8);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let got = lin.forward(&args, true).unwrap();
    let (e, f) = lin.projection_pair(nk, hkv, 0).unwrap();
    let (qf, kf, vf) = (q.as_ref().to_f32_cow(), k.as_ref().to_f32_cow(), v.as_ref().to_f32_cow());
    for (b, &n) in used.iter().enumerate() {
        let cols = |m: &[f32]| -> Vec<f32> { (0..kp).flat_map(|r| m[r * nk..r * nk + n].to_vec()).collect() };
        let cut_lin = Linformer::with_projections(vec![cols(&e)], Some(vec![cols(&f)]), kp, n).unwrap();
        let cut = Problem::new(1, h, nq, d).with_kv_heads(hkv).with_seq_k(n);
        let (ck, cv) = (kf[b * nk * d..][..n * d].to_vec(), vf[b * nk * d..][..n * d].to_vec());
        let rows = h * nq * d;
        let cut_args = AttnArgs::new(&cut, &qf[b * rows..(b + 1) * rows], &ck, &cv).unwrap();
        let want = cut_lin.forward(&cut_args, true).unwrap();
        let err =
            scaled_max_err(&got.out[b * rows..(b + 1) * rows], &want.out.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!(err < 1e-5, "entry {b} (n = {n}): {err:.2e}");
    }
}
