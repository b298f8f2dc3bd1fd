//! Numerical edge cases for every available backend: huge logits, empty rows, NaN/Inf policy.
//!
//! NaN/Inf policy (documented in `attnkit::attention`): non-finite inputs are not sanitized.
//! A NaN in `q[b,h,i]` reaches only output row `(b,h,i)` (for approximations, at most the rows
//! of its (batch, head): `nystrom`'s query landmarks mix a head's queries; linformer and
//! performer keep it in its row, tested in their own files); a NaN in `k`/`v` at key `j` of KV
//! head `g` reaches only rows of the query heads mapped to `g` whose band contains `j` (for the
//! approximations, which mix every key into every row, all rows of those heads). Every other
//! output element is bitwise unchanged, and a reached row is non-finite rather than a silently
//! wrong finite value (exact backends).

mod common;

use attnkit::validate::{compare, exact_tolerance};
use attnkit::{Attention, AttnArgs, DType, Exactness, PairData, Problem, Tensor, Window, backend, backend_names};
use common::qkv;

fn available() -> Vec<Box<dyn Attention>> {
    backend_names()
        .into_iter()
        .filter_map(|n| backend(n).ok())
        .filter(|b| match b.availability() {
            Ok(()) => true,
            Err(why) => {
                println!("skip {}: {why}", b.name());
                false
            }
        })
        .collect()
}

#[test]
fn huge_logits_stay_finite_and_match_the_oracle() {
    // Scale q so |scores| reach ~1e4: a naive exp overflows, a max-subtracted softmax does not.
    for (causal, window) in [(false, Window::UNBOUNDED), (true, Window::UNBOUNDED), (false, Window::new(9, 9))] {
        let p = Problem::new(1, 2, 77, 64).with_causal(causal).with_window(window);
        let (q, k, v) = qkv(&p, 5);
        let mut qf = q.to_f32();
        let (kf, vf) = (k.to_f32(), v.to_f32());
        // |q·k| ≈ 8·|q|, so q·1250/8 gives scores of order 1e4 after the 1/8 scale.
        qf.iter_mut().for_each(|x| *x *= 1250.0);
        let args = AttnArgs::new(&p, &qf, &kf, &vf).unwrap();
        let (oracle, _) = attnkit::backends::reference::attention_f64(&args);
        let max_score = (0..p.seq_q)
            .map(|i| (0..64).map(|t| qf[i * 64 + t] * kf[i * 64 + t]).sum::<f32>().abs() * p.scale)
            .fold(0.0f32, f32::max);
        assert!(max_score > 1e3, "test inputs should give huge logits, got {max_score}");
        // At |s| ~ 1e4 the f32 scores themselves carry rounding error ~|s|·u·√D, which moves the
        // softmax weights by that much relative; any f32 summation order (GEMM vs naive loop)
        // lands anywhere within it, so the FlashAttention 2×-naive rule is widened by this
        // conditioning term (about 1e-2 here, while outputs are O(1)).
        let conditioning = 4.0 * max_score as f64 * DType::F32.unit_roundoff() * 8.0;
        let max_v = vf.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        let bound = exact_tolerance(&args, &oracle, DType::F32).bound.max(conditioning * max_v);
        for b in available() {
            if !b.supports(&p) {
                continue;
            }
            let out = b.forward(&args, false).unwrap().out;
            let s = compare(&out, &oracle);
            assert_eq!(s.non_finite, 0, "{}: non-finite output for huge logits", b.name());
            if b.exactness() == Exactness::Exact {
                assert!(s.within(bound), "{}: {:.3e} > {:.3e} (causal={causal})", b.name(), s.max_abs, bound);
            }
        }
    }
}

#[test]
fn nan_in_q_stays_in_its_row() {
    let p = Problem::new(2, 2, 40, 32).with_kv_heads(1);
    let (q, k, v) = qkv(&p, 21);
    let (qf, kf, vf) = (q.to_f32(), k.to_f32(), v.to_f32());
    let mut q_nan = qf.clone();
    let (b0, h0, i0) = (1, 1, 13);
    let row = (b0 * p.heads + h0) * p.seq_q + i0;
    q_nan[row * 32 + 5] = f32::NAN;
    for b in available() {
        if !b.supports(&p) {
            continue;
        }
        let clean = b.forward(&AttnArgs::new(&p, &qf, &kf, &vf).unwrap(), false).unwrap().out;
        let dirty = b.forward(&AttnArgs::new(&p, &q_nan, &kf, &vf).unwrap(), false).unwrap().out;
        let approx = b.exactness() == Exactness::Approximate;
        for (r, (c, d)) in clean.chunks(32).zip(dirty.chunks(32)).enumerate() {
            if r == row {
                assert!(d.iter().any(|x| !x.is_finite()), "{}: the NaN row came out finite: {d:?}", b.name());
            } else if approx && r / p.seq_q == row / p.seq_q {
                // Same (batch, head): an approximation may mix queries (documented per backend).
            } else {
                assert!(
                    c.iter().zip(d).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{}: row {r} changed although only row {row} had a NaN (outside its head for approximations)",
                    b.name()
                );
            }
        }
    }
}

/// One placement of a non-finite K or V element: the problem, the poisoned key (of KV head 1
/// of batch 0) and the boolean mask, if the problem declares one.
struct Poison {
    name: &'static str,
    p: Problem,
    key: usize,
    mask: Option<Vec<bool>>,
}

/// Causal and windowed bands, cross lengths, GQA, decode (N_q = 1, the key outside or inside the
/// window), bf16 inputs, and boolean masks (random, and 16×16 blocks that leave some panels
/// empty, some full and the strips across them mixed), each with the key in a tile that some
/// rows of the same strip see and others do not.
fn poison_cases() -> Vec<Poison> {
    let gqa = |nq: usize, d: usize| Problem::new(1, 4, nq, d).with_kv_heads(2);
    let case = |name, p: Problem, key| Poison { name, p, key, mask: None };
    let masked = |name, p: Problem, key, keep: &dyn Fn(usize, usize) -> bool| {
        let shape = p.mods.mask.expect("a masked case declares its mask");
        let (slices, nq, nk) = (shape.batch * shape.heads, p.seq_q, p.seq_k);
        let mask = (0..slices * nq * nk).map(|e| keep(e / nk, e % nk)).collect();
        Poison { name, p, key, mask: Some(mask) }
    };
    let random = attnkit::seeded::normal_values(4 * 130 * 130, 77);
    vec![
        case("causal_gqa_b2", Problem::new(2, 4, 24, 16).with_kv_heads(2).with_causal(true), 10),
        case("causal_300", gqa(300, 64).with_causal(true), 133),
        case("window_16_16", gqa(300, 64).with_window(Window::new(16, 16)), 150),
        case("cross_causal", gqa(40, 32).with_seq_k(150).with_causal(true), 130),
        case(
            "decode_window_unseen",
            Problem::new(2, 8, 1, 64).with_kv_heads(2).with_seq_k(500).with_window(Window::new(100, 0)),
            300,
        ),
        case("decode_causal_seen", Problem::new(2, 8, 1, 64).with_kv_heads(2).with_seq_k(500).with_causal(true), 450),
        case("bf16_causal", gqa(200, 64).with_causal(true).with_dtype(DType::BF16), 99),
        masked("mask_random", gqa(96, 32).with_mask(1, 4), 40, &|r, j| random[(r * 96 + j) % random.len()] > 0.0),
        masked("mask_blocks", gqa(130, 64).with_mask(1, 1), 40, &|i, j| (i / 16 + j / 16) % 3 != 0),
        masked(
            "mask_causal_bf16",
            gqa(130, 64).with_causal(true).with_mask(1, 1).with_dtype(DType::BF16),
            64,
            &|i, j| random[(i * 130 + j) % random.len()] > -0.5,
        ),
    ]
}

#[test]
fn nan_in_k_stays_in_its_head_group_and_band() {
    nonfinite_kv_stays_in_its_head_group_and_band(false, f32::NAN);
}

/// Regression test for the defect found 2026-11-28: the blocked kernels (`flash-cpu` and the
/// backends on its tiled runner, `sdpa`) multiplied a dropped pair's P = 0 by V, and 0 · NaN =
/// NaN, so a NaN in V leaked into rows whose band (or boolean mask) excludes its key.
#[test]
fn nan_in_v_stays_in_its_head_group_and_band() {
    nonfinite_kv_stays_in_its_head_group_and_band(true, f32::NAN);
}

/// 0 · ∞ is NaN too; a row that sees the key gets ∞ (p > 0) or NaN (p = 0).
#[test]
fn inf_in_v_stays_in_its_head_group_and_band() {
    nonfinite_kv_stays_in_its_head_group_and_band(true, f32::INFINITY);
    nonfinite_kv_stays_in_its_head_group_and_band(true, f32::NEG_INFINITY);
}

/// For every [`poison_cases`] row: `value` at element 3 of key `key` of KV head 1 of batch 0,
/// in K (`in_v` false) or V, may reach only rows of the query heads of that KV head in batch 0
/// whose band contains the key and whose mask allows it (approximations: any row of those
/// heads). Every other row must be bitwise unchanged.
fn nonfinite_kv_stays_in_its_head_group_and_band(in_v: bool, value: f32) {
    for c in poison_cases() {
        let (p, d) = (&c.p, c.p.head_dim);
        let (q, k, v) = qkv(p, 8);
        let (mut kd, mut vd) = (k.to_f32(), v.to_f32());
        let at = (p.seq_k + c.key) * d + 3; // (batch 0, KV head 1, key, element 3)
        if in_v {
            vd[at] = value;
        } else {
            kd[at] = value;
        }
        let (k_bad, v_bad) = (Tensor::from_f32(&kd, p.dtype), Tensor::from_f32(&vd, p.dtype));
        let pair = PairData { bias: None, mask: c.mask.as_deref() };
        let clean_args = AttnArgs::new_with(p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap();
        let dirty_args = AttnArgs::new_with(p, q.as_ref(), k_bad.as_ref(), v_bad.as_ref(), pair).unwrap();
        let allows = |b: usize, h: usize, i: usize| match (&c.mask, p.mods.mask) {
            (Some(m), Some(shape)) => m[shape.row_offset(p, b, h, i) + c.key],
            _ => true,
        };
        let (mut exact, mut seen, mut unseen) = (0, 0, 0);
        for b in available() {
            if !b.supports(p) {
                continue;
            }
            exact += usize::from(b.exactness() == Exactness::Exact);
            let clean = b.forward(&clean_args, false).unwrap().out;
            let dirty = b.forward(&dirty_args, false).unwrap().out;
            let name = format!("{} on {} ({value} in {})", b.name(), c.name, if in_v { "V" } else { "K" });
            for (r, (x, y)) in clean.chunks(d).zip(dirty.chunks(d)).enumerate() {
                let (bh, i) = (r / p.seq_q, r % p.seq_q);
                let (bb, h) = (bh / p.heads, bh % p.heads);
                let (lo, hi) = p.key_range_at(bb, i);
                let reachable = bb == 0 && p.kv_head_of(h) == 1;
                let sees = reachable && (lo..hi).contains(&c.key) && allows(bb, h, i);
                let unchanged = x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits());
                if !reachable {
                    assert!(unchanged, "{name}: row {r} (batch {bb}, head {h}) changed by a key of another head");
                } else if b.exactness() == Exactness::Exact && sees {
                    assert!(y.iter().any(|x| !x.is_finite()), "{name}: row {i} of head {h} sees the key but is finite");
                    seen += 1;
                } else if b.exactness() == Exactness::Exact {
                    assert!(unchanged, "{name}: row {i} of head {h} cannot see key {} but changed", c.key);
                    unseen += 1;
                }
            }
        }
        // The reference and the CPU kernels run every case; each case has rows of both kinds
        // (a decode case has one row per head: seen in one case, unseen in the other).
        assert!(exact >= 3, "{}: only {exact} exact backends ran", c.name);
        assert!(seen > 0 || c.name.ends_with("_unseen"), "{}: no row sees the key", c.name);
        assert!(unseen > 0 || c.name.ends_with("_seen"), "{}: every row sees the key", c.name);
    }
}

#[test]
fn fully_masked_problem_outputs_zero_everywhere() {
    // Window (0, -1) with causal and N_q > N_k leaves early rows empty; window right=0,left=0 on a
    // cross problem where the diagonal falls before key 0 empties every row.
    let p = Problem::new(1, 2, 10, 8).with_seq_k(3).with_window(Window::new(0, 0));
    assert_eq!(p.key_range(6), (0, 0));
    let (q, k, v) = qkv(&p, 1);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    for b in available() {
        if !b.supports(&p) || b.exactness() != Exactness::Exact {
            continue;
        }
        let out = b.forward(&args, true).unwrap();
        for i in 0..7 {
            assert!(out.out[i * 8..(i + 1) * 8].iter().all(|&x| x == 0.0), "{}: empty row {i} not zero", b.name());
        }
    }
}
