//! Timing one backend on one set of inputs: median of reps after a warm-up, with the
//! peak-heap probe on the host, or device-resident timing for a CUDA backend.

use super::median;
use crate::alloc_counter::PeakScope;
use crate::attention::{Attention, AttnArgs, Device};
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use serde::Serialize;
use std::time::Instant;

/// How a time was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// Wall clock around `forward_into` on the host (includes transfers for a device backend).
    Host,
    /// Device-resident timing (inputs already on the device, synchronized events).
    Device,
}

/// The result of timing one backend on one problem.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub times_s: Vec<f64>,
    pub median_s: f64,
    /// Peak heap bytes above what was live before the first call (inputs and the output buffer
    /// excluded); `None` when the counting allocator is not installed or timing was on-device.
    pub peak_bytes: Option<u64>,
    pub timing: Timing,
    /// Why device timing failed, when a CUDA backend had to be timed on the host instead; the
    /// host time then includes transfers, and whoever prints the figure must say so.
    pub device_timing_error: Option<String>,
}

/// Device-resident timing for a GPU backend: per-rep seconds with the inputs already on the
/// device ([`Attention::time_on_device`], CUDA events for flash-cuda). An error when the backend
/// has no device timing (CPU backends) or the timing itself failed.
pub fn device_timing(backend: &dyn Attention, problem: &Problem, reps: usize) -> Result<Vec<f64>> {
    match backend.time_on_device(problem, reps) {
        Some(times) => times,
        None => Err(AttnError::invalid(format!(
            "`{}` runs on the {}; device timing applies to CUDA backends",
            backend.name(),
            backend.device()
        ))),
    }
}

/// Times `backend` on `args`: one warm-up call, then up to `reps` timed calls, stopping early
/// once `max_total_s` seconds have been spent. If the warm-up alone exceeds `max_total_s`, its
/// time is the only sample (so a slow run costs one call, not reps + 1). Errors from the backend
/// (unsupported, memory budget, ...) are returned before anything is timed.
pub fn measure(backend: &dyn Attention, args: &AttnArgs<'_>, reps: usize, max_total_s: f64) -> Result<Measurement> {
    let mut out = vec![0.0f32; args.problem().out_len()];
    measure_into(backend, args, reps, max_total_s, &mut out)
}

/// [`measure`] writing into a caller-provided output (which then holds the backend's result,
/// for error checks). `out.len()` must be `problem.out_len()`. A CUDA backend is timed on the
/// device when it can be, and `out` is then filled by one extra host call; when its device
/// timing fails, it is timed on the host and the failure is kept in
/// [`Measurement::device_timing_error`].
pub fn measure_into(
    backend: &dyn Attention,
    args: &AttnArgs<'_>,
    reps: usize,
    max_total_s: f64,
    out: &mut [f32],
) -> Result<Measurement> {
    let p = args.problem();
    let reps = reps.max(1);
    let mut device_timing_error = None;
    if backend.device() == Device::Cuda {
        match backend.time_on_device(p, reps) {
            Some(Ok(times)) => {
                backend.forward_into(args, out, None)?;
                return Ok(Measurement {
                    median_s: median(&times),
                    times_s: times,
                    peak_bytes: None,
                    timing: Timing::Device,
                    device_timing_error: None,
                });
            }
            Some(Err(e)) => device_timing_error = Some(e.to_string()),
            None => {}
        }
    }
    let scope = PeakScope::start();
    let start = Instant::now();
    backend.forward_into(args, out, None)?;
    let warm = start.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(reps);
    if warm > max_total_s {
        times.push(warm);
    } else {
        let begin = Instant::now();
        for _ in 0..reps {
            let t = Instant::now();
            backend.forward_into(args, out, None)?;
            times.push(t.elapsed().as_secs_f64());
            if begin.elapsed().as_secs_f64() > max_total_s {
                break;
            }
        }
    }
    std::hint::black_box(&out);
    Ok(Measurement {
        median_s: median(&times),
        times_s: times,
        peak_bytes: scope.peak_extra(),
        timing: Timing::Host,
        device_timing_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fake::Fake;

    #[test]
    fn measure_times_a_cpu_backend_on_the_host() {
        let p = Problem::new(1, 1, 16, 8);
        let (q, k, v) = crate::seeded::normal_qkv(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let sdpa = crate::backend("sdpa").unwrap();
        let m = measure(sdpa.as_ref(), &args, 3, 10.0).unwrap();
        assert_eq!(m.times_s.len(), 3);
        assert!(m.median_s > 0.0);
        assert_eq!(m.timing, Timing::Host);
        assert!(m.device_timing_error.is_none());
        assert!(device_timing(sdpa.as_ref(), &p, 1).is_err());
    }

    /// Before the fix a failing device timer was dropped silently and the host time reported as
    /// if nothing had happened.
    #[test]
    fn a_failed_device_timing_is_kept_not_swallowed() {
        let p = Problem::new(1, 1, 16, 8);
        let (q, k, v) = crate::seeded::normal_qkv(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let broken = Fake::cuda(Some(Err("event record failed".into())));
        let m = measure(&broken, &args, 2, 10.0).unwrap();
        assert_eq!(m.timing, Timing::Host);
        assert!(m.device_timing_error.as_deref().unwrap().contains("event record failed"), "{m:?}");
        let working = Fake::cuda(Some(Ok(vec![2e-3, 1e-3, 3e-3])));
        let m = measure(&working, &args, 3, 10.0).unwrap();
        assert_eq!((m.timing, m.median_s, m.device_timing_error), (Timing::Device, 2e-3, None));
    }
}
