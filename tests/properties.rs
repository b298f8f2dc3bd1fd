//! Property tests: random shapes and options, every available exact backend against the oracle
//! under the FlashAttention tolerance rule; invalid problems always give typed errors.

mod common;

use attnkit::validate::{compare, exact_tolerance};
use attnkit::{AttnArgs, DType, Exactness, Problem, Window, backend, backend_names};
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
