//! Segment means along the sequence: the training-free "projection" shared by `linformer`'s
//! pooled mode and `nystrom`'s landmarks.
//!
//! `n` rows are cut into `m ≤ n` contiguous segments, segment r covering rows
//! [⌊r·n/m⌋, ⌊(r+1)·n/m⌋): sizes differ by at most one and none is empty. Means are summed
//! in f64 in row order (deterministic, and exact enough that f16/bf16 inputs lose nothing).

use crate::tensor::TensorRef;

/// Rows [start, end) of segment `r` of `m` over `n` rows (m ≤ n).
pub fn bounds(r: usize, n: usize, m: usize) -> (usize, usize) {
    // r·n < 2^62 since both are < 2^31 (Problem::validate), so u64 cannot overflow.
    let at = |r: usize| ((r as u64 * n as u64) / m as u64) as usize;
    (at(r), at(r + 1))
}

/// The m×d row-major means of the segments of the n×d matrix starting at element `base` of `x`.
pub fn means(x: TensorRef<'_>, base: usize, n: usize, d: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * d];
    let mut row = vec![0.0f32; d];
    let mut acc = vec![0.0f64; d];
    for (r, o) in out.chunks_mut(d).enumerate() {
        let (lo, hi) = bounds(r, n, m);
        acc.fill(0.0);
        for j in lo..hi {
            x.read_f32(base + j * d, &mut row);
            acc.iter_mut().zip(&row).for_each(|(a, &v)| *a += v as f64);
        }
        let inv = 1.0 / (hi - lo) as f64;
        o.iter_mut().zip(&acc).for_each(|(o, a)| *o = (a * inv) as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_tile_the_rows_evenly() {
        for (n, m) in [(10, 3), (7, 7), (4096, 64), (1000, 256), (5, 1)] {
            let mut next = 0;
            for r in 0..m {
                let (lo, hi) = super::bounds(r, n, m);
                assert_eq!(lo, next);
                assert!(hi - lo == n / m || hi - lo == n / m + 1, "n={n} m={m} r={r}");
                next = hi;
            }
            assert_eq!(next, n);
        }
    }
}
