//! The approximations' backward passes (`linformer`, `performer`; `src/grad/linformer.rs`,
//! `src/grad/performer.rs`): the f64 instance of each against central finite differences of the
//! same module's f64 forward, that forward against the backend's own (so the gradient is the
//! documented forward's), the backend's f32 gradients against the f64 ones, Linformer with
//! identity projections against exact attention's gradients, determinism, and refusals.
//!
//! Tolerances, bound = max|got − want| / (1 + max|want|), each set ≈ 20–40× above the largest
//! error measured on this table (`cargo test --release --test approx_gradients`):
//! - finite differences: central, h = 1e-5 on Q, K, V, E, F (f64 inputs): bound 1e-8 (measured
//!   ≤ 2.6e-10). Performer's gradient terms through δ = 1e-6 and its max-shifts are ≈ 1e-6 here
//!   (leaving out the key shift's term fails at 7.5e-7), so the bound sees them. Sinks live in the
//!   problem as f32: h = 2⁻¹⁰ on grid values (exact in f32), bound 1e-6 (measured ≤ 3.4e-8).
//!   Entries of E at a discontinuity of the forward (a dropped projected key) are skipped.
//! - backend (f32) against the f64 code, and identity projections against the exact f64 oracle:
//!   1e-5 (measured ≤ 4.5e-7).

use attnkit::backends::linformer::{Linformer, ProjectionGrads};
use attnkit::backends::performer::Performer;
use attnkit::grad::oracle::gradients_f64;
use attnkit::grad::{linformer as lg, performer as pg};
use attnkit::options::Kernel;
use attnkit::{Attention, AttnArgs, AttnError, Grads, Problem, Saved, backend};

/// Values on a 2⁻¹² grid (exact in f32 and f64).
fn grid(len: usize, seed: u64, amp: f32) -> Vec<f32> {
    attnkit::seeded::normal_values(len, seed).iter().map(|x| (x * amp * 4096.0).round() / 4096.0).collect()
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn transpose<T: Copy + Default>(a: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// Largest |got − want| over (1 + max|want|); asserts it is within `tol`.
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = 1.0 + want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
    assert!(err <= tol, "{what}: error {err:.3e} > {tol:.0e}");
    err
}

fn f32s(x: &[f32]) -> Vec<f64> {
    to64(x)
}

/// The differentiable values: Q, K, V and (Linformer) Eᵀ, Fᵀ of every slot, flattened.
#[derive(Clone)]
struct Vals {
    fields: [Vec<f64>; 5],
}

/// Central differences of `loss` in every element of every field, against `analytic`; `skip`
/// names the (field, element) pairs where the forward is discontinuous.
fn check_fd(
    label: &str,
    vals: &Vals,
    analytic: [&[f64]; 5],
    loss: &dyn Fn(&Vals) -> f64,
    skip: &dyn Fn(usize, usize) -> bool,
) {
    const H: f64 = 1e-5;
    for (fi, name) in ["dq", "dk", "dv", "dE", "dF"].iter().enumerate() {
        let mut fd = vec![0.0; vals.fields[fi].len()];
        let mut x = vals.clone();
        for (i, g) in fd.iter_mut().enumerate() {
            if skip(fi, i) {
                *g = analytic[fi][i];
                continue;
            }
            let x0 = x.fields[fi][i];
            x.fields[fi][i] = x0 + H;
            let up = loss(&x);
            x.fields[fi][i] = x0 - H;
            let down = loss(&x);
            x.fields[fi][i] = x0;
            *g = (up - down) / (2.0 * H);
        }
        assert_close(&format!("{label} {name} vs finite differences"), analytic[fi], &fd, 1e-8);
    }
}

/// dσ by central differences with h = 2⁻¹⁰ on the problem's (grid-valued) sinks.
fn check_sinks_fd(label: &str, p: &Problem, analytic: &[f64], loss: &dyn Fn(&Problem) -> f64) {
    let h = 1.0 / 1024.0;
    let sinks = p.mods.sinks.clone().unwrap();
    let fd: Vec<f64> = (0..sinks.len())
        .map(|i| {
            let with = |dx: f32| {
                let mut s = sinks.clone();
                s[i] += dx;
                loss(&p.clone().with_sinks(s))
            };
            (with(h) - with(-h)) / (2.0 * h as f64)
        })
        .collect();
    assert_close(&format!("{label} dsinks vs finite differences"), analytic, &fd, 1e-6);
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Matrices per slot, row-major k×N_k.
type Mats = Vec<Vec<f32>>;
/// dQ, dK, dV; dσ; dEᵀ, dFᵀ.
type LinGrads64 = ([Vec<f64>; 3], Option<Vec<f64>>, Option<lg::ProjGrads<f64>>);

/// One Linformer case: the problem, k, and dense projections per slot (row-major k×N_k) or
/// pooled (`None`).
struct LinCase {
    label: &'static str,
    p: Problem,
    k: usize,
    dense: Option<(Mats, Mats)>,
}

fn lin_cases() -> Vec<LinCase> {
    let base = Problem::new(2, 4, 5, 3).with_kv_heads(2).with_seq_k(7);
    let mats = |slots: usize, k: usize, n: usize, seed: u64| -> Vec<Vec<f32>> {
        (0..slots).map(|s| grid(k * n, seed + s as u64, 0.5)).collect()
    };
    // One E row zero on the first 3 keys: with 3 used keys that projected key is dropped.
    let mut holed = mats(2, 4, 7, 30);
    holed[1][..3].fill(0.0);
    let c = |label, p: Problem, k, dense| LinCase { label, p, k, dense };
    vec![
        c("separate_per_head_gqa", base.clone(), 4, Some((mats(2, 4, 7, 10), mats(2, 4, 7, 20)))),
        c("one_shared_pair", base.clone().with_kv_heads(4), 3, Some((mats(1, 3, 7, 40), mats(1, 3, 7, 50)))),
        c("k_above_n_scaled", base.clone().with_scale(0.9), 9, Some((mats(2, 9, 7, 60), mats(2, 9, 7, 70)))),
        c(
            "sinks",
            base.clone().with_sinks(vec![0.25, -0.5, 1.0, 0.0]),
            4,
            Some((mats(2, 4, 7, 80), mats(2, 4, 7, 90))),
        ),
        c("seqused_k_dropped_key", base.clone().with_seqused_k(vec![7, 3]), 4, Some((holed, mats(2, 4, 7, 31)))),
        c(
            "seqused_k_empty_entry",
            base.clone().with_seqused_k(vec![0, 5]),
            4,
            Some((mats(2, 4, 7, 32), mats(2, 4, 7, 33))),
        ),
        c("pooled", base.clone(), 3, None),
        c("pooled_seqused_k_sinks", base.clone().with_seqused_k(vec![2, 6]).with_sinks(vec![0.5; 4]), 3, None),
    ]
}

/// The case's f64 inputs: fields 3 and 4 hold every slot's Eᵀ, Fᵀ (N_k×k) one after another.
fn lin_vals(c: &LinCase) -> Vals {
    let p = &c.p;
    let q = to64(&grid(p.q_len(), 1, 1.0));
    let k = to64(&grid(p.kv_len(), 2, 1.0));
    let v = to64(&grid(p.kv_len(), 3, 1.0));
    let flat = |m: &[Vec<f32>]| m.iter().flat_map(|e| to64(&transpose(e, c.k, p.seq_k))).collect::<Vec<f64>>();
    let (e, f) = c.dense.as_ref().map_or((vec![], vec![]), |(e, f)| (flat(e), flat(f)));
    Vals { fields: [q, k, v, e, f] }
}

fn lin_inputs<'a>(c: &'a LinCase, p: &'a Problem, x: &'a Vals) -> lg::Inputs<'a, f64> {
    let per = c.k * p.seq_k;
    let proj = match c.dense {
        None => lg::Proj::Pooled { k: c.k },
        Some(_) => {
            lg::Proj::Dense { k: c.k, e: x.fields[3].chunks(per).collect(), f: x.fields[4].chunks(per).collect() }
        }
    };
    lg::Inputs { p, q: &x.fields[0], k: &x.fields[1], v: &x.fields[2], proj }
}

fn lin_grads(c: &LinCase, p: &Problem, x: &Vals, d_out: &[f64]) -> LinGrads64 {
    let (mut dq, mut dk, mut dv) = (vec![0.0; p.q_len()], vec![0.0; p.kv_len()], vec![0.0; p.kv_len()]);
    let mut ds = p.mods.sinks.as_ref().map(|s| vec![0.0; s.len()]);
    let out = lg::Out { dq: &mut dq, dk: &mut dk, dv: &mut dv, dsinks: ds.as_deref_mut() };
    let pg = lg::backward(&lin_inputs(c, p, x), d_out, out, true);
    ([dq, dk, dv], ds, pg)
}

#[test]
fn linformer_f64_gradients_match_finite_differences() {
    for c in lin_cases() {
        let x = lin_vals(&c);
        let d_out = to64(&grid(c.p.q_len(), 4, 1.0));
        let ([dq, dk, dv], ds, pgr) = lin_grads(&c, &c.p, &x, &d_out);
        let (de, df) = pgr.map_or((vec![], vec![]), |g| (g.de.concat(), g.df.concat()));
        assert_eq!(de.len(), x.fields[3].len(), "{}", c.label);
        let loss = |x: &Vals| dot64(&lg::forward(&lin_inputs(&c, &c.p, x)).0, &d_out);
        // The dropped projected key (E zero on the used keys) comes back for any nonzero step:
        // the forward jumps there, so those entries of E have no finite difference.
        let per = c.k * c.p.seq_k;
        let dropped = |f: usize, i: usize| {
            c.label == "seqused_k_dropped_key"
                && f == 3
                && i >= per
                && (i - per).is_multiple_of(c.k)
                && (i - per) / c.k < 3
        };
        check_fd(c.label, &x, [&dq, &dk, &dv, &de, &df], &loss, &dropped);
        if let Some(ds) = ds {
            let loss_p = |p: &Problem| dot64(&lg::forward(&lin_inputs(&c, p, &x)).0, &d_out);
            check_sinks_fd(c.label, &c.p, &ds, &loss_p);
        }
    }
}

fn lin_backend(c: &LinCase) -> Linformer {
    match &c.dense {
        Some((e, f)) => Linformer::with_projections(e.clone(), Some(f.clone()), c.k, c.p.seq_k).unwrap(),
        None => Linformer::pooled(c.k).unwrap(),
    }
}

/// Forward, then the backend's backward (with dE, dF for dense projections).
fn run_backend(b: &dyn Attention, p: &Problem, q: &[f32], k: &[f32], v: &[f32], d_out: &[f32]) -> (Vec<f32>, Grads) {
    let args = AttnArgs::new(p, q, k, v).unwrap();
    let fwd = b.forward(&args, true).unwrap();
    let g = b.backward(&args, &fwd.out, fwd.lse.as_ref().unwrap(), d_out, false).unwrap();
    (fwd.out, g)
}

#[test]
fn linformer_backend_matches_its_f64_gradients() {
    for c in lin_cases() {
        let x = lin_vals(&c);
        let p = &c.p;
        let (q, k, v) = (grid(p.q_len(), 1, 1.0), grid(p.kv_len(), 2, 1.0), grid(p.kv_len(), 3, 1.0));
        let d_out = grid(p.q_len(), 4, 1.0);
        let b = lin_backend(&c);
        assert!(b.supports_backward(p), "{}", c.label);
        let (out, g) = run_backend(&b, p, &q, &k, &v, &d_out);
        let (o64, _) = lg::forward(&lin_inputs(&c, p, &x));
        assert_close(&format!("{} forward", c.label), &f32s(&out), &o64, 1e-5);
        let ([dq, dk, dv], ds, pgr) = lin_grads(&c, p, &x, &to64(&d_out));
        for (name, got, want) in [("dq", &g.dq, &dq), ("dk", &g.dk, &dk), ("dv", &g.dv, &dv)] {
            assert_close(&format!("{} {name}", c.label), &f32s(got), want, 1e-5);
        }
        if let Some(ds) = ds {
            assert_close(&format!("{} dsinks", c.label), &f32s(g.dsinks.as_ref().unwrap()), &ds, 1e-5);
        }
        // dE, dF through the typed API, in with_projections's layout (k×N_k row-major).
        let args = AttnArgs::new(p, &q, &k, &v).unwrap();
        let fwd = b.forward(&args, true).unwrap();
        let saved = Saved { out: &fwd.out, lse: fwd.lse.as_ref().unwrap(), d_out: &d_out };
        let mut g2 = Grads::zeros(p, false);
        let res = b.backward_with_projections(&args, &saved, &mut g2.as_mut());
        let Some(pgr) = pgr else {
            assert!(matches!(res, Err(AttnError::InvalidArgument(m)) if m.contains("pooled")), "{}", c.label);
            continue;
        };
        let pr = res.unwrap();
        assert_eq!(g2, g, "{}: the same dQ, dK, dV with or without dE, dF", c.label);
        let rows = |m: &[f64]| transpose(m, p.seq_k, c.k);
        for (s, e) in pr.e.iter().enumerate() {
            assert_close(&format!("{} dE[{s}]", c.label), &f32s(e), &rows(&pgr.de[s]), 1e-5);
        }
        for (s, f) in pr.f.as_ref().unwrap().iter().enumerate() {
            assert_close(&format!("{} dF[{s}]", c.label), &f32s(f), &rows(&pgr.df[s]), 1e-5);
        }
    }
}

/// E = F (values projected with E): the one matrix's gradient is dE + dF of the separate case.
#[test]
fn linformer_shared_key_value_projection_sums_both_gradients() {
    let p = Problem::new(1, 2, 6, 4).with_seq_k(8);
    let e = vec![grid(5 * 8, 7, 0.5)];
    let (q, k, v, d_out) =
        (grid(p.q_len(), 1, 1.0), grid(p.kv_len(), 2, 1.0), grid(p.kv_len(), 3, 1.0), grid(p.q_len(), 4, 1.0));
    let grads = |b: &Linformer| -> ProjectionGrads {
        let args = AttnArgs::new(&p, &q, &k, &v).unwrap();
        let fwd = b.forward(&args, true).unwrap();
        let saved = Saved { out: &fwd.out, lse: fwd.lse.as_ref().unwrap(), d_out: &d_out };
        b.backward_with_projections(&args, &saved, &mut Grads::zeros(&p, false).as_mut()).unwrap()
    };
    let shared = grads(&Linformer::with_projections(e.clone(), None, 5, 8).unwrap());
    let separate = grads(&Linformer::with_projections(e.clone(), Some(e), 5, 8).unwrap());
    assert!(shared.f.is_none());
    let sep_f = separate.f.unwrap();
    let sum: Vec<f64> = separate.e[0].iter().zip(&sep_f[0]).map(|(a, b)| (a + b) as f64).collect();
    assert_close("E = F: dE", &f32s(&shared.e[0]), &sum, 1e-6);
}

/// k = N_k with E = F = I (and pooled k ≥ N_k) is exact attention: the same gradients as the
/// exact f64 oracle, with sinks and with used key lengths.
#[test]
fn linformer_identity_projections_give_exact_gradients() {
    let base = Problem::new(2, 4, 9, 8).with_kv_heads(2);
    let n = base.seq_k;
    let eye: Vec<f32> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for (label, p) in [
        ("plain", base.clone()),
        ("sinks", base.clone().with_sinks(vec![0.5, -1.0, 0.0, 2.0])),
        ("seqused_k", base.clone().with_seqused_k(vec![4, 9])),
        ("scale", base.clone().with_scale(0.3)),
    ] {
        let (q, k, v, d_out) =
            (grid(p.q_len(), 1, 1.0), grid(p.kv_len(), 2, 1.0), grid(p.kv_len(), 3, 1.0), grid(p.q_len(), 4, 1.0));
        let args = AttnArgs::new(&p, &q, &k, &v).unwrap();
        let oracle = gradients_f64(&args, &d_out, false);
        for (which, b) in [
            ("identity", Linformer::with_projections(vec![eye.clone()], None, n, n).unwrap()),
            ("pooled_k_eq_n", Linformer::pooled(n).unwrap()),
        ] {
            let (_, g) = run_backend(&b, &p, &q, &k, &v, &d_out);
            let what = format!("{label} {which}");
            assert_close(&format!("{what} dq"), &f32s(&g.dq), &oracle.dq, 1e-5);
            assert_close(&format!("{what} dk"), &f32s(&g.dk), &oracle.dk, 1e-5);
            assert_close(&format!("{what} dv"), &f32s(&g.dv), &oracle.dv, 1e-5);
            if let (Some(got), Some(want)) = (&g.dsinks, &oracle.dsinks) {
                assert_close(&format!("{what} dsinks"), &f32s(got), want, 1e-5);
            }
        }
    }
}

/// One Performer case: the problem, m and the kernel.
fn perf_cases() -> Vec<(&'static str, Problem, usize, Kernel)> {
    let base = Problem::new(1, 2, 6, 4);
    let s = Kernel::Softmax;
    vec![
        ("plain", base.clone(), 8, s),
        ("causal", base.clone().with_causal(true), 8, s),
        ("causal_q_lt_k", base.clone().with_seq_k(9).with_causal(true), 8, s),
        ("causal_q_gt_k_empty_rows", base.clone().with_seq_k(3).with_causal(true), 8, s),
        ("gqa_sinks", Problem::new(2, 4, 5, 4).with_kv_heads(2).with_sinks(vec![0.5, -0.25, 1.0, 0.0]), 6, s),
        ("causal_sinks", base.clone().with_causal(true).with_sinks(vec![0.0, 1.5]), 8, s),
        (
            "seqused_k_causal",
            Problem::new(3, 2, 5, 4).with_seq_k(7).with_seqused_k(vec![7, 2, 0]).with_causal(true),
            8,
            s,
        ),
        ("seqused_k", Problem::new(2, 2, 5, 4).with_seq_k(7).with_seqused_k(vec![3, 0]), 8, s),
        ("scale_m_above_d", base.clone().with_scale(0.8), 11, s),
        ("relu", base.clone(), 8, Kernel::Relu),
        ("relu_causal", base.clone().with_causal(true), 8, Kernel::Relu),
    ]
}

struct PerfData {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_out: Vec<f32>,
    omega: Vec<f64>,
}

fn perf_data(p: &Problem, b: &Performer) -> PerfData {
    PerfData {
        q: grid(p.q_len(), 11, 0.5),
        k: grid(p.kv_len(), 12, 0.5),
        v: grid(p.kv_len(), 13, 1.0),
        d_out: grid(p.q_len(), 14, 1.0),
        omega: to64(&b.feature_matrix(p.head_dim).unwrap()),
    }
}

fn perf_inputs<'a>(p: &'a Problem, x: &'a Vals, omega: &'a [f64], m: usize, kernel: Kernel) -> pg::Inputs<'a, f64> {
    pg::Inputs { p, q: &x.fields[0], k: &x.fields[1], v: &x.fields[2], omega, m, kernel }
}

fn perf_grads(inp: &pg::Inputs<'_, f64>, d_out: &[f64]) -> ([Vec<f64>; 3], Option<Vec<f64>>) {
    let p = inp.p;
    let (mut dq, mut dk, mut dv) = (vec![0.0; p.q_len()], vec![0.0; p.kv_len()], vec![0.0; p.kv_len()]);
    let mut ds = p.mods.sinks.as_ref().map(|s| vec![0.0; s.len()]);
    pg::backward(inp, d_out, pg::Out { dq: &mut dq, dk: &mut dk, dv: &mut dv, dsinks: ds.as_deref_mut() });
    ([dq, dk, dv], ds)
}

#[test]
fn performer_f64_gradients_match_finite_differences() {
    for (label, p, m, kernel) in perf_cases() {
        let b = Performer::new(m, 5).unwrap().with_kernel(kernel);
        let data = perf_data(&p, &b);
        let x = Vals { fields: [to64(&data.q), to64(&data.k), to64(&data.v), vec![], vec![]] };
        let d_out = to64(&data.d_out);
        let ([dq, dk, dv], ds) = perf_grads(&perf_inputs(&p, &x, &data.omega, m, kernel), &d_out);
        let loss = |x: &Vals| dot64(&pg::forward(&perf_inputs(&p, x, &data.omega, m, kernel)).0, &d_out);
        check_fd(label, &x, [&dq, &dk, &dv, &[], &[]], &loss, &|_, _| false);
        if let Some(ds) = ds {
            let loss_p = |pp: &Problem| dot64(&pg::forward(&perf_inputs(pp, &x, &data.omega, m, kernel)).0, &d_out);
            check_sinks_fd(label, &p, &ds, &loss_p);
        }
    }
}

#[test]
fn performer_backend_matches_its_f64_gradients() {
    for (label, p, m, kernel) in perf_cases() {
        let b = Performer::new(m, 5).unwrap().with_kernel(kernel);
        assert!(b.supports_backward(&p), "{label}");
        let data = perf_data(&p, &b);
        let x = Vals { fields: [to64(&data.q), to64(&data.k), to64(&data.v), vec![], vec![]] };
        let inp = perf_inputs(&p, &x, &data.omega, m, kernel);
        let (out, g) = run_backend(&b, &p, &data.q, &data.k, &data.v, &data.d_out);
        assert_close(&format!("{label} forward"), &f32s(&out), &pg::forward(&inp).0, 1e-5);
        let ([dq, dk, dv], ds) = perf_grads(&inp, &to64(&data.d_out));
        for (name, got, want) in [("dq", &g.dq, &dq), ("dk", &g.dk, &dk), ("dv", &g.dv, &dv)] {
            assert_close(&format!("{label} {name}"), &f32s(got), want, 1e-5);
        }
        if let Some(ds) = ds {
            assert_close(&format!("{label} dsinks"), &f32s(g.dsinks.as_ref().unwrap()), &ds, 1e-5);
        }
    }
}

/// Bitwise identical gradients at 1 and 3 threads (every sum runs in a fixed order).
#[test]
fn approximation_backwards_are_deterministic_across_thread_counts() {
    let p = Problem::new(2, 4, 40, 16).with_kv_heads(2).with_seq_k(50);
    let (q, k, v, d_out) =
        (grid(p.q_len(), 1, 0.5), grid(p.kv_len(), 2, 0.5), grid(p.kv_len(), 3, 1.0), grid(p.q_len(), 4, 1.0));
    let pc = p.clone().with_causal(true);
    let cases: Vec<(Box<dyn Attention>, &Problem)> = vec![
        (Box::new(Linformer::new(8, 3).unwrap()), &p),
        (Box::new(Linformer::pooled(8).unwrap()), &p),
        (Box::new(Performer::new(16, 3).unwrap()), &p),
        (Box::new(Performer::new(16, 3).unwrap()), &pc),
    ];
    for (b, p) in cases {
        let at = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| run_backend(b.as_ref(), p, &q, &k, &v, &d_out).1)
        };
        assert_eq!(at(1), at(3), "{} causal={}", b.name(), p.causal);
    }
}

/// `nystrom` still refuses, naming the pseudo-inverse and what to use; the approximations refuse
/// the backward of what their forward refuses (linformer causal) with the forward's reason.
#[test]
fn refusals_name_their_reason() {
    let p = Problem::new(1, 2, 16, 8);
    let (q, k, v) = (grid(p.q_len(), 1, 1.0), grid(p.kv_len(), 2, 1.0), grid(p.kv_len(), 3, 1.0));
    let z = vec![0.0f32; p.out_len()];
    let l = vec![0.0f32; p.lse_len()];
    let args = AttnArgs::new(&p, &q, &k, &v).unwrap();
    let ny = backend("nystrom").unwrap();
    assert!(!ny.supports_backward(&p));
    match ny.backward(&args, &z, &l, &z, false) {
        Err(AttnError::Unsupported { reasons, .. }) => {
            let r = reasons.join("; ");
            assert!(r.contains("pseudo-inverse") && r.contains("flash-cpu"), "{r}");
        }
        other => panic!("{other:?}"),
    }
    let pc = p.clone().with_causal(true);
    let args_c = AttnArgs::new(&pc, &q, &k, &v).unwrap();
    for name in ["linformer", "performer"] {
        let b = backend(name).unwrap();
        assert!(b.supports_backward(&p), "{name}");
        if name == "linformer" {
            assert!(!b.supports(&pc), "the forward refuses causal, and backward_into with it");
            assert!(
                matches!(b.backward(&args_c, &z, &l, &z, false), Err(AttnError::Unsupported { reasons, .. }) if reasons.iter().any(|r| r.contains("causal")))
            );
        }
    }
}
