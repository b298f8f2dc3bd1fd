//! `nystrom`: agreement with an f64 evaluation of the Nyströmformer formula written from the
//! paper, the pseudo-inverse iteration's convergence, exactness with one landmark per token,
//! typed refusals, options, determinism and NaN reach.
//!
//! Tolerance: outputs within 2e-4 of the f64 formula relative to max(1, max|O|), LSE within 1e-4
//! nats. The backend computes the m×m part (Ã, Z, Z·B̃V) in f64 like the formula, but the
//! O(N·m·D) products in f32 (GEMMs over ≤ 600 keys); Z's entries (up to ~10² here) amplify that
//! f32 rounding of B̃V, hence 2e-4 rather than the 1e-4 of the other approximations.

mod approx_common;

use approx_common::{lse_max_err, randn, scaled_max_err, with_threads};
use attnkit::backends::nystrom::{DEFAULT_LANDMARKS, DEFAULT_PINV_ITERS, Nystrom, iterative_pinv};
use attnkit::backends::reference::attention_f64;
use attnkit::{Attention, AttnArgs, AttnError, BackendOptions, DType, Problem, Tensor, Window, backend_with};

fn inputs(p: &Problem, seed: u64) -> (Tensor, Tensor, Tensor) {
    let t = |s, n| Tensor::from_f32(&randn(seed * 3 + s, n, 1.0), p.dtype);
    (t(0, p.q_len()), t(1, p.kv_len()), t(2, p.kv_len()))
}

/// n×n f64 product.
fn mm(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|i| (0..n).map(|t| a[(i / n) * n + t] * b[t * n + i % n]).sum()).collect()
}

/// Row softmax of a rows×cols matrix, returning also each row's (max, Σ exp(x − max)).
fn softmax(s: &[f64], cols: usize) -> Vec<f64> {
    s.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = r.iter().map(|x| (x - m).exp()).sum();
            r.iter().map(move |x| (x - m).exp() / sum).collect::<Vec<_>>()
        })
        .collect()
}

/// Nyströmformer in f64 from the paper: landmarks are the means of m segments
/// [⌊r·N/m⌋, ⌊(r+1)·N/m⌋) (m clamped to min(N_q, N_k)); O = F̃·Z·(B̃·V) with the dense m×N_k
/// B̃ and N_q×m F̃; Z from Z₀ = Ãᵀ/(‖Ã‖₁‖Ã‖_∞) and Z ← ¼Z(13I − ÃZ(15I − ÃZ(7I − ÃZ))).
/// LSE = ln Σ_r |segment r|·exp(s·q·k̃_r). Returns (O, LSE).
fn nystrom_f64(m: usize, iters: usize, args: &AttnArgs<'_>) -> (Vec<f64>, Vec<f64>) {
    let p = args.problem();
    let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
    let m = m.min(nq).min(nk);
    let s = p.scale as f64;
    let (mut out, mut lse) = (vec![0.0; p.out_len()], vec![0.0; p.lse_len()]);
    for bh in 0..p.batch * p.heads {
        let q_base = bh * nq * d;
        let kv_base = ((bh / p.heads) * p.kv_heads + p.kv_head_of(bh % p.heads)) * nk * d;
        let row = |t: attnkit::TensorRef<'_>, base: usize, j: usize| -> Vec<f64> {
            (0..d).map(|c| t.get_f32(base + j * d + c) as f64).collect()
        };
        let q: Vec<Vec<f64>> = (0..nq).map(|i| row(args.q(), q_base, i)).collect();
        let k: Vec<Vec<f64>> = (0..nk).map(|j| row(args.k(), kv_base, j)).collect();
        let v: Vec<Vec<f64>> = (0..nk).map(|j| row(args.v(), kv_base, j)).collect();
        let seg = |r: usize, n: usize| (r * n / m, (r + 1) * n / m);
        let means = |x: &[Vec<f64>], n: usize| -> Vec<Vec<f64>> {
            (0..m)
                .map(|r| {
                    let (lo, hi) = seg(r, n);
                    (0..d).map(|c| (lo..hi).map(|j| x[j][c]).sum::<f64>() / (hi - lo) as f64).collect()
                })
                .collect()
        };
        let (ql, kl) = (means(&q, nq), means(&k, nk));
        let dot = |a: &[f64], b: &[f64]| s * a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let scores = |xs: &[Vec<f64>], ys: &[Vec<f64>]| -> Vec<f64> {
            xs.iter().flat_map(|x| ys.iter().map(|y| dot(x, y)).collect::<Vec<_>>()).collect()
        };
        let a = softmax(&scores(&ql, &kl), m);
        let f = softmax(&scores(&q, &kl), m);
        let b = softmax(&scores(&ql, &k), nk);
        // Z by the paper's iteration.
        let norm1 = (0..m).map(|c| (0..m).map(|r| a[r * m + c].abs()).sum::<f64>()).fold(0.0, f64::max);
        let norm_inf = a.chunks(m).map(|r| r.iter().map(|x| x.abs()).sum::<f64>()).fold(0.0, f64::max);
        let mut z: Vec<f64> = (0..m * m).map(|i| a[(i % m) * m + i / m] / (norm1 * norm_inf)).collect();
        let eye = |c: f64, x: &[f64]| -> Vec<f64> {
            (0..m * m).map(|i| if i / m == i % m { c } else { 0.0 } - x[i]).collect()
        };
        for _ in 0..iters {
            let az = mm(&a, &z, m);
            let inner = eye(15.0, &mm(&az, &eye(7.0, &az), m));
            z = mm(&z, &eye(13.0, &mm(&az, &inner, m)), m).iter().map(|x| 0.25 * x).collect();
        }
        // O = F̃·Z·(B̃·V).
        let bv: Vec<f64> = (0..m * d).map(|i| (0..nk).map(|j| b[(i / d) * nk + j] * v[j][i % d]).sum()).collect();
        let w: Vec<f64> = (0..m * d).map(|i| (0..m).map(|r| z[(i / d) * m + r] * bv[r * d + i % d]).sum()).collect();
        for i in 0..nq {
            for c in 0..d {
                out[(q_base + i * d) + c] = (0..m).map(|r| f[i * m + r] * w[r * d + c]).sum();
            }
            let sc: Vec<f64> = kl.iter().map(|y| dot(&q[i], y)).collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..m).map(|r| (seg(r, nk).1 - seg(r, nk).0) as f64 * (sc[r] - mx).exp()).sum();
            lse[bh * nq + i] = mx + sum.ln();
        }
    }
    (out, lse)
}

#[test]
fn matches_the_paper_formula_in_f64() {
    // (B, H, H_kv, N_q, N_k, D, m, dtype, scale): divisible and ragged segments, m > N (clamped),
    // N_q ≠ N_k both ways, GQA/MQA, key blocks (N_k > 512), all dtypes.
    let cases = [
        (1, 2, 2, 64, 64, 16, 8, DType::F32, None),
        (2, 4, 2, 40, 70, 8, 16, DType::F16, None),
        (1, 4, 1, 17, 9, 8, 24, DType::BF16, Some(0.2)),
        (1, 2, 2, 130, 600, 32, 12, DType::F32, None),
        (1, 1, 1, 300, 45, 16, 64, DType::F32, Some(0.05)),
    ];
    for (b, h, hkv, nq, nk, d, m, dtype, scale) in cases {
        let mut p = Problem::new(b, h, nq, d).with_kv_heads(hkv).with_seq_k(nk).with_dtype(dtype);
        if let Some(s) = scale {
            p = p.with_scale(s);
        }
        let (q, k, v) = inputs(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let ny = Nystrom::new(m).unwrap();
        assert_eq!(ny.effective_landmarks(&p), m.min(nq).min(nk));
        let got = ny.forward(&args, true).unwrap();
        let (want, want_lse) = nystrom_f64(m, DEFAULT_PINV_ITERS, &args);
        let err = scaled_max_err(&got.out, &want);
        let lerr = lse_max_err(got.lse.as_ref().unwrap(), &want_lse);
        assert!(err < 2e-4 && lerr < 1e-4, "{p} m={m}: out err {err:.2e}, lse err {lerr:.2e}");
    }
}

#[test]
fn pinv_iteration_converges_to_the_moore_penrose_inverse() {
    let m = 12;
    // A softmax matrix (row-stochastic, like Ã) from seeded scores, and a rank-deficient one
    // (duplicated rows, as when two landmarks coincide).
    let s: Vec<f64> = randn(5, m * m, 1.0).iter().map(|&x| x as f64).collect();
    let a = softmax(&s, m);
    let mut singular = a.clone();
    let (r0, r1) = singular.split_at_mut(m);
    r1[..m].copy_from_slice(r0);
    // Penrose conditions AZA = A and ZAZ = Z. For the singular matrix only the first: the
    // iteration multiplies rounding errors in A's null space by 13/4 per step, so after 40
    // steps ZAZ = Z fails in floating point (harmless at the paper's 6: 3.25⁶ ≈ 1.2e3).
    for (a, what, both) in [(a, "full rank", true), (singular, "rank-deficient", false)] {
        let z = iterative_pinv(&a, m, 40).unwrap();
        let aza = mm(&mm(&a, &z, m), &a, m);
        let zaz = mm(&mm(&z, &a, m), &z, m);
        let zmax = z.iter().fold(1.0f64, |x, y| x.max(y.abs()));
        let e1 = aza.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        let e2 = zaz.iter().zip(&z).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / zmax;
        assert!(e1 < 1e-9 && (!both || e2 < 1e-9), "{what}: AZA−A {e1:.2e}, ZAZ−Z {e2:.2e}");
    }
}

#[test]
fn one_landmark_per_token_is_exact_once_the_inverse_converges() {
    // m = N: Ã = F̃ = B̃ = the attention matrix A, so O = A·A⁺·A·V = A·V.
    let p = Problem::new(1, 2, 24, 16);
    let (q, k, v) = inputs(&p, 2);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (exact, exact_lse) = attention_f64(&args);
    let got = Nystrom::new(24).unwrap().with_pinv_iters(60).forward(&args, true).unwrap();
    let err = scaled_max_err(&got.out, &exact);
    let lerr = lse_max_err(got.lse.as_ref().unwrap(), &exact_lse);
    assert!(err < 1e-4 && lerr < 1e-5, "out err {err:.2e}, lse err {lerr:.2e}");
}

#[test]
fn masks_are_refused_with_the_reason() {
    let ny = Nystrom::new(8).unwrap();
    let p = Problem::new(1, 1, 16, 8);
    let (q, k, v) = inputs(&p, 3);
    for (problem, needle) in [
        (p.clone().with_causal(true), "causal"),
        (p.clone().with_window(Window::new(4, 4)), "sliding window"),
        (p.clone().with_causal(true).with_window(Window::new(100, -1)), "sliding window"),
    ] {
        let args = AttnArgs::new(&problem, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        match ny.forward(&args, false) {
            Err(AttnError::Unsupported { backend, reasons }) => {
                assert_eq!(backend, "nystrom");
                assert!(reasons.iter().any(|r| r.contains(needle)), "{reasons:?}");
            }
            other => panic!("{problem}: expected Unsupported, got {other:?}"),
        }
    }
    assert!(ny.supports(&p));
}

#[test]
fn registry_honours_landmarks() {
    let p = Problem::new(1, 2, 40, 16);
    let (q, k, v) = inputs(&p, 4);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let opts = |landmarks| BackendOptions { landmarks, proj_dim: Some(3), ..Default::default() };
    let a = backend_with("nystrom", &opts(Some(8))).unwrap().forward(&args, false).unwrap().out;
    assert_eq!(a, Nystrom::new(8).unwrap().forward(&args, false).unwrap().out);
    let b = backend_with("nystrom", &opts(Some(5))).unwrap().forward(&args, false).unwrap().out;
    assert_ne!(a, b);
    assert_eq!(Nystrom::from_options(&opts(None)).unwrap().landmarks(), DEFAULT_LANDMARKS);
    assert!(matches!(backend_with("nystrom", &opts(Some(0))), Err(AttnError::InvalidArgument(_))));
}

#[test]
fn bitwise_identical_across_thread_counts() {
    let p = Problem::new(2, 4, 300, 16).with_kv_heads(2).with_seq_k(700);
    let (q, k, v) = inputs(&p, 5);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let run = |threads| with_threads(threads, || Nystrom::new(32).unwrap().forward(&args, true).unwrap());
    let (a, b) = (run(1), run(3));
    assert_eq!(a.out, b.out);
    assert_eq!(a.lse, b.lse);
}

#[test]
fn nan_in_q_reaches_its_head_only() {
    // The query landmarks mix a head's queries, so the whole head is reached (documented).
    let p = Problem::new(1, 2, 20, 8);
    let (q, k, v) = inputs(&p, 6);
    let mut qn = q.to_f32();
    qn[3 * 8] = f32::NAN; // head 0, row 3
    let ny = Nystrom::new(4).unwrap();
    let clean = ny.forward(&AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap(), false).unwrap().out;
    let dirty = ny.forward(&AttnArgs::new(&p, &qn, k.as_ref(), v.as_ref()).unwrap(), false).unwrap().out;
    let half = p.out_len() / 2;
    assert!(dirty[3 * 8..4 * 8].iter().all(|x| x.is_nan()));
    assert!(clean[half..].iter().zip(&dirty[half..]).all(|(x, y)| x.to_bits() == y.to_bits()));
}
