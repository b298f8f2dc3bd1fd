//! Measurement machinery shared by `attnkit bench`, `attnkit report` and benches/scaling.rs:
//! seeded inputs, median timing with the peak-heap probe, the f32 GEMM ceiling, thread pools,
//! and the device-timing hook for CUDA backends.
//!
//! GFLOP/s everywhere is [`Problem::flops`] (4·D FLOPs per allowed query–key pair, the cost
//! of exact attention) divided by the median time, whatever the backend actually computes, so
//! an approximation that skips work shows up as "more GFLOP/s", i.e. as effective throughput.

use crate::alloc_counter::PeakScope;
use crate::attention::{Attention, AttnArgs, Device};
use crate::error::{AttnError, Result};
use crate::linalg::{MatRef, Par, sgemm};
use crate::problem::Problem;
use serde::Serialize;
use std::time::Instant;

/// Median of a non-empty sample (mean of the middle two for even sizes); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { 0.5 * (v[m - 1] + v[m]) }
}

/// `Problem::flops()` per second, in GFLOP/s.
pub fn gflops(p: &Problem, seconds: f64) -> f64 {
    p.flops() / seconds / 1e9
}

/// Runs `f` inside a rayon pool of `threads` threads (`None`: rayon's default, all cores).
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(AttnError::invalid("--threads must be ≥ 1, got 0")),
        Some(t) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|e| AttnError::invalid(format!("cannot build a {t}-thread pool: {e}")))?;
            Ok(pool.install(f))
        }
    }
}

/// The machine's f32 GEMM throughput, measured with [`sgemm`] in the current rayon pool.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct GemmCeiling {
    /// C(m×n) = A(m×k)·B(k×n)
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub threads: usize,
    pub median_s: f64,
    pub gflops: f64,
}

/// Median of `reps` timed `size`³ GEMMs (after one warm-up), using every thread of the
/// current rayon pool, so call it inside the same pool the backends will run in.
/// Side of the square sgemm the bench and report use as the machine's f32 GEMM ceiling. 2048³
/// (17 GFLOP) is large enough that packing and thread start-up stop mattering; at 1024³ the
/// `gemm` crate measured ~10% lower here, which let fused attention tiles exceed "the ceiling".
pub const GEMM_CEILING_SIZE: usize = 2048;

pub fn gemm_ceiling(size: usize, reps: usize) -> Result<GemmCeiling> {
    if size == 0 || reps == 0 {
        return Err(AttnError::invalid("gemm ceiling: size and reps must be ≥ 1"));
    }
    let a: Vec<f32> = (0..size * size).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let b: Vec<f32> = (0..size * size).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let mut c = vec![0.0f32; size * size];
    let mut run = || {
        let a = MatRef::row_major(&a, size, size);
        let b = MatRef::row_major(&b, size, size);
        sgemm(a, b, &mut c, size, 1.0, 0.0, Par::Rayon)
    };
    run()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let median_s = median(&times);
    let flops = 2.0 * (size as f64).powi(3);
    Ok(GemmCeiling {
        m: size,
        n: size,
        k: size,
        threads: rayon::current_num_threads(),
        median_s,
        gflops: flops / median_s / 1e9,
    })
}

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
}

/// Device-resident timing for a GPU backend: per-rep seconds with the inputs already on the
/// device ([`Attention::time_on_device`], CUDA events for flash-cuda). [`measure`] falls back
/// to host timing (marked as including transfers) when this errors.
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
/// for error checks). `out.len()` must be `problem.out_len()`. With device timing, `out` is
/// filled by one extra host call after timing.
pub fn measure_into(
    backend: &dyn Attention,
    args: &AttnArgs<'_>,
    reps: usize,
    max_total_s: f64,
    out: &mut [f32],
) -> Result<Measurement> {
    let p = args.problem();
    let reps = reps.max(1);
    if backend.device() == Device::Cuda
        && let Ok(times) = device_timing(backend, p, reps)
    {
        backend.forward_into(args, out, None)?;
        return Ok(Measurement { median_s: median(&times), times_s: times, peak_bytes: None, timing: Timing::Device });
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
    Ok(Measurement { median_s: median(&times), times_s: times, peak_bytes: scope.peak_extra(), timing: Timing::Host })
}

/// One line of `attnkit bench --json` (and one row of the report's raw results).
#[derive(Clone, Debug, Serialize)]
pub struct BenchRecord {
    pub backend: String,
    /// "cpu" or "cuda" ("" when the backend could not be built).
    pub device: String,
    /// Parameters that distinguish variants of one backend (`k=128`, `m=64`, `w=256`), or "".
    pub variant: String,
    pub seq: usize,
    pub seq_kv: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub batch: usize,
    pub causal: bool,
    /// "L,R" (FlashAttention semantics, -1 = unbounded).
    pub window: String,
    pub dtype: String,
    pub threads: usize,
    /// "ok", "skipped" or "error".
    pub status: String,
    /// Why the run was skipped or failed; empty when ok.
    pub reason: String,
    pub reps: usize,
    pub timing: Option<Timing>,
    pub median_s: Option<f64>,
    /// Problem::flops() / median_s: FLOPs of exact attention over the allowed pairs.
    pub gflops: Option<f64>,
    pub peak_bytes: Option<u64>,
    pub gemm_gflops: f64,
    /// gflops / gemm_gflops
    pub gemm_fraction: Option<f64>,
}

impl BenchRecord {
    /// A record for `backend` on `p` with no measurement yet (status "skipped", empty reason).
    pub fn new(backend: &str, variant: &str, p: &Problem, threads: usize, gemm_gflops: f64) -> Self {
        BenchRecord {
            backend: backend.to_string(),
            device: String::new(),
            variant: variant.to_string(),
            seq: p.seq_q,
            seq_kv: p.seq_k,
            dim: p.head_dim,
            heads: p.heads,
            kv_heads: p.kv_heads,
            batch: p.batch,
            causal: p.causal,
            window: p.window.to_string(),
            dtype: p.dtype.to_string(),
            threads,
            status: "skipped".to_string(),
            reason: String::new(),
            reps: 0,
            timing: None,
            median_s: None,
            gflops: None,
            peak_bytes: None,
            gemm_gflops,
            gemm_fraction: None,
        }
    }

    /// Records where the backend runs.
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device.to_string();
        self
    }

    /// Fills in a measurement (status "ok").
    pub fn with_measurement(mut self, p: &Problem, m: &Measurement) -> Self {
        let g = gflops(p, m.median_s);
        self.status = "ok".to_string();
        self.reps = m.times_s.len();
        self.timing = Some(m.timing);
        self.median_s = Some(m.median_s);
        self.gflops = Some(g);
        self.peak_bytes = m.peak_bytes;
        self.gemm_fraction = (self.gemm_gflops > 0.0).then(|| g / self.gemm_gflops);
        self
    }

    /// Marks the record skipped (`status` "skipped") or failed ("error") with a reason.
    pub fn with_status(mut self, status: &str, reason: impl Into<String>) -> Self {
        self.status = status.to_string();
        self.reason = reason.into();
        self
    }
}

/// True for errors that mean "this backend cannot run this problem here" rather than a bug:
/// unsupported problem, unavailable backend, memory budget.
pub fn is_skip(e: &AttnError) -> bool {
    matches!(e, AttnError::Unsupported { .. } | AttnError::Unavailable { .. } | AttnError::MemoryBudget { .. })
}

/// Why `backend` cannot run `p` here, if it cannot: availability first, then support.
pub fn skip_reason(backend: &dyn Attention, p: &Problem) -> Option<String> {
    if let Err(r) = backend.availability() {
        return Some(format!("unavailable ({r})"));
    }
    let reasons = backend.not_supported_reasons(p);
    (!reasons.is_empty()).then(|| format!("unsupported ({})", reasons.join("; ")))
}

/// The exponent of N that `backend`'s time is expected to grow with on `p`'s family of
/// problems: 2 for exact attention over an unbounded band, 1 for a bounded window or an
/// approximation (linear-time by design).
pub fn expected_exponent(backend: &dyn Attention, p: &Problem) -> f64 {
    let (l, r) = p.effective_window();
    let banded = l.is_some() && r.is_some();
    if backend.exactness() == crate::attention::Exactness::Exact && !banded { 2.0 } else { 1.0 }
}

/// Time predicted at `n` from a measurement `secs` at `n0`, growing as N^`exponent`.
pub fn extrapolate(n0: usize, secs: f64, n: usize, exponent: f64) -> f64 {
    secs * (n as f64 / n0 as f64).powf(exponent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn gemm_ceiling_reports_positive_rate_and_pool_size() {
        let g = with_threads(Some(1), || gemm_ceiling(64, 2)).unwrap().unwrap();
        assert!(g.gflops > 0.0 && g.gflops.is_finite());
        assert_eq!(g.threads, 1);
        assert!(with_threads(Some(0), || ()).is_err());
    }

    #[test]
    fn measure_times_and_skips() {
        let p = Problem::new(1, 1, 16, 8);
        let (q, k, v) = crate::seeded::normal_qkv(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let sdpa = crate::backend("sdpa").unwrap();
        let m = measure(sdpa.as_ref(), &args, 3, 10.0).unwrap();
        assert_eq!(m.times_s.len(), 3);
        assert!(m.median_s > 0.0);
        let r = BenchRecord::new("sdpa", "", &p, 1, 10.0).with_measurement(&p, &m);
        assert_eq!(r.status, "ok");
        assert!((r.gflops.unwrap() - p.flops() / m.median_s / 1e9).abs() < 1e-9);
        assert!(device_timing(sdpa.as_ref(), &p, 1).is_err());
    }
}
