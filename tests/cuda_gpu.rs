//! flash-cuda on a real GPU: cross-validation against the f64 reference over the shared shape
//! table × {f32, f16, bf16} with the same rule as tests/cross_validation.rs (f32 judged at f16,
//! since it is rounded to f16 on the way in), and the device-resident timing API.
//! Every GPU test prints why and skips when the backend is unavailable (no driver, no device).
//! Also checks the no-GPU behaviour: availability() is an Err naming the missing piece and
//! forward() returns `AttnError::Unavailable`, without panicking.

mod common;

use attnkit::backends::flash_cuda::FlashCuda;
use attnkit::backends::reference::attention_f64;
use attnkit::validate::{compare, exact_tolerance};
use attnkit::{Attention, AttnArgs, AttnError, DType, Problem, Tensor};

fn backend_or_skip() -> Option<FlashCuda> {
    let b = FlashCuda::new();
    match b.availability() {
        Ok(()) => Some(b),
        Err(why) => {
            eprintln!("SKIPPED: flash-cuda unavailable: {why}");
            None
        }
    }
}

#[test]
fn without_gpu_availability_is_an_error_and_forward_is_unavailable() {
    let b = FlashCuda::new();
    let p = Problem::new(1, 1, 8, 64).with_dtype(DType::F16);
    let x = Tensor::from_f32(&vec![0.5; p.q_len()], DType::F16);
    let args = AttnArgs::new(&p, x.as_ref(), x.as_ref(), x.as_ref()).unwrap();
    match b.availability() {
        Ok(()) => {
            eprintln!("SKIPPED: a CUDA GPU is present; the no-GPU path is not exercised here")
        }
        Err(reason) => {
            let driver_present = std::path::Path::new("/dev/nvidiactl").exists();
            if !driver_present {
                assert!(
                    reason.contains("driver") || reason.contains("libnvrtc") || reason.contains("device"),
                    "{reason}"
                );
            }
            match b.forward(&args, true) {
                Err(AttnError::Unavailable { backend, reason: r }) => {
                    assert_eq!(backend, "flash-cuda");
                    assert_eq!(r, reason);
                }
                other => panic!("expected Unavailable, got {other:?}"),
            }
            let listed = attnkit::list_backends().into_iter().find(|i| i.name == "flash-cuda").expect("registered");
            assert_eq!(listed.unavailable_reason.as_deref(), Some(reason.as_str()));
        }
    }
}

#[test]
fn unsupported_head_dims_are_reported() {
    let b = FlashCuda::new();
    for d in [12, 260, 4096] {
        let reasons = b.not_supported_reasons(&Problem::new(1, 1, 4, d));
        assert!(reasons.iter().any(|r| r.contains("head_dim")), "d={d}: {reasons:?}");
    }
    assert!(b.not_supported_reasons(&Problem::new(1, 1, 4, 40)).is_empty());
}

#[test]
fn gpu_kernel_matches_reference_on_the_shape_table() {
    let Some(b) = backend_or_skip() else { return };
    let mut failures = Vec::new();
    for case in common::shape_table() {
        for dtype in DType::ALL {
            let p = case.problem.clone().with_dtype(dtype);
            let reasons = b.not_supported_reasons(&p);
            if !reasons.is_empty() {
                eprintln!("skip {} {dtype}: {}", case.name, reasons.join("; "));
                continue;
            }
            let (q, k, v) = common::qkv(&p, 7);
            let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            let got = match b.forward(&args, true) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{} {dtype}: {e}", case.name));
                    continue;
                }
            };
            let (oracle, oracle_lse) = attention_f64(&args);
            let precision = b.compute_precision(&args);
            let stats = compare(&got.out, &oracle);
            let tol = exact_tolerance(&args, &oracle, precision);
            eprintln!("{} {dtype}: max|O-ref| {:.3e} bound {:.3e}", case.name, stats.max_abs, tol.bound);
            if stats.non_finite > 0 || stats.max_abs > tol.bound {
                failures.push(format!("{} {dtype}: {:.3e} > {:.3e}", case.name, stats.max_abs, tol.bound));
            }
            for (a, r) in got.lse.as_ref().unwrap().iter().zip(&oracle_lse) {
                let ok = if *r == f64::NEG_INFINITY {
                    *a == f32::NEG_INFINITY
                } else {
                    (*a as f64 - r).abs() <= 1e-4 * r.abs().max(1.0)
                };
                if !ok {
                    failures.push(format!("{} {dtype}: LSE {a} vs {r}", case.name));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn device_resident_bench_api_times_each_rep() {
    let Some(b) = backend_or_skip() else { return };
    let p = Problem::new(1, 4, 1024, 128).with_causal(true).with_dtype(DType::BF16);
    let times = b.bench_device(&p, 3).expect("bench_device");
    assert_eq!(times.len(), 3);
    assert!(times.iter().all(|t| t.is_finite() && *t > 0.0), "{times:?}");
}
