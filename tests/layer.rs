//! `MultiHeadAttention`: agreement with a dense f64 evaluation of
//! Concat(head_1 … head_H)·W_O, head_i = softmax-attention(X_q W_Q,i, X_kv W_K,g(i), X_kv W_V,g(i)),
//! plus weight/shape validation and backend plumbing.
//!
//! Tolerance: 1e-4 relative to max(1, max|Y|) for exact backends (f32 GEMMs of width ≤ 64).

mod approx_common;

use approx_common::{randn, scaled_max_err};
use attnkit::backends::linformer::Linformer;
use attnkit::layer::{MhaConfig, MhaWeights, MultiHeadAttention};
use attnkit::{AttnError, Window, backend};

/// The layer in f64, written out from the formula with exact masked softmax.
#[allow(clippy::needless_range_loop)] // index loops mirror the formula
fn dense_f64(cfg: &MhaConfig, w: &MhaWeights, xq: &[f32], xkv: &[f32], b: usize, nq: usize, nk: usize) -> Vec<f64> {
    let (h, hkv, dh, dm, dkv) = (cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.d_model, cfg.d_kv);
    let p = cfg.problem(b, nq, nk);
    // x (rows×d_in) · W[:, col0..col0+dh] (W has `width` columns).
    let proj = |x: &[f32], wm: &[f32], d_in: usize, width: usize, row: usize, col0: usize| -> Vec<f64> {
        (0..dh).map(|c| (0..d_in).map(|t| x[row * d_in + t] as f64 * wm[t * width + col0 + c] as f64).sum()).collect()
    };
    let mut y = vec![0.0; b * nq * dm];
    for bi in 0..b {
        let mut concat = vec![vec![0.0f64; h * dh]; nq];
        for hi in 0..h {
            let g = p.kv_head_of(hi);
            let ks: Vec<Vec<f64>> = (0..nk).map(|j| proj(xkv, &w.w_k, dkv, hkv * dh, bi * nk + j, g * dh)).collect();
            let vs: Vec<Vec<f64>> = (0..nk).map(|j| proj(xkv, &w.w_v, dkv, hkv * dh, bi * nk + j, g * dh)).collect();
            for i in 0..nq {
                let q = proj(xq, &w.w_q, dm, h * dh, bi * nq + i, hi * dh);
                let (lo, hi_k) = p.key_range(i);
                let s: Vec<f64> = (lo..hi_k)
                    .map(|j| q.iter().zip(&ks[j]).map(|(a, b)| a * b).sum::<f64>() * p.scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (wj, j) in e.iter().zip(lo..hi_k) {
                    for c in 0..dh {
                        concat[i][hi * dh + c] += wj / sum * vs[j][c];
                    }
                }
            }
        }
        for i in 0..nq {
            for o in 0..dm {
                y[(bi * nq + i) * dm + o] = (0..h * dh).map(|t| concat[i][t] * w.w_o[t * dm + o] as f64).sum();
            }
        }
    }
    y
}

#[test]
fn matches_dense_f64() {
    // (config, B, N_q, N_k); self-attention when N_q = N_k and d_kv = d_model.
    let cases = [
        (MhaConfig::new(32, 4).unwrap(), 2, 19, 19),
        (MhaConfig::new(32, 4).unwrap().with_causal(true), 1, 23, 23),
        (MhaConfig::new(24, 4).unwrap().with_kv_heads(2).with_window(Window::new(3, 2)), 2, 17, 17),
        (MhaConfig::new(16, 2).unwrap().with_d_kv(12), 2, 9, 30),
        (MhaConfig::new(20, 4).unwrap().with_kv_heads(1).with_head_dim(7).with_d_kv(9).with_causal(true), 1, 12, 5),
    ];
    for (i, (cfg, b, nq, nk)) in cases.into_iter().enumerate() {
        let xq = randn(10 + i as u64, b * nq * cfg.d_model, 1.0);
        let xkv = randn(20 + i as u64, b * nk * cfg.d_kv, 1.0);
        for name in ["reference", "sdpa"] {
            let layer = MultiHeadAttention::new(cfg.clone(), backend(name).unwrap(), 7).unwrap();
            let self_attn = nq == nk && cfg.d_kv == cfg.d_model;
            let (y, kv) = if self_attn {
                (layer.forward(&xq, b, nq).unwrap(), &xq)
            } else {
                (layer.forward_cross(&xq, &xkv, b, nq, nk).unwrap(), &xkv)
            };
            let want = dense_f64(&cfg, layer.weights(), &xq, kv, b, nq, nk);
            let err = scaled_max_err(&y, &want);
            assert!(err < 1e-4, "case {i} {cfg:?} via {name}: err {err:.2e}");
        }
    }
}

#[test]
fn supplied_weights_are_used_and_validated() {
    let cfg = MhaConfig::new(8, 2).unwrap().with_kv_heads(1);
    let w = MhaWeights {
        w_q: randn(1, 8 * 8, 0.3),
        w_k: randn(2, 8 * 4, 0.3),
        w_v: randn(3, 8 * 4, 0.3),
        w_o: randn(4, 8 * 8, 0.3),
    };
    let layer = MultiHeadAttention::with_weights(cfg.clone(), w.clone(), backend("sdpa").unwrap()).unwrap();
    assert_eq!(layer.weights(), &w);
    let x = randn(5, 2 * 6 * 8, 1.0);
    let err = scaled_max_err(&layer.forward(&x, 2, 6).unwrap(), &dense_f64(&cfg, &w, &x, &x, 2, 6, 6));
    assert!(err < 1e-4, "err {err:.2e}");

    let bad_k = MhaWeights { w_k: vec![0.0; 8 * 8], ..w.clone() };
    match MultiHeadAttention::with_weights(cfg.clone(), bad_k, backend("sdpa").unwrap()) {
        Err(AttnError::Shape(msg)) => assert!(msg.contains("w_k") && msg.contains("8×4"), "{msg}"),
        other => panic!("expected a Shape error, got {:?}", other.map(|_| ())),
    }
    let nan_o = MhaWeights { w_o: vec![f32::NAN; 64], ..w.clone() };
    let r = MultiHeadAttention::with_weights(cfg.clone(), nan_o, backend("sdpa").unwrap());
    assert!(matches!(r, Err(AttnError::InvalidArgument(_))));
    assert!(matches!(MhaConfig::new(10, 4), Err(AttnError::Shape(_))));
    let r = MultiHeadAttention::new(MhaConfig::new(12, 3).unwrap().with_kv_heads(2), backend("sdpa").unwrap(), 0);
    assert!(matches!(r, Err(AttnError::Shape(_))));
}

#[test]
fn input_shape_errors_are_typed() {
    let layer = MultiHeadAttention::new(MhaConfig::new(8, 2).unwrap(), backend("sdpa").unwrap(), 1).unwrap();
    assert!(matches!(layer.forward(&[0.0; 15], 1, 2), Err(AttnError::Shape(_))));
    assert!(matches!(layer.forward_cross(&[0.0; 16], &[0.0; 20], 1, 2, 3), Err(AttnError::Shape(_))));
    assert!(matches!(layer.forward(&[], 0, 2), Err(AttnError::Shape(_))));
    let cross =
        MultiHeadAttention::new(MhaConfig::new(8, 2).unwrap().with_d_kv(4), backend("sdpa").unwrap(), 1).unwrap();
    assert!(matches!(cross.forward(&[0.0; 16], 1, 2), Err(AttnError::Shape(_))));
    assert!(cross.forward_cross(&[0.0; 16], &[0.0; 12], 1, 2, 3).is_ok());
}

#[test]
fn seeded_init_is_deterministic_and_xavier_bounded() {
    let cfg = MhaConfig::new(32, 4).unwrap().with_kv_heads(2);
    let a = MultiHeadAttention::new(cfg.clone(), backend("sdpa").unwrap(), 3).unwrap();
    let b = MultiHeadAttention::new(cfg.clone(), backend("reference").unwrap(), 3).unwrap();
    let c = MultiHeadAttention::new(cfg.clone(), backend("sdpa").unwrap(), 4).unwrap();
    assert_eq!(a.weights(), b.weights());
    assert_ne!(a.weights(), c.weights());
    let w = a.weights();
    for (m, rows, cols) in [(&w.w_q, 32, 32), (&w.w_k, 32, 16), (&w.w_v, 32, 16), (&w.w_o, 32, 32)] {
        let bound = (6.0f32 / (rows + cols) as f32).sqrt();
        assert_eq!(m.len(), rows * cols);
        assert!(m.iter().all(|x| x.abs() <= bound));
        // Uniform on ±bound has variance bound²/3.
        let var = m.iter().map(|x| x * x).sum::<f32>() / m.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.15, "var {var}");
    }
    assert_ne!(w.w_k, w.w_v);
}

#[test]
fn takes_any_backend() {
    let (b, n, dm) = (1, 24, 16);
    let cfg = MhaConfig::new(dm, 2).unwrap();
    let x = randn(9, b * n * dm, 1.0);
    // Linformer with E = F = I (k = N) is exact, so the layer must match the dense formula.
    let id: Vec<f32> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    let lin = Linformer::with_projections(vec![id], None, n, n).unwrap();
    let layer = MultiHeadAttention::new(cfg.clone(), Box::new(lin), 2).unwrap();
    let err = scaled_max_err(&layer.forward(&x, b, n).unwrap(), &dense_f64(&cfg, layer.weights(), &x, &x, b, n, n));
    assert!(err < 1e-4, "identity linformer layer: err {err:.2e}");
    // Approximate backends run; a backend's refusal surfaces as its typed error.
    let perf = MultiHeadAttention::new(cfg.clone().with_causal(true), backend("performer").unwrap(), 2).unwrap();
    let y = perf.forward(&x, b, n).unwrap();
    assert!(y.len() == b * n * dm && y.iter().all(|v| v.is_finite()));
    assert_eq!(perf.backend().name(), "performer");
    let causal_lin = MultiHeadAttention::new(cfg.with_causal(true), backend("linformer").unwrap(), 2).unwrap();
    assert!(matches!(causal_lin.forward(&x, b, n), Err(AttnError::Unsupported { .. })));
}
