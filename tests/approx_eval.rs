//! The mean-of-V baseline against the oracle where it is exact, and the input families' use in
//! accuracy figures.
//!
//! With Q = 0 every score is 0, so softmax attention *is* uniform attention over each row's
//! allowed keys: `mean_of_v` must match `reference` on every shape of the shared table (masks,
//! empty rows, GQA, N_q ≠ N_k; f32 only: both read V widened to f32, so the dtype changes
//! nothing). Tolerance 1e-12 relative to max(1, max|O|): both sum the same f64 values, in
//! different orders.

mod common;

use attnkit::approx_eval::{Accuracy, accuracy, mean_of_v, rel_fro};
use attnkit::backends::reference::attention_f64;
use attnkit::inputs::{InputFamily, generate};
use attnkit::{AttnArgs, BackendOptions, DType, Problem, Tensor, backend_with};
use common::{qkv, shape_table};

#[test]
fn mean_of_v_is_the_oracle_when_all_scores_are_equal() {
    let mut checked = 0;
    for case in shape_table() {
        let p = &case.problem;
        let (_, k, v) = qkv(p, 3);
        let q = Tensor::from_f32(&vec![0.0; p.q_len()], DType::F32);
        let args = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (want, _) = attention_f64(&args);
        let got = mean_of_v(&args);
        let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
        assert!(err < 1e-12, "{}: mean-of-V differs from the oracle by {err:.2e}", case.name);
        checked += 1;
    }
    assert_eq!(checked, shape_table().len());
}

#[test]
fn baseline_is_not_exact_when_scores_differ() {
    let p = Problem::new(1, 2, 64, 16);
    let (q, k, v) = qkv(&p, 4);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let (want, _) = attention_f64(&args);
    let err = rel_fro(&mean_of_v(&args), &want);
    assert!(err > 0.1 && err < 1.5, "baseline error {err}");
}

/// What the families are for: on structured inputs the landmark methods beat the baseline by
/// far, on local-global inputs they do not come close to an exact method. (Small N so the
/// oracle is quick; the N = 4096 figures come from examples/approx_frontier.rs.)
#[test]
fn families_separate_where_approximations_win() {
    let p = Problem::new(1, 1, 256, 64);
    let score = |family, name: &str| -> Accuracy {
        let (q, k, v) = generate(family, &p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (want, _) = attention_f64(&args);
        let base = rel_fro(&mean_of_v(&args), &want);
        // k and m a quarter and an eighth of N, as k = 256 and m = 64 are at N = 1024.
        let opts = BackendOptions { proj_dim: Some(64), landmarks: Some(32), ..Default::default() };
        accuracy(backend_with(name, &opts).unwrap().as_ref(), &args, &want, base).unwrap()
    };
    let structured = InputFamily::Structured { sharpness: attnkit::inputs::DEFAULT_SHARPNESS };
    for name in ["nystrom", "linformer"] {
        let a = score(structured, name);
        assert!(a.gain() > 5.0, "{name} on structured: {a:?}");
        let a = score(InputFamily::LocalGlobal, name);
        assert!(a.rel_err > 0.3, "{name} on local-global: {a:?}");
    }
    let exact = score(InputFamily::LocalGlobal, "flash-cpu");
    assert!(exact.rel_err < 1e-5 && exact.beats_baseline(), "{exact:?}");
}
