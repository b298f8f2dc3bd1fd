//! Measurement machinery shared by `attnkit bench`, `attnkit report` and benches/scaling.rs.
//!
//! - [`runner`]: [`run_cell`], the one skip → memory → time-budget → measure sequence, with lazy
//!   inputs and a [`History`] for the time extrapolation;
//! - [`plan`]: the sweep plan the report and the criterion bench share;
//! - [`record`]: [`BenchRecord`] and its typed [`Status`];
//! - [`measure`]: median timing with the peak-heap probe, and device timing for CUDA backends;
//! - [`ceiling`]: the f32 GEMM ceiling, measured lazily;
//! - [`backward`]: forward, backward and forward + backward timed per rep, FLOPs by
//!   FlashAttention's convention (backward = 2.5× the forward's).
//!
//! GFLOP/s everywhere is [`Problem::flops`] (4·D FLOPs per allowed query–key pair, the cost
//! of exact attention) divided by the median time, whatever the backend actually computes, so
//! an approximation that skips work shows up as "more GFLOP/s", i.e. as effective throughput.

pub mod backward;
pub mod bandwidth;
pub mod ceiling;
#[cfg(test)]
mod fake;
pub mod measure;
pub mod plan;
pub mod record;
pub mod runner;

pub use ceiling::{GEMM_CEILING_REPS, GEMM_CEILING_SIZE, GemmCeiling, LazyCeiling, gemm_ceiling};
pub use measure::{Measurement, Timing, device_timing, measure, measure_into};
pub use plan::{PlanCell, SweepPlan, Variant};
pub use record::{BenchRecord, Status};
pub use runner::{
    Cell, CellOutcome, History, LazyInputs, Policy, expected_exponent, extrapolate, is_skip, refusal, run_cell,
    skip_reason,
};

use crate::problem::Problem;

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

/// Seconds → a short human string.
pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
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
    fn seconds_read_in_the_right_unit() {
        assert_eq!(fmt_secs(2.5e-5), "25.0 µs");
        assert_eq!(fmt_secs(0.0125), "12.50 ms");
        assert_eq!(fmt_secs(3.0), "3.00 s");
    }
}
