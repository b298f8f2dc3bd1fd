//! The diagonal shift (`Problem::with_diag_shift`, semantics in `attnkit::modifiers`), tested
//! on its own, without the ring: a large problem (causal, windows, ALiBi, softcap; square and
//! N_q ≠ N_k; GQA) is cut into rectangular blocks of rows [a, b) × keys [c, d), each computed as
//! a small problem with δ = a − c + N_k − N_q − ((d−c) − (b−a)). Forward: a row range's blocks,
//! merged by LSE (`merge_partials`), must equal the large problem's rows under the tolerance
//! rule (`exact_tolerance` against the f64 oracle of the large problem, which has no shift), for
//! reference, sdpa, flash-cpu (tiled and decode strategies), local and local-block. Backward:
//! each block's gradients given the large problem's O and LSE, summed (dQ over key ranges, dK/dV
//! over row ranges), must equal the f64 gradients (`gradient_tolerance`) for flash-cpu, local
//! and sdpa. The f64 oracle itself is checked against an independent formulation (band as a
//! boolean mask, ALiBi as an additive bias). Backends without the shift refuse it by name.

use attnkit::lse::merge_partials;
use attnkit::tiled::decode_applies;
use attnkit::validate::{compare, exact_tolerance, gradient_tolerance, oracle};
use attnkit::{Attention, AttnArgs, PairData, Problem, Window, alibi_slopes, backend};

/// Rows `[a, b)` of a (B·heads, n, d) tensor.
fn rows(x: &[f32], slices: usize, n: usize, d: usize, (a, b): (usize, usize)) -> Vec<f32> {
    (0..slices).flat_map(|s| x[(s * n + a) * d..(s * n + b) * d].iter().copied()).collect()
}

/// `dst[rows a..b] += src` for (slices, n, d) `dst` and (slices, b−a, d) `src`.
fn add_rows(dst: &mut [f32], src: &[f32], slices: usize, n: usize, d: usize, (a, b): (usize, usize)) {
    for s in 0..slices {
        let (to, from) = (&mut dst[(s * n + a) * d..(s * n + b) * d], &src[s * (b - a) * d..(s + 1) * (b - a) * d]);
        to.iter_mut().zip(from).for_each(|(x, y)| *x += y);
    }
}

/// The block rows `r` × keys `k` of `p` as a problem of its own.
fn block(p: &Problem, r: (usize, usize), k: (usize, usize)) -> Problem {
    let (nq, nk) = ((r.1 - r.0) as i64, (k.1 - k.0) as i64);
    let shift = r.0 as i64 - k.0 as i64 + p.seq_k as i64 - p.seq_q as i64 - (nk - nq);
    Problem { seq_q: r.1 - r.0, seq_k: k.1 - k.0, ..p.clone() }.with_diag_shift(shift)
}

struct Case {
    label: &'static str,
    p: Problem,
    row_cuts: &'static [usize],
    key_cuts: &'static [usize],
}

fn ranges(cuts: &[usize], n: usize) -> Vec<(usize, usize)> {
    let mut at = 0;
    let mut v: Vec<(usize, usize)> = cuts.iter().map(|&c| (std::mem::replace(&mut at, c), c)).collect();
    v.push((at, n));
    v
}

fn cases() -> Vec<Case> {
    let base = |nq: usize, nk: usize| Problem::new(2, 4, nq, 16).with_seq_k(nk).with_kv_heads(2);
    let alibi = alibi_slopes(4);
    let c = |label, p, row_cuts, key_cuts| Case { label, p, row_cuts, key_cuts };
    vec![
        c("causal", base(40, 40).with_causal(true), &[5, 23], &[9, 30]),
        c("causal_left_window", base(40, 40).with_causal(true).with_window(Window::new(6, -1)), &[5, 23], &[12, 27]),
        c("two_sided_window", base(40, 40).with_window(Window::new(4, 3)), &[5, 17], &[10, 21]),
        c("alibi", base(40, 40).with_alibi(alibi.clone()), &[5, 20], &[8, 31]),
        c(
            "alibi_causal_softcap",
            base(40, 40).with_causal(true).with_alibi(alibi.clone()).with_softcap(2.0),
            &[5],
            &[16, 24],
        ),
        c("cross_causal_window", base(24, 40).with_causal(true).with_window(Window::new(9, 0)), &[5, 13], &[14, 33]),
        c("cross_alibi_window", base(24, 40).with_window(Window::new(7, 2)).with_alibi(alibi), &[5], &[16, 30]),
    ]
}

/// Forward and LSE of `engine` on `p`.
fn run(engine: &dyn Attention, p: &Problem, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let args = AttnArgs::new(p, q, k, v).unwrap();
    let o = engine.forward(&args, true).unwrap_or_else(|e| panic!("{} on {p}: {e}", engine.name()));
    (o.out, o.lse.unwrap())
}

/// `engine` over the blocks of `case`, merged per row range: (B·H, N_q, D) O and the number of
/// blocks the decode strategy ran.
fn blocked_forward(engine: &dyn Attention, case: &Case, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, usize) {
    let p = &case.p;
    let (bh, bkv, d) = (p.batch * p.heads, p.batch * p.kv_heads, p.head_dim);
    let mut out = vec![0.0f32; p.out_len()];
    let mut decoded = 0;
    for r in ranges(case.row_cuts, p.seq_q) {
        let mut acc_o = vec![0.0f32; bh * (r.1 - r.0) * d];
        let mut acc_l = vec![f32::NEG_INFINITY; bh * (r.1 - r.0)];
        for kr in ranges(case.key_cuts, p.seq_k) {
            let s = block(p, r, kr);
            assert!(
                engine.supports(&s),
                "{}: {} refuses {s}: {:?}",
                case.label,
                engine.name(),
                engine.not_supported_reasons(&s)
            );
            decoded += usize::from(engine.name() == "flash-cpu" && decode_applies(&s));
            let (qs, ks, vs) = (rows(q, bh, p.seq_q, d, r), rows(k, bkv, p.seq_k, d, kr), rows(v, bkv, p.seq_k, d, kr));
            let (o, l) = run(engine, &s, &qs, &ks, &vs);
            merge_partials(&mut acc_o, &mut acc_l, &o, &l, d).unwrap();
        }
        add_rows(&mut out, &acc_o, bh, p.seq_q, d, r);
    }
    (out, decoded)
}

#[test]
fn blocks_with_the_shift_merge_to_the_whole_problem_forward() {
    let names = ["reference", "sdpa", "flash-cpu", "local"];
    let mut decoded = 0;
    for (i, case) in cases().iter().enumerate() {
        let p = &case.p;
        let (q, k, v) = attnkit::seeded::normal_qkv(p, 40 + i as u64);
        let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
        let args = AttnArgs::new(p, &q, &k, &v).unwrap();
        let want = oracle(&args);
        let tol = exact_tolerance(&args, &want, p.dtype);
        let mut ran = 0;
        for name in names {
            let engine = backend(name).unwrap();
            // local needs a band; every other backend here takes every case.
            if !engine.supports(p) {
                assert_eq!(name, "local", "{}: {name} refuses {p}", case.label);
                continue;
            }
            let (got, dec) = blocked_forward(engine.as_ref(), case, &q, &k, &v);
            decoded += dec;
            let e = compare(&got, &want);
            assert!(e.within(tol.bound), "{} {name}: error {} over bound {}", case.label, e.max_abs, tol.bound);
            ran += 1;
        }
        assert!(ran >= 3, "{}", case.label);
    }
    assert!(decoded >= 4, "flash-cpu's decode strategy ran on {decoded} shifted blocks");
}

/// local-block's pattern (each row's block of keys, at multiples of the block size, holding its
/// diagonal key) moves with the shift: blocks cut at multiples of the block size give, merged,
/// its result on the whole problem, judged against the f64 oracle of that pattern (as a mask).
#[test]
fn local_block_pattern_moves_with_the_shift() {
    use attnkit::backends::local_block::LocalBlock;
    let engine = LocalBlock::new(8).unwrap();
    for (label, p) in [
        ("square", Problem::new(1, 2, 40, 16)),
        ("causal_cross", Problem::new(1, 2, 28, 16).with_seq_k(40).with_causal(true)),
    ] {
        let case = Case { label, p: p.clone(), row_cuts: &[5, 19], key_cuts: &[16, 24] };
        let (q, k, v) = attnkit::seeded::normal_qkv(&p, 7);
        let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
        let (got, _) = blocked_forward(&engine, &case, &q, &k, &v);
        let masked = p.clone().with_mask(1, 1);
        let mask: Vec<bool> = (0..p.seq_q)
            .flat_map(|i| {
                let (lo, hi) = engine.key_range(&p, i);
                (0..p.seq_k).map(move |j| lo <= j && j < hi)
            })
            .collect();
        let args = AttnArgs::new_with(&masked, &q, &k, &v, PairData { bias: None, mask: Some(&mask) }).unwrap();
        let want = oracle(&args);
        let tol = exact_tolerance(&args, &want, p.dtype);
        let e = compare(&got, &want);
        assert!(e.within(tol.bound), "{label}: error {} over bound {}", e.max_abs, tol.bound);
    }
}

#[test]
fn block_gradients_with_the_shift_sum_to_the_whole_problems() {
    for (i, case) in cases().iter().enumerate() {
        let p = &case.p;
        let (bh, bkv, d) = (p.batch * p.heads, p.batch * p.kv_heads, p.head_dim);
        let (q, k, v) = attnkit::seeded::normal_qkv(p, 60 + i as u64);
        let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
        let d_out = attnkit::seeded::normal_values(p.out_len(), 80 + i as u64);
        let args = AttnArgs::new(p, &q, &k, &v).unwrap();
        let g64 = attnkit::grad::oracle::gradients_f64(&args, &d_out, false);
        let gt = gradient_tolerance(&args, &d_out, &g64);
        // reference's backward recomputes O and LSE per call, so a block's gradients are not its
        // share: the oracle's shift is tested by `the_oracle_honours_the_shift` instead.
        for name in ["sdpa", "flash-cpu", "local"] {
            let engine = backend(name).unwrap();
            if !engine.supports(p) {
                continue;
            }
            // The whole problem's O and LSE: each block's backward is then its exact share.
            let (o, l) = run(engine.as_ref(), p, &q, &k, &v);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()], vec![0.0f32; v.len()]);
            for r in ranges(case.row_cuts, p.seq_q) {
                for kr in ranges(case.key_cuts, p.seq_k) {
                    let s = block(p, r, kr);
                    let (qs, ks, vs) =
                        (rows(&q, bh, p.seq_q, d, r), rows(&k, bkv, p.seq_k, d, kr), rows(&v, bkv, p.seq_k, d, kr));
                    let a = AttnArgs::new(&s, &qs, &ks, &vs).unwrap();
                    let g = engine
                        .backward(
                            &a,
                            &rows(&o, bh, p.seq_q, d, r),
                            &rows(&l, bh, p.seq_q, 1, r),
                            &rows(&d_out, bh, p.seq_q, d, r),
                            false,
                        )
                        .unwrap_or_else(|e| panic!("{} {name} backward on {s}: {e}", case.label));
                    add_rows(&mut dq, &g.dq, bh, p.seq_q, d, r);
                    add_rows(&mut dk, &g.dk, bkv, p.seq_k, d, kr);
                    add_rows(&mut dv, &g.dv, bkv, p.seq_k, d, kr);
                }
            }
            for (what, got, want, t) in
                [("dq", &dq, &g64.dq, gt.dq), ("dk", &dk, &g64.dk, gt.dk), ("dv", &dv, &g64.dv, gt.dv)]
            {
                let e = compare(got, want);
                assert!(e.within(t.bound), "{} {name} {what}: error {} over bound {}", case.label, e.max_abs, t.bound);
            }
        }
    }
}

/// The f64 oracle (forward, LSE and gradients) on each shifted block equals an independent
/// formulation of the same block: no causal, window, ALiBi or shift, but a boolean mask of the
/// large problem's band and an additive bias `−slope·|global diagonal − global key|`. The slopes
/// are powers of two and distances integers, so the f32 bias is exact and both sides do the same
/// f64 arithmetic in the same order: agreement to 1e-12 (f64 rounding) is required.
#[test]
fn the_oracle_honours_the_shift() {
    use attnkit::TensorRef;
    use attnkit::backends::reference::attention_f64;
    use attnkit::grad::oracle::gradients_f64;
    let close = |what: &str, a: &[f64], b: &[f64]| {
        let worst = a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0.0, f64::max);
        assert!(a.len() == b.len() && worst <= 1e-12, "{what}: differs by {worst}");
    };
    for (i, case) in cases().iter().enumerate() {
        let p = &case.p;
        let (bh, bkv, d) = (p.batch * p.heads, p.batch * p.kv_heads, p.head_dim);
        let (q, k, v) = attnkit::seeded::normal_qkv(p, 90 + i as u64);
        let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
        for r in ranges(case.row_cuts, p.seq_q) {
            for kr in ranges(case.key_cuts, p.seq_k) {
                let s = block(p, r, kr);
                let (nq, nk) = (s.seq_q, s.seq_k);
                let (qs, ks, vs) =
                    (rows(&q, bh, p.seq_q, d, r), rows(&k, bkv, p.seq_k, d, kr), rows(&v, bkv, p.seq_k, d, kr));
                let d_out = attnkit::seeded::normal_values(s.out_len(), 7);
                let mut plain = Problem::new(p.batch, p.heads, nq, d).with_seq_k(nk).with_kv_heads(p.kv_heads);
                plain.mods.softcap = p.mods.softcap;
                let plain = plain.with_mask(1, 1).with_bias(1, p.heads);
                let mask: Vec<bool> = (0..nq)
                    .flat_map(|i| {
                        let (lo, hi) = p.key_range(r.0 + i);
                        (0..nk).map(move |j| lo <= kr.0 + j && kr.0 + j < hi)
                    })
                    .collect();
                let bias: Vec<f32> = (0..p.heads * nq * nk)
                    .map(|x| {
                        let (h, i, j) = (x / (nq * nk), x / nk % nq, x % nk);
                        let diag = (r.0 + i + p.seq_k) as i64 - p.seq_q as i64;
                        -p.alibi_slope(0, r.0 + i, h) * (diag - (kr.0 + j) as i64).abs() as f32
                    })
                    .collect();
                let label = format!("{} rows {r:?} keys {kr:?}", case.label);
                let a = AttnArgs::new(&s, &qs, &ks, &vs).unwrap();
                let pair = PairData { bias: Some(TensorRef::F32(&bias)), mask: Some(&mask) };
                let b = AttnArgs::new_with(&plain, &qs, &ks, &vs, pair).unwrap();
                let ((oa, la), (ob, lb)) = (attention_f64(&a), attention_f64(&b));
                close(&format!("{label} out"), &oa, &ob);
                let finite = |l: &[f64]| l.iter().map(|x| if x.is_finite() { *x } else { -1e300 }).collect::<Vec<_>>();
                close(&format!("{label} lse"), &finite(&la), &finite(&lb));
                let (ga, gb) = (gradients_f64(&a, &d_out, false), gradients_f64(&b, &d_out, false));
                close(&format!("{label} dq"), &ga.dq, &gb.dq);
                close(&format!("{label} dk"), &ga.dk, &gb.dk);
                close(&format!("{label} dv"), &ga.dv, &gb.dv);
            }
        }
    }
}

#[test]
fn backends_without_the_shift_refuse_it_by_name() {
    let p = Problem::new(1, 2, 16, 16).with_diag_shift(-3);
    for name in ["performer", "linformer", "nystrom", "flash-cuda"] {
        let Ok(engine) = backend(name) else { continue };
        let r = engine.not_supported_reasons(&p);
        assert!(r.iter().any(|m| m.contains("diagonal shift")), "{name}: {r:?}");
    }
    // Out of range shifts are refused naming the value; δ = −(N_k − N_q) aligns causal top-left.
    let e = Problem::new(1, 1, 4, 8).with_diag_shift(1 << 41).validate().unwrap_err().to_string();
    assert!(e.contains("diagonal shift 2199023255552"), "{e}");
    let c = Problem::new(1, 1, 4, 8).with_seq_k(6).with_causal(true).with_diag_shift(-2);
    assert_eq!((0..4).map(|i| c.key_range(i)).collect::<Vec<_>>(), vec![(0, 1), (0, 2), (0, 3), (0, 4)]);
}
