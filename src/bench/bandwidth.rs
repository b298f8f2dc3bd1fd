//! Machine ceilings for memory-bound and bf16 attention, measured in the same run as the
//! kernels they judge (the f32 GEMM ceiling is in [`super::ceiling`]).
//!
//! - [`bandwidth_ceiling`]: a streaming read of a buffer much larger than the last-level cache,
//!   split over the current rayon pool's threads, so decode (one query per head over a long KV
//!   cache, where every K/V byte is used once) can be stated as a fraction of it.
//! - [`bf16_dot_ceiling`]: the `vdpbf16ps` rate with operands in registers (AVX512_BF16 CPUs),
//!   the peak a bf16 attention kernel can approach.
//! - [`bytes_moved`] and [`is_decode_shaped`]: what a decode call must move at least (Q, K, V
//!   read once, O written once) and which problems to report that way.

use super::median;
use crate::error::{AttnError, Result};
use crate::problem::{DType, Problem};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// Default buffer for the bandwidth ceiling: 512 MiB, 16× a 32 MiB L3, so caches barely help.
pub const BANDWIDTH_BUFFER_BYTES: usize = 512 << 20;

/// A measured streaming-read rate.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BandwidthCeiling {
    pub bytes: usize,
    pub threads: usize,
    pub median_s: f64,
    pub gb_per_s: f64,
}

/// Bytes per element of a dtype.
pub fn dtype_bytes(dtype: DType) -> u64 {
    match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
    }
}

/// The least bytes one exact forward pass must move: Q, K and V read once in their dtype and
/// O written once in f32 (the LSE is negligible and optional). For decode-shaped problems
/// K and V dominate, and a kernel that reads each KV head once (all query heads of a GQA
/// group in one pass) moves about this much.
pub fn bytes_moved(p: &Problem) -> u64 {
    let e = dtype_bytes(p.dtype);
    (p.q_len() as u64 + 2 * p.kv_len() as u64) * e + p.out_len() as u64 * 4
}

/// Whether `p` is memory-bound the decode way: few query rows per KV head (N_q times the GQA
/// group at most [`crate::tiled::DECODE_MAX_ROWS`]) over many more keys, so time is bytes
/// moved over bandwidth rather than FLOPs over the GEMM rate.
pub fn is_decode_shaped(p: &Problem) -> bool {
    crate::tiled::decode_applies(p)
}

/// What `bench`/`report` print beside a decode-shaped time: bytes moved, the rate, and the
/// fraction of the bandwidth ceiling measured in the same run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DecodeRate {
    pub bytes: u64,
    pub gb_per_s: f64,
    pub fraction_of_ceiling: f64,
}

/// [`DecodeRate`] for `p` timed at `seconds`; `None` unless `p` [`is_decode_shaped`].
pub fn decode_rate(p: &Problem, seconds: f64, ceiling: &BandwidthCeiling) -> Option<DecodeRate> {
    is_decode_shaped(p).then(|| {
        let bytes = bytes_moved(p);
        let gb_per_s = bytes as f64 / seconds / 1e9;
        DecodeRate { bytes, gb_per_s, fraction_of_ceiling: gb_per_s / ceiling.gb_per_s }
    })
}

/// The bandwidth ceiling, measured on first use (by the first decode-shaped row that ran), so
/// a run without one never pays for it.
#[derive(Default)]
pub struct LazyBandwidth(std::sync::OnceLock<BandwidthCeiling>);

impl LazyBandwidth {
    /// The ceiling over [`BANDWIDTH_BUFFER_BYTES`], median of 5, measuring it now if needed.
    pub fn get(&self) -> Result<&BandwidthCeiling> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        let measured = bandwidth_ceiling(BANDWIDTH_BUFFER_BYTES, 5)?;
        Ok(self.0.get_or_init(|| measured))
    }

    /// The ceiling if it has been measured.
    pub fn measured(&self) -> Option<&BandwidthCeiling> {
        self.0.get()
    }
}

/// Median over `reps` passes (after one warm-up) of a streaming read of `bytes` bytes split
/// over the current pool's threads. Call it inside the pool the kernels run in.
pub fn bandwidth_ceiling(bytes: usize, reps: usize) -> Result<BandwidthCeiling> {
    if bytes < (1 << 20) || reps == 0 {
        return Err(AttnError::invalid(format!(
            "bandwidth ceiling: buffer {bytes} B must be ≥ 1 MiB and reps {reps} ≥ 1"
        )));
    }
    let n = bytes / 8;
    // Written once so every page is resident (a fresh zeroed mapping would read the zero page).
    let buf: Vec<u64> = (0..n as u64).collect();
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads * 8).max(1 << 14);
    let pass = || -> u64 {
        buf.par_chunks(chunk)
            .map(|c| {
                // Eight independent lanes so the loop is load-bound, not add-latency-bound.
                let mut acc = [0u64; 8];
                for w in c.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] = acc[i].wrapping_add(w[i]);
                    }
                }
                acc.iter().fold(c.len() as u64, |a, &x| a.wrapping_add(x))
            })
            .reduce(|| 0, u64::wrapping_add)
    };
    std::hint::black_box(pass());
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(pass());
        times.push(t.elapsed().as_secs_f64());
    }
    let median_s = median(&times);
    Ok(BandwidthCeiling { bytes: n * 8, threads, median_s, gb_per_s: (n * 8) as f64 / median_s / 1e9 })
}

/// A measured bf16 dot-product rate (2 FLOP per bf16 product, f32 accumulation).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DotCeiling {
    pub threads: usize,
    pub median_s: f64,
    pub gflops: f64,
}

/// Median over `reps` of `vdpbf16ps` on register operands on every thread of the current pool;
/// `None` when the CPU lacks AVX512_BF16.
pub fn bf16_dot_ceiling(reps: usize) -> Option<DotCeiling> {
    const ITERS: u64 = 20_000_000;
    let threads = rayon::current_num_threads().max(1);
    let run = || -> Option<f64> {
        let t = Instant::now();
        let ok = (0..threads).into_par_iter().map(|_| crate::simd::bf16::dot_peak_loop(ITERS)).all(|x| x.is_some());
        ok.then(|| t.elapsed().as_secs_f64())
    };
    run()?;
    let times: Vec<f64> = (0..reps.max(1)).filter_map(|_| run()).collect();
    let median_s = median(&times);
    let flops = crate::simd::bf16::DOT_PEAK_FLOPS_PER_ITER as f64 * ITERS as f64 * threads as f64;
    Some(DotCeiling { threads, median_s, gflops: flops / median_s / 1e9 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_ceiling_is_positive_and_refuses_tiny_buffers() {
        let c = crate::threads::with_threads(Some(1), || bandwidth_ceiling(8 << 20, 2)).unwrap().unwrap();
        assert!(c.gb_per_s > 0.0 && c.threads == 1 && c.bytes == 8 << 20);
        assert!(bandwidth_ceiling(1000, 1).is_err());
    }

    #[test]
    fn decode_rate_only_for_decode_shapes() {
        let c = BandwidthCeiling { bytes: 1 << 30, threads: 2, median_s: 0.1, gb_per_s: 10.0 };
        let p = Problem::new(1, 8, 1, 64).with_seq_k(1 << 20);
        let r = decode_rate(&p, 0.1, &c).unwrap();
        assert_eq!(r.bytes, bytes_moved(&p));
        assert!((r.fraction_of_ceiling - r.gb_per_s / 10.0).abs() < 1e-12);
        assert!(decode_rate(&Problem::new(1, 8, 1024, 64), 0.1, &c).is_none());
    }

    #[test]
    fn bytes_moved_counts_q_k_v_and_f32_output() {
        let p = Problem::new(1, 32, 1, 128).with_kv_heads(8).with_seq_k(1024);
        let kv = 8 * 1024 * 128;
        assert_eq!(bytes_moved(&p), (32 * 128 + 2 * kv) as u64 * 4 + 32 * 128 * 4);
        let b = p.with_dtype(DType::BF16);
        assert_eq!(bytes_moved(&b), (32 * 128 + 2 * kv) as u64 * 2 + 32 * 128 * 4);
    }
}
