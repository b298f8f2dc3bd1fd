//! Every registered backend against the f64 oracle, over the shared shape table × all dtypes.
//!
//! Exact backends are held to FlashAttention's rule (`attnkit::validate::exact_tolerance`):
//! max abs error ≤ 2 × the naive same-precision error + 4·u(dtype)·max(1, max|O|). Their LSE
//! must match the oracle's to 1e-4·max(1, |LSE|) (scores are accumulated in f32 for every
//! dtype, so this does not depend on the input dtype), with −∞ exactly where a row is empty.
//! Approximate backends are only required to produce finite output of the right shape here;
//! their accuracy is tested against their own formulas in their own test files.
//! A backend that is unavailable (no CUDA) or does not support a case is skipped with the
//! reason printed.

mod common;

use attnkit::validate::{compare, exact_tolerance};
use attnkit::{AttnArgs, DType, Exactness, Problem, Window, backend, backend_names, merge_partials};
use common::{qkv, shape_table};

const LSE_REL_TOL: f64 = 1e-4;

#[test]
fn every_backend_matches_the_oracle_on_the_shape_table() {
    let names: Vec<&str> = backend_names().into_iter().filter(|n| *n != "reference").collect();
    let mut checked = 0usize;
    let mut failures = Vec::new();
    // Worst error/bound per (backend, dtype), printed at the end (the README quotes it).
    let mut worst: std::collections::BTreeMap<(String, DType), (f64, f64, f64, &str)> = Default::default();
    for case in shape_table() {
        for dtype in DType::ALL {
            let p = case.problem.clone().with_dtype(dtype);
            let (q, k, v) = qkv(&p, 7);
            let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            let (oracle, oracle_lse) = attnkit::backends::reference::attention_f64(&args);
            // The tolerance depends on the inputs and the precision only: compute it once per
            // precision, not once per backend (the naive run is as costly as the oracle).
            let mut tolerances: Vec<(DType, attnkit::validate::Tolerance)> = Vec::new();
            for name in &names {
                let b = backend(name).unwrap();
                if let Err(why) = b.availability() {
                    if case.name == "n1" && dtype == DType::F32 {
                        println!("skip {name}: unavailable: {why}");
                    }
                    continue;
                }
                let reasons = b.not_supported_reasons(&p);
                if !reasons.is_empty() {
                    println!("skip {name} on {} {dtype}: {}", case.name, reasons.join("; "));
                    continue;
                }
                let res = b.forward(&args, b.exactness() == Exactness::Exact);
                let res = match res {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{name} {} {dtype}: error {e}", case.name));
                        continue;
                    }
                };
                checked += 1;
                let stats = compare(&res.out, &oracle);
                if b.exactness() == Exactness::Approximate {
                    if stats.non_finite > 0 {
                        failures.push(format!("{name} {} {dtype}: {} non-finite", case.name, stats.non_finite));
                    }
                    continue;
                }
                let precision = b.compute_precision(&args);
                let tol = match tolerances.iter().find(|(d, _)| *d == precision) {
                    Some((_, t)) => *t,
                    None => {
                        let t = exact_tolerance(&args, &oracle, precision);
                        tolerances.push((precision, t));
                        t
                    }
                };
                let ratio = stats.max_abs / tol.bound;
                let w = worst.entry((name.to_string(), dtype)).or_insert((0.0, 0.0, 0.0, ""));
                if ratio >= w.0 {
                    *w = (ratio, stats.max_abs, tol.bound, case.name);
                }
                if !stats.within(tol.bound) {
                    failures.push(format!(
                        "{name} {} {dtype}: max_abs {:.3e} > bound {:.3e} (naive {:.3e}), non-finite {}",
                        case.name, stats.max_abs, tol.bound, tol.naive_err, stats.non_finite
                    ));
                }
                if let Some(lse) = res.lse {
                    for (i, (&got, &want)) in lse.iter().zip(&oracle_lse).enumerate() {
                        let ok = if want == f64::NEG_INFINITY {
                            got == f32::NEG_INFINITY
                        } else {
                            (got as f64 - want).abs() <= LSE_REL_TOL * want.abs().max(1.0)
                        };
                        if !ok {
                            failures.push(format!("{name} {} {dtype}: lse[{i}] = {got}, oracle {want}", case.name));
                            break;
                        }
                    }
                }
            }
        }
    }
    println!("checked {checked} (backend, case, dtype) combinations");
    println!("worst error / bound per exact backend and dtype:");
    for ((name, dtype), (ratio, err, bound, case)) in &worst {
        println!("  {name:<10} {dtype:<5} {ratio:.1e}  (max_abs {err:.2e} vs bound {bound:.2e}, case {case})");
    }
    assert!(checked > 0, "no backend was checked");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn empty_rows_output_zero_for_every_exact_backend() {
    // N_q > N_k with causal: the first N_q − N_k rows see no key.
    let p = Problem::new(1, 1, 20, 16).with_seq_k(5).with_causal(true);
    let (q, k, v) = qkv(&p, 3);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    for name in backend_names() {
        let b = backend(name).unwrap();
        if b.availability().is_err() || !b.supports(&p) || b.exactness() != Exactness::Exact {
            println!("skip {name}: unavailable, unsupported or approximate");
            continue;
        }
        let out = b.forward(&args, true).unwrap();
        assert!(out.out[..15 * 16].iter().all(|&x| x == 0.0), "{name}: empty rows must be 0");
        assert!(out.lse.unwrap()[..15].iter().all(|&x| x == f32::NEG_INFINITY), "{name}: empty rows have LSE −∞");
    }
}

#[test]
fn split_kv_merge_reproduces_full_attention() {
    // Attention over keys [0, s) and [s, N) separately, merged with their LSEs, equals full attention.
    let (n, split, d) = (97usize, 40usize, 32usize);
    let full = Problem::new(1, 2, n, d);
    let (q, k, v) = qkv(&full, 11);
    let (qf, kf, vf) = (q.to_f32(), k.to_f32(), v.to_f32());
    let take = |x: &[f32], lo: usize, hi: usize| -> Vec<f32> {
        (0..2).flat_map(|h| x[(h * n + lo) * d..(h * n + hi) * d].to_vec()).collect()
    };
    for name in backend_names() {
        let b = backend(name).unwrap();
        if b.availability().is_err() || b.exactness() != Exactness::Exact || name == "auto" || !b.supports(&full) {
            continue;
        }
        let want = b.forward(&AttnArgs::new(&full, &qf, &kf, &vf).unwrap(), true).unwrap();
        let part = |lo: usize, hi: usize| {
            let p = full.clone().with_seq_k(hi - lo);
            let (kp, vp) = (take(&kf, lo, hi), take(&vf, lo, hi));
            b.forward(&AttnArgs::new(&p, &qf, &kp, &vp).unwrap(), true).unwrap()
        };
        let (mut a, bpart) = (part(0, split), part(split, n));
        let mut a_lse = a.lse.take().unwrap();
        merge_partials(&mut a.out, &mut a_lse, &bpart.out, bpart.lse.as_ref().unwrap(), d).unwrap();
        let err = a.out.iter().zip(&want.out).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-5, "{name}: merged split-KV differs from full by {err}");
        let lerr = a_lse.iter().zip(want.lse.as_ref().unwrap()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(lerr < 1e-4, "{name}: merged LSE differs by {lerr}");
    }
}

#[test]
fn backends_are_usable_as_trait_objects_and_by_name() {
    let all: Vec<Box<dyn attnkit::Attention>> = backend_names().iter().map(|n| backend(n).unwrap()).collect();
    assert!(all.iter().any(|b| b.name() == "reference"));
    match backend("no-such-backend") {
        Err(attnkit::AttnError::UnknownBackend { name, known }) => {
            assert_eq!(name, "no-such-backend");
            assert!(known.iter().any(|k| k == "sdpa"));
        }
        other => panic!("expected UnknownBackend, got {other:?}"),
    }
    let listed = attnkit::list_backends();
    assert_eq!(listed.len(), backend_names().len());
    // `auto` always finds an exact backend for a plain CPU problem.
    let p = Problem::new(1, 1, 8, 8).with_window(Window::new(2, 2));
    let auto = attnkit::registry::auto(&Default::default());
    let chosen = auto.choose(&p).expect("auto picks something");
    assert_eq!(chosen.exactness(), Exactness::Exact);
}

#[test]
fn mismatched_inputs_are_typed_errors() {
    let p = Problem::new(1, 2, 8, 4);
    let q = vec![0.0f32; p.q_len()];
    let short = vec![0.0f32; p.kv_len() - 1];
    let e = AttnArgs::new(&p, &q, &short, &short).unwrap_err();
    assert!(matches!(e, attnkit::AttnError::Shape(_)), "{e}");
    let half_q: Vec<half::f16> = vec![half::f16::ZERO; p.q_len()];
    let kv = vec![0.0f32; p.kv_len()];
    let e = AttnArgs::new(&p, &half_q, &kv, &kv).unwrap_err();
    assert!(e.to_string().contains("dtype f16"), "{e}");
    let args = AttnArgs::new(&p, &q, &kv, &kv).unwrap();
    let mut out = vec![0.0f32; 3];
    let e = backend("sdpa").unwrap().forward_into(&args, &mut out, None).unwrap_err();
    assert!(e.to_string().contains("out has 3 elements"), "{e}");
}

#[test]
fn auto_prefers_local_for_narrow_bands_and_flash_cpu_otherwise() {
    let auto = attnkit::registry::auto(&Default::default());
    let narrow = Problem::new(1, 1, 4096, 64).with_window(Window::new(255, 0));
    let wide = Problem::new(1, 1, 4096, 64).with_window(Window::new(2047, 2047));
    let dense = Problem::new(1, 1, 4096, 64).with_causal(true);
    let pick = |p: &Problem| auto.choose(p).map(|b| b.name().to_string());
    if backend("local").is_ok_and(|b| b.availability().is_ok()) {
        assert_eq!(pick(&narrow).as_deref(), Some("local"));
    }
    if backend("flash-cpu").is_ok_and(|b| b.availability().is_ok()) {
        assert_eq!(pick(&wide).as_deref(), Some("flash-cpu"));
        assert_eq!(pick(&dense).as_deref(), Some("flash-cpu"));
    }
}
