//! flash-cuda on a real GPU: cross-validation against the f64 reference (same shapes and
//! tolerance rule as tests/cuda_emulated.rs), f32 conversion, and the device-resident timing API.
//! Every GPU test prints why and skips when the backend is unavailable (no driver, no device).
//! Also checks the no-GPU behaviour: availability() is an Err naming the missing piece and
//! forward() returns `AttnError::Unavailable`, without panicking.

use attnkit::backends::flash_cuda::FlashCuda;
use attnkit::backends::reference::{attention_f64, naive_same_precision};
use attnkit::{Attention, AttnArgs, AttnError, DType, Problem, Tensor, Window};
use rand::{RngExt, SeedableRng};

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
                    reason.contains("driver")
                        || reason.contains("libnvrtc")
                        || reason.contains("device"),
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
            let listed = attnkit::list_backends()
                .into_iter()
                .find(|i| i.name == "flash-cuda")
                .expect("registered");
            assert_eq!(listed.unavailable_reason.as_deref(), Some(reason.as_str()));
        }
    }
}

#[test]
fn unsupported_head_dims_are_reported() {
    let b = FlashCuda::new();
    for d in [12, 260, 4096] {
        let reasons = b.not_supported_reasons(&Problem::new(1, 1, 4, d));
        assert!(
            reasons.iter().any(|r| r.contains("head_dim")),
            "d={d}: {reasons:?}"
        );
    }
    assert!(
        b.not_supported_reasons(&Problem::new(1, 1, 4, 40))
            .is_empty()
    );
}

struct Case {
    dtype: DType,
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    causal: bool,
    window: (i64, i64),
}

const fn c(
    dtype: DType,
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    causal: bool,
    window: (i64, i64),
) -> Case {
    Case {
        dtype,
        b,
        h,
        hkv,
        nq,
        nk,
        d,
        causal,
        window,
    }
}

use DType::{BF16, F16, F32};
const CASES: &[Case] = &[
    c(F16, 1, 2, 2, 100, 100, 64, false, (-1, -1)),
    c(F16, 2, 4, 4, 1000, 1000, 64, true, (-1, -1)),
    c(BF16, 1, 2, 2, 513, 513, 128, false, (64, 16)),
    c(F16, 2, 8, 2, 777, 901, 128, true, (-1, -1)),
    c(BF16, 1, 6, 1, 257, 300, 80, false, (-1, -1)),
    c(F16, 1, 2, 1, 300, 120, 32, true, (-1, -1)),
    c(BF16, 1, 4, 2, 129, 1500, 40, false, (-1, 10)),
    c(F16, 1, 2, 2, 200, 333, 96, true, (50, -1)),
    c(BF16, 1, 2, 2, 190, 190, 160, true, (-1, -1)),
    c(F16, 1, 2, 1, 150, 170, 192, false, (-1, -1)),
    c(BF16, 1, 2, 2, 333, 129, 256, false, (7, 7)),
    c(F16, 1, 1, 1, 1, 1, 48, false, (-1, -1)),
    c(F32, 1, 2, 2, 200, 200, 64, true, (-1, -1)),
];

#[test]
fn gpu_kernel_matches_reference() {
    let Some(b) = backend_or_skip() else { return };
    for (i, c) in CASES.iter().enumerate() {
        let p = Problem::new(c.b, c.h, c.nq, c.d)
            .with_kv_heads(c.hkv)
            .with_seq_k(c.nk)
            .with_causal(c.causal)
            .with_window(Window::new(c.window.0, c.window.1))
            .with_dtype(c.dtype);
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
        let mut gen_t = |n: usize| {
            Tensor::from_f32(
                &(0..n)
                    .map(|_| rng.random_range(-2.0f32..2.0))
                    .collect::<Vec<_>>(),
                c.dtype,
            )
        };
        let (q, k, v) = (gen_t(p.q_len()), gen_t(p.kv_len()), gen_t(p.kv_len()));
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let got = b
            .forward(&args, true)
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        let (o64, l64) = attention_f64(&args);
        // f32 inputs run in f16 (documented), so their tolerance is f16's.
        let tol_problem = if c.dtype == F32 {
            p.clone().with_dtype(F16)
        } else {
            p.clone()
        };
        let (qt, kt, vt) = (
            Tensor::from_f32(&q.to_f32(), tol_problem.dtype),
            Tensor::from_f32(&k.to_f32(), tol_problem.dtype),
            Tensor::from_f32(&v.to_f32(), tol_problem.dtype),
        );
        let naive = naive_same_precision(
            &AttnArgs::new(&tol_problem, qt.as_ref(), kt.as_ref(), vt.as_ref()).unwrap(),
        );
        let max_err = |x: &[f32]| {
            x.iter()
                .zip(&o64)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max)
        };
        let (err, naive_err) = (max_err(&got.out), max_err(&naive));
        let tol = 2.0 * naive_err + 1e-4;
        eprintln!("{p}: max|O-ref| {err:.3e}, naive {naive_err:.3e}");
        assert!(err <= tol, "{p}: {err:.3e} > {tol:.3e}");
        for (a, r) in got.lse.as_ref().unwrap().iter().zip(&l64) {
            if r.is_infinite() {
                assert_eq!(*a, f32::NEG_INFINITY, "{p}");
            } else {
                assert!(
                    (*a as f64 - r).abs() <= 1e-3 + 1e-3 * r.abs(),
                    "{p}: LSE {a} vs {r}"
                );
            }
        }
    }
}

#[test]
fn device_resident_bench_api_times_each_rep() {
    let Some(b) = backend_or_skip() else { return };
    let p = Problem::new(1, 4, 1024, 128)
        .with_causal(true)
        .with_dtype(DType::BF16);
    let times = b.bench_device(&p, 3).expect("bench_device");
    assert_eq!(times.len(), 3);
    assert!(times.iter().all(|t| t.is_finite() && *t > 0.0), "{times:?}");
}
