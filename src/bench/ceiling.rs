//! The machine's f32 GEMM throughput, the yardstick every CPU backend's GFLOP/s is divided by.
//!
//! [`LazyCeiling`] measures it only when the first cell that runs on the CPU needs it, so a
//! command whose every cell is refused answers at once instead of spending a second or more on a
//! 2048³ sgemm first.

use super::median;
use crate::error::{AttnError, Result};
use crate::linalg::{MatRef, Par, sgemm};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::Instant;

/// Side of the square sgemm the bench and report use as the machine's f32 GEMM ceiling. 2048³
/// (17 GFLOP) is large enough that packing and thread start-up stop mattering; at 1024³ the
/// `gemm` crate measured ~10% lower here, which let fused attention tiles exceed "the ceiling".
pub const GEMM_CEILING_SIZE: usize = 2048;

/// Timed repetitions of the ceiling's sgemm (the median is kept).
pub const GEMM_CEILING_REPS: usize = 5;

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

/// A GEMM ceiling measured on first use (in the rayon pool of that first caller).
#[derive(Debug)]
pub struct LazyCeiling {
    size: usize,
    reps: usize,
    cell: OnceLock<GemmCeiling>,
}

impl LazyCeiling {
    /// A `size`³ sgemm ceiling, median of `reps`, not yet measured.
    pub fn new(size: usize, reps: usize) -> Self {
        LazyCeiling { size, reps, cell: OnceLock::new() }
    }

    /// The ceiling `bench` and `report` use ([`GEMM_CEILING_SIZE`], [`GEMM_CEILING_REPS`]).
    pub fn standard() -> Self {
        Self::new(GEMM_CEILING_SIZE, GEMM_CEILING_REPS)
    }

    /// The ceiling, measuring it now if this is the first call.
    pub fn get(&self) -> Result<&GemmCeiling> {
        if let Some(c) = self.cell.get() {
            return Ok(c);
        }
        let measured = gemm_ceiling(self.size, self.reps)?;
        Ok(self.cell.get_or_init(|| measured))
    }

    /// The ceiling if it has been measured, without measuring it.
    pub fn measured(&self) -> Option<&GemmCeiling> {
        self.cell.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::with_threads;

    #[test]
    fn gemm_ceiling_reports_positive_rate_and_pool_size() {
        let g = with_threads(Some(1), || gemm_ceiling(64, 2)).unwrap().unwrap();
        assert!(g.gflops > 0.0 && g.gflops.is_finite());
        assert_eq!(g.threads, 1);
        assert!(gemm_ceiling(0, 1).is_err());
    }

    #[test]
    fn lazy_ceiling_measures_once_on_first_get() {
        let c = LazyCeiling::new(32, 1);
        assert!(c.measured().is_none());
        let first = c.get().unwrap().median_s;
        assert_eq!(c.measured().map(|g| g.median_s), Some(first));
        assert_eq!(c.get().unwrap().median_s, first, "a second get must not re-measure");
    }
}
