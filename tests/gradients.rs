//! The backward pass: the f64 oracle against central finite differences (every modifier), every
//! backend with a backward against the oracle under the gradient tolerance rule
//! (`attnkit::validate::gradient_tolerance`), bitwise determinism across thread counts, the
//! NaN policy, and refusals.

mod common;

use attnkit::attention::PairOwned;
use attnkit::backends::reference::attention_f64;
use attnkit::grad::oracle::gradients_f64;
use attnkit::validate::{compare, gradient_tolerance};
use attnkit::{Attention, AttnArgs, AttnError, DType, Problem, Tensor, Window, alibi_slopes, backend};
use common::{qkv, randn};

/// One problem with its bias/mask data.
struct Setup {
    label: String,
    p: Problem,
    pair: PairOwned,
}

fn bools(n: usize, seed: u64, keep: f32) -> Vec<bool> {
    attnkit::seeded::normal_values(n, seed).iter().map(|x| (x * 0.5 + 0.5).fract().abs() < keep).collect()
}

/// Every modifier on `base`, alone and combined (bias/mask shapes broadcast in both ways).
fn setups(base: &Problem, seed: u64) -> Vec<Setup> {
    let (b, h, nq, nk) = (base.batch, base.heads, base.seq_q, base.seq_k);
    let mk = |label: &str, p: Problem| Setup { label: label.into(), p, pair: PairOwned::default() };
    let mut v = vec![
        mk("plain", base.clone()),
        mk("causal", base.clone().with_causal(true)),
        mk("window", base.clone().with_window(Window::new(3, 1))),
        mk("alibi", base.clone().with_causal(true).with_alibi(alibi_slopes(h))),
        mk("softcap", base.clone().with_softcap(1.5)),
        mk("sinks", base.clone().with_sinks(attnkit::seeded::normal_values(h, seed + 1))),
        mk("seqused_k", base.clone().with_seqused_k((0..b).map(|i| (nk * (i + 1) / (b + 1)).max(1)).collect())),
    ];
    let mut bias = mk("bias_1H", base.clone().with_bias(1, h));
    bias.pair.bias = Some(randn(nq * nk * h, seed + 2, DType::F32));
    v.push(bias);
    let mut mask = mk("mask_BH", base.clone().with_mask(b, h));
    mask.pair.mask = Some(bools(b * h * nq * nk, seed + 3, 0.7));
    v.push(mask);
    let mut all = mk(
        "all",
        base.clone()
            .with_causal(true)
            .with_alibi(alibi_slopes(h))
            .with_softcap(3.0)
            .with_sinks(vec![0.5; h])
            .with_bias(b, 1)
            .with_mask(1, h),
    );
    all.pair.bias = Some(randn(b * nq * nk, seed + 4, DType::F32));
    all.pair.mask = Some(bools(h * nq * nk, seed + 5, 0.5));
    v.push(all);
    if b == 1 && nq >= 6 && nk >= 6 {
        let (cq, ck) = (vec![0, 2, 2, nq], vec![0, 3, 4, nk]);
        v.push(mk("varlen_causal", base.clone().with_varlen(cq, ck).with_causal(true)));
    }
    v
}

/// Values on a 2⁻¹² grid, so a ±2⁻¹⁰ step is exact in f32 and the oracle sees exactly it.
fn grid(len: usize, seed: u64, amp: f32) -> Vec<f32> {
    attnkit::seeded::normal_values(len, seed).iter().map(|x| (x * amp * 4096.0).round() / 4096.0).collect()
}

/// Σ dO·O in f64 for the given inputs.
fn loss(
    p: &Problem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    mask: Option<&[bool]>,
    d_out: &[f32],
) -> f64 {
    let pair = attnkit::PairData { bias: bias.map(|b| b.into()), mask };
    let args = AttnArgs::new_with(p, q, k, v, pair).unwrap();
    attention_f64(&args).0.iter().zip(d_out).map(|(o, g)| o * *g as f64).sum()
}

/// The oracle's gradients equal central finite differences of the f64 forward, for every
/// modifier (dQ, dK, dV, dσ and dB), on small shapes with GQA.
#[test]
fn oracle_matches_central_finite_differences() {
    const H: f32 = 1.0 / 1024.0;
    let mut checked = 0usize;
    for base in [Problem::new(1, 2, 7, 4).with_kv_heads(1).with_seq_k(8), Problem::new(2, 2, 5, 3).with_seq_k(5)] {
        for s in setups(&base, 11) {
            let p = &s.p;
            let (mut q, mut k, mut v) = (grid(p.q_len(), 1, 0.8), grid(p.kv_len(), 2, 0.8), grid(p.kv_len(), 3, 1.0));
            let mut bias = s
                .pair
                .bias
                .as_ref()
                .map(|b| b.to_f32().iter().map(|x| (x * 4096.0).round() / 4096.0).collect::<Vec<f32>>());
            let mask = s.pair.mask.as_deref();
            let d_out = grid(p.out_len(), 4, 1.0);
            let pair = attnkit::PairData { bias: bias.as_deref().map(|b| b.into()), mask };
            let args = AttnArgs::new_with(p, &q, &k, &v, pair).unwrap();
            let g = gradients_f64(&args, &d_out, true);
            let mut worst = 0.0f64;
            let mut check = |name: &str, analytic: f64, fd: f64| {
                let err = (analytic - fd).abs() / analytic.abs().max(1.0);
                worst = worst.max(err);
                assert!(err < 2e-5, "{} {name}: analytic {analytic} vs finite difference {fd}", s.label);
            };
            // Each input in turn: q, k, v, then the bias (if any).
            for which in 0..4 {
                let n = [q.len(), k.len(), v.len(), bias.as_ref().map_or(0, |b| b.len())][which];
                for e in 0..n {
                    let fd = {
                        let mut at = |delta: f32| {
                            let buf = match which {
                                0 => &mut q,
                                1 => &mut k,
                                2 => &mut v,
                                _ => bias.as_mut().unwrap(),
                            };
                            buf[e] += delta;
                            let l = loss(p, &q, &k, &v, bias.as_deref(), mask, &d_out);
                            let buf = match which {
                                0 => &mut q,
                                1 => &mut k,
                                2 => &mut v,
                                _ => bias.as_mut().unwrap(),
                            };
                            buf[e] -= delta;
                            l
                        };
                        (at(H) - at(-H)) / (2.0 * H as f64)
                    };
                    let analytic = match which {
                        0 => g.dq[e],
                        1 => g.dk[e],
                        2 => g.dv[e],
                        _ => g.dbias.as_ref().unwrap()[e],
                    };
                    check(["dq", "dk", "dv", "dbias"][which], analytic, fd);
                    checked += 1;
                }
            }
            if let Some(sinks) = &p.mods.sinks {
                for h in 0..sinks.len() {
                    let at = |delta: f32| {
                        let mut s2 = sinks.clone();
                        s2[h] += delta;
                        let p2 = p.clone().with_sinks(s2);
                        loss(&p2, &q, &k, &v, bias.as_deref(), mask, &d_out)
                    };
                    let fd = (at(H) - at(-H)) / (2.0 * H as f64);
                    check("dsinks", g.dsinks.as_ref().unwrap()[h], fd);
                    checked += 1;
                }
            }
            println!("{} {}: worst relative gap to finite differences {worst:.2e}", s.label, p);
        }
    }
    assert!(checked > 3000, "only {checked} gradient elements checked");
}

/// Runs each backend's forward and backward on `s` in `dtype` against one oracle; returns the
/// failures, or counts the (backend, problem) pairs checked. Unsupported backends are skipped.
fn check_backends(names: &[&str], s: &Setup, dtype: DType, seed: u64, checked: &mut usize) -> Vec<String> {
    let p = s.p.clone().with_dtype(dtype);
    let (q, k, v) = qkv(&p, seed);
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), s.pair.as_pair()).unwrap();
    let d_out = randn(p.out_len(), seed + 100, DType::F32).to_f32();
    let want_db = p.mods.bias.is_some();
    let mut failures = Vec::new();
    let mut oracle_tol = None;
    for &name in names {
        let b = backend(name).unwrap();
        if !b.supports(&p) || !b.supports_backward(&p) {
            continue;
        }
        let run = || -> Result<attnkit::Grads, AttnError> {
            let fwd = b.forward(&args, true)?;
            b.backward(&args, &fwd.out, fwd.lse.as_ref().unwrap(), &d_out, want_db)
        };
        let got = match run() {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name} {} {dtype}: {e}", s.label));
                continue;
            }
        };
        *checked += 1;
        let (oracle, tol) = oracle_tol.get_or_insert_with(|| {
            let o = gradients_f64(&args, &d_out, want_db);
            let t = gradient_tolerance(&args, &d_out, &o);
            (o, t)
        });
        let mut judge = |what: &str, got: &[f32], want: &[f64], bound: f64| {
            let st = compare(got, want);
            if !st.within(bound) {
                failures.push(format!(
                    "{name} {} {dtype} {what}: max|err| {:.3e} > bound {bound:.3e} (non-finite {})",
                    s.label, st.max_abs, st.non_finite
                ));
            }
        };
        judge("dq", &got.dq, &oracle.dq, tol.dq.bound);
        judge("dk", &got.dk, &oracle.dk, tol.dk.bound);
        judge("dv", &got.dv, &oracle.dv, tol.dv.bound);
        if let (Some(g), Some(o), Some(t)) = (&got.dsinks, &oracle.dsinks, tol.dsinks) {
            judge("dsinks", g, o, t.bound);
        }
        if let (Some(g), Some(o)) = (&got.dbias, &oracle.dbias) {
            // Every dB element is one dS, so its error is that of one f32 dS (a few roundings of
            // P and dP), not a sum's: 64 units of f32 roundoff of the largest |dS|.
            let max_ref = o.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            judge("dbias", g, o, 64.0 * f32::EPSILON as f64 * max_ref.max(1e-3) + 1e-6);
        }
    }
    failures
}

/// `flash-cpu`, `sdpa`, `local` and `auto` against the oracle: the shape table in three dtypes,
/// and every modifier on a GQA shape with several key tiles.
#[test]
fn backends_match_the_oracle_under_the_gradient_rule() {
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for case in common::shape_table() {
        let s = Setup { label: case.name.into(), p: case.problem.clone(), pair: PairOwned::default() };
        for dtype in DType::ALL {
            failures.extend(check_backends(&["flash-cpu", "sdpa", "local"], &s, dtype, 5, &mut checked));
        }
    }
    let base = Problem::new(1, 4, 150, 64).with_kv_heads(2).with_seq_k(300);
    for s in setups(&base, 3) {
        failures.extend(check_backends(&["flash-cpu", "sdpa", "auto"], &s, DType::F32, 5, &mut checked));
        failures.extend(check_backends(&["flash-cpu"], &s, DType::BF16, 5, &mut checked));
        let windowed = Setup {
            label: format!("{}+window", s.label),
            p: s.p.clone().with_window(Window::new(20, 5)),
            pair: s.pair.clone(),
        };
        failures.extend(check_backends(&["local"], &windowed, DType::F32, 5, &mut checked));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(checked >= 120, "only {checked} (backend, problem) pairs checked");
}

/// `local-block` computes its own block pattern, so its gradients are checked against the
/// oracle of the same problem with that pattern as a boolean mask.
#[test]
fn local_block_matches_the_oracle_of_its_pattern() {
    use attnkit::backends::local_block::LocalBlock;
    let lb = LocalBlock::new(32).unwrap();
    for p in
        [Problem::new(1, 4, 150, 64).with_kv_heads(2).with_seq_k(200), Problem::new(2, 2, 100, 32).with_causal(true)]
    {
        let (q, k, v) = qkv(&p, 6);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let fwd = lb.forward(&args, true).unwrap();
        let d_out = randn(p.out_len(), 7, DType::F32).to_f32();
        let got = lb.backward(&args, &fwd.out, fwd.lse.as_ref().unwrap(), &d_out, false).unwrap();
        let mut mask = vec![false; p.seq_q * p.seq_k];
        for i in 0..p.seq_q {
            let (lo, hi) = lb.key_range(&p, i);
            mask[i * p.seq_k + lo..i * p.seq_k + hi].fill(true);
        }
        let pm = p.clone().with_mask(1, 1);
        let pair = attnkit::PairData { bias: None, mask: Some(&mask) };
        let margs = AttnArgs::new_with(&pm, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap();
        let oracle = gradients_f64(&margs, &d_out, false);
        let tol = gradient_tolerance(&margs, &d_out, &oracle);
        for (what, g, o, t) in [
            ("dq", &got.dq, &oracle.dq, tol.dq),
            ("dk", &got.dk, &oracle.dk, tol.dk),
            ("dv", &got.dv, &oracle.dv, tol.dv),
        ] {
            let st = compare(g, o);
            assert!(st.within(t.bound), "local-block {p} {what}: {:.3e} > {:.3e}", st.max_abs, t.bound);
        }
    }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// Bitwise identical gradients at 1, 2 and 8 threads (several key chunks, so the dQ buffers are
/// reduced in chunk order).
#[test]
fn backward_is_bitwise_deterministic_across_thread_counts() {
    for p in [
        Problem::new(1, 4, 700, 64).with_kv_heads(2).with_causal(true),
        Problem::new(2, 2, 300, 40).with_seq_k(520).with_dtype(DType::BF16).with_sinks(vec![0.1, -0.2]),
    ] {
        let (q, k, v) = qkv(&p, 8);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let d_out = randn(p.out_len(), 9, DType::F32).to_f32();
        for name in ["flash-cpu", "sdpa"] {
            let b = backend(name).unwrap();
            let fwd = b.forward(&args, true).unwrap();
            let lse = fwd.lse.unwrap();
            let first = in_pool(1, || b.backward(&args, &fwd.out, &lse, &d_out, false).unwrap());
            for threads in [2, 8] {
                let again = in_pool(threads, || b.backward(&args, &fwd.out, &lse, &d_out, false).unwrap());
                let bits = |g: &attnkit::Grads| {
                    g.dq.iter()
                        .chain(&g.dk)
                        .chain(&g.dv)
                        .chain(g.dsinks.iter().flatten())
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&first), bits(&again), "{name} at {threads} threads differs from 1 thread for {p}");
            }
        }
    }
}

/// A NaN in q, k, v or dO reaches exactly the gradient elements the oracle's gradient (which
/// never touches a masked pair) makes non-finite, for band- and mask-dropped pairs, through each
/// backend's own forward and backward.
#[test]
fn a_nan_reaches_only_the_gradients_it_can_reach() {
    let mut checked = 0;
    let band =
        Problem::new(1, 4, 90, 32).with_kv_heads(2).with_seq_k(200).with_causal(true).with_window(Window::new(40, 0));
    let mut masked = band.clone().with_mask(1, 1);
    masked.window = Window::UNBOUNDED;
    let mask = bools(90 * 200, 4, 0.5);
    for (p, mask) in [(band, None), (masked, Some(mask))] {
        for (which, at) in [("q", 3 * 90 + 17), ("k", 150), ("v", 200 + 130), ("v", 60), ("dO", 95)] {
            let (q, k, v) = qkv(&p, 2);
            let (mut q, mut k, mut v) = (q.to_f32(), k.to_f32(), v.to_f32());
            let mut d_out = randn(p.out_len(), 3, DType::F32).to_f32();
            let d = p.head_dim;
            match which {
                "q" => q[at * d + 1] = f32::NAN,
                "k" => k[at * d] = f32::NAN,
                "v" => v[at * d + 2] = f32::NAN,
                _ => d_out[at * d] = f32::NAN,
            }
            let pair = attnkit::PairData { bias: None, mask: mask.as_deref() };
            let args = AttnArgs::new_with(&p, &q, &k, &v, pair).unwrap();
            let oracle = gradients_f64(&args, &d_out, false);
            for name in ["flash-cpu", "sdpa"] {
                // The backend's own forward (whose NaN stays in its band too) feeds the backward.
                let b = backend(name).unwrap();
                let fwd = b.forward(&args, true).unwrap();
                let g = b.backward(&args, &fwd.out, fwd.lse.as_ref().unwrap(), &d_out, false).unwrap();
                for (what, got, want) in
                    [("dq", &g.dq, &oracle.dq), ("dk", &g.dk, &oracle.dk), ("dv", &g.dv, &oracle.dv)]
                {
                    let pattern = |x: &[f32]| x.iter().map(|v| v.is_finite()).collect::<Vec<_>>();
                    let want_pat: Vec<bool> = want.iter().map(|v| v.is_finite()).collect();
                    assert_eq!(
                        pattern(got),
                        want_pat,
                        "{name}: NaN in {which}[{at}] reaches other {what} elements than the oracle's"
                    );
                    assert!(want_pat.iter().any(|f| *f), "{what} entirely non-finite: the test shows nothing");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 20);
}

/// Refusals: nystrom has no backward (named); bad buffers are shape errors; a bias
/// gradient needs a bias; a problem with sinks needs dsinks.
#[test]
fn refusals_are_typed_and_named() {
    let p = Problem::new(1, 2, 16, 8);
    let (q, k, v) = qkv(&p, 1);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (o, l, g) = (vec![0.0; p.out_len()], vec![0.0; p.lse_len()], vec![0.0; p.out_len()]);
    let name = "nystrom";
    let b = backend(name).unwrap();
    assert!(!b.supports_backward(&p), "{name}");
    match b.backward(&args, &o, &l, &g, false) {
        Err(AttnError::Unsupported { backend, reasons }) => {
            assert_eq!(backend, name);
            assert!(reasons.iter().any(|r| r.contains("backward")), "{reasons:?}");
        }
        other => panic!("{name}: {other:?}"),
    }
    let b = backend("flash-cpu").unwrap();
    assert!(matches!(b.backward(&args, &o[1..], &l, &g, false), Err(AttnError::Shape(m)) if m.contains("out")));
    assert!(matches!(b.backward(&args, &o, &l, &g[..3], false), Err(AttnError::Shape(m)) if m.contains("d_out")));
    assert!(matches!(b.backward(&args, &o, &l[1..], &g, false), Err(AttnError::Shape(m)) if m.contains("lse")));
    assert!(matches!(b.backward(&args, &o, &l, &g, true), Err(AttnError::InvalidArgument(m)) if m.contains("bias")));
    let ps = p.clone().with_sinks(vec![0.0, 0.0]);
    let args_s = AttnArgs::new(&ps, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let mut gr = attnkit::Grads::zeros(&p, false);
    let saved = attnkit::Saved { out: &o, lse: &l, d_out: &g };
    assert!(
        matches!(b.backward_into(&args_s, &saved, &mut gr.as_mut()), Err(AttnError::InvalidArgument(m)) if m.contains("dsinks"))
    );
    let _ = Tensor::from_f32(&[0.0], DType::F32);
}
