//! Property tests: random shapes and options, every available exact backend against the oracle
//! under the FlashAttention tolerance rule; invalid problems always give typed errors. Score
//! modifiers (ALiBi, softcap, sinks, used key lengths, bias, boolean mask, packed varlen) are
//! drawn on top of the random problems.

mod common;

use attnkit::validate::{compare, exact_tolerance};
use attnkit::{AttnArgs, DType, Exactness, PairData, Problem, Tensor, Window, backend, backend_names};
use common::qkv;
use proptest::prelude::*;

fn problem_strategy() -> impl Strategy<Value = Problem> {
    (
        1usize..=2,
        prop_oneof![Just((1usize, 1usize)), Just((2, 2)), Just((4, 2)), Just((3, 1))],
        1usize..=90,
        1usize..=90,
        prop_oneof![Just(8usize), Just(16), Just(33), Just(64)],
        any::<bool>(),
        (-1i64..=20, -1i64..=20),
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        prop_oneof![Just(None), (0.01f32..2.0).prop_map(Some)],
    )
        .prop_map(|(b, (h, hkv), nq, nk, d, causal, (l, r), dtype, scale)| {
            let mut p = Problem::new(b, h, nq, d)
                .with_kv_heads(hkv)
                .with_seq_k(nk)
                .with_causal(causal)
                .with_window(Window::new(l, r))
                .with_dtype(dtype);
            if let Some(s) = scale {
                p.scale = s;
            }
            p
        })
}

/// Modifier choices drawn on top of a random problem: (alibi, softcap, sinks, seqused_k,
/// bias, mask, varlen split) with the data seeds.
type ModChoice = (bool, Option<f32>, Option<f32>, bool, bool, Option<u8>, Option<usize>);

fn mod_strategy() -> impl Strategy<Value = ModChoice> {
    (
        any::<bool>(),
        prop_oneof![Just(None), (0.3f32..40.0).prop_map(Some)],
        prop_oneof![Just(None), (-4.0f32..4.0).prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(None), (0u8..=100).prop_map(Some)],
        prop_oneof![Just(None), (1usize..=4).prop_map(Some)],
    )
}

/// Applies the choices to `p`; returns the problem and its bias/mask data.
fn with_mods(p: &Problem, c: ModChoice, seed: u64) -> (Problem, Option<Tensor>, Option<Vec<bool>>) {
    let (alibi, softcap, sink, used, bias, mask_pct, split) = c;
    let mut p = p.clone();
    if let Some(s) = split {
        // Varlen needs batch 1: cut the packed rows and keys into up to `s` sequences.
        p.batch = 1;
        let cut = |n: usize| (0..=s).map(|i| n * i / s).collect::<Vec<_>>();
        let (cq, ck) = (cut(p.seq_q), cut(p.seq_k));
        p = p.with_varlen(cq, ck);
    }
    let entries = p.num_seqs();
    if alibi {
        p.mods.alibi_slopes = Some(attnkit::alibi_slopes(p.heads));
    }
    if let Some(c) = softcap {
        p = p.with_softcap(c);
    }
    if let Some(x) = sink {
        p.mods.sinks = Some((0..p.heads).map(|h| x + h as f32).collect());
    }
    if used {
        let keys: Vec<usize> = match &p.mods.varlen {
            Some(v) => (0..entries).map(|e| v.cu_seqlens_k[e + 1] - v.cu_seqlens_k[e]).collect(),
            None => vec![p.seq_k; entries],
        };
        p.mods.seqused_k = Some(keys.iter().enumerate().map(|(e, &k)| k.min((seed as usize + 3 * e) % 9)).collect());
    }
    let pairs = p.seq_q * p.seq_k;
    let b = bias.then(|| {
        p.mods.bias = Some(attnkit::PairShape { batch: 1, heads: p.heads });
        Tensor::from_f32(&attnkit::seeded::normal_values(p.heads * pairs, seed), DType::F32)
    });
    let m = mask_pct.map(|pct| {
        p.mods.mask = Some(attnkit::PairShape { batch: p.batch, heads: 1 });
        attnkit::seeded::block_sparse_mask(p.batch * p.seq_q, p.seq_k, 3, pct as f64 / 100.0, seed)
    });
    (p, b, m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn exact_backends_match_the_oracle(p in problem_strategy(), seed in 0u64..1000) {
        let (q, k, v) = qkv(&p, seed);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (oracle, _) = attnkit::backends::reference::attention_f64(&args);
        for name in backend_names() {
            let b = backend(name).unwrap();
            if b.exactness() != Exactness::Exact || b.availability().is_err() || !b.supports(&p) {
                continue;
            }
            let out = b.forward(&args, false).unwrap().out;
            let precision = b.compute_precision(&args);
            let tol = exact_tolerance(&args, &oracle, precision);
            let s = compare(&out, &oracle);
            prop_assert!(s.within(tol.bound),
                "{name} on {p}: max_abs {:.3e} > {:.3e}", s.max_abs, tol.bound);
        }
    }

    #[test]
    fn exact_backends_match_the_oracle_with_modifiers(p in problem_strategy(), c in mod_strategy(), seed in 0u64..1000) {
        let (p, bias, mask) = with_mods(&p, c, seed);
        prop_assume!(p.validate().is_ok());
        let (q, k, v) = qkv(&p, seed);
        let pair = PairData { bias: bias.as_ref().map(|b| b.as_ref()), mask: mask.as_deref() };
        let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap();
        let (oracle, _) = attnkit::backends::reference::attention_f64(&args);
        let tol = exact_tolerance(&args, &oracle, p.dtype);
        let mut checked = 0;
        for name in ["sdpa", "flash-cpu", "local"] {
            let b = backend(name).unwrap();
            if b.availability().is_err() || !b.supports(&p) {
                continue;
            }
            let s = compare(&b.forward(&args, false).unwrap().out, &oracle);
            prop_assert!(s.within(tol.bound), "{name} on {p}: {s:?} > {:.3e}", tol.bound);
            checked += 1;
        }
        prop_assert!(checked >= 2, "sdpa and flash-cpu support every modifier; checked {checked}");
    }

    #[test]
    fn invalid_problems_are_rejected_without_panicking(
        b in 0usize..3, h in 0usize..5, hkv in 0usize..5, nq in 0usize..4, nk in 0usize..4, d in 0usize..5,
        l in -3i64..3, r in -3i64..3, scale in prop_oneof![Just(f32::NAN), Just(-1.0f32), Just(0.0f32), Just(0.5f32), Just(f32::INFINITY)],
    ) {
        let p = Problem { batch: b, heads: h, kv_heads: hkv, seq_q: nq, seq_k: nk, head_dim: d, scale,
            causal: false, window: Window::new(l, r), dtype: DType::F32, mods: Default::default() };
        let valid = p.validate().is_ok();
        // Buffers sized by saturating products so even invalid problems get a plausible length.
        let q = vec![0.5f32; b * h * nq * d];
        let kv = vec![0.5f32; b * hkv * nk * d];
        let res = AttnArgs::new(&p, &q, &kv, &kv);
        prop_assert_eq!(res.is_ok(), valid);
        if let Ok(args) = res {
            for name in backend_names() {
                let bk = backend(name).unwrap();
                if bk.availability().is_ok() {
                    let out = bk.forward(&args, true);
                    prop_assert!(out.is_ok() || !bk.supports(&p), "{}: {:?}", name, out.err());
                }
            }
        }
    }
}
