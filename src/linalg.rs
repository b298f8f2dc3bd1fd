//! Safe wrappers over the `gemm` crate's f32 GEMM, shared by every backend that multiplies
//! matrices (sdpa, linformer, performer, nystrom, the layer) and by the bench's GEMM-ceiling
//! probe, and its f64 GEMM ([`dgemm`], nystrom's m×m pseudo-inverse).

use crate::error::{AttnError, Result};

/// A row-major or transposed view of a dense f32 (or f64) matrix: element (r, c) is at
/// `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Row-major rows×cols.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose of a row-major rows×cols matrix, viewed as cols×rows.
    pub fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows: cols, cols: rows, row_stride: 1, col_stride: cols }
    }
    fn max_index(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        (self.rows - 1).checked_mul(self.row_stride)?.checked_add((self.cols - 1).checked_mul(self.col_stride)?)
    }
}

/// Whether one GEMM may spread over the rayon pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    Serial,
    Rayon,
}

/// `c = beta·c + alpha·(a × b)`, c row-major m×n with row stride `ldc` (≥ n).
/// `beta = 0` ignores c's previous contents (NaN-safe).
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, alpha: f32, beta: f32, par: Par) -> Result<()> {
    gemm_checked(a, b, c, ldc, alpha, beta, 0.0, par)
}

/// [`sgemm`] in f64.
pub fn dgemm(
    a: MatRef<'_, f64>,
    b: MatRef<'_, f64>,
    c: &mut [f64],
    ldc: usize,
    alpha: f64,
    beta: f64,
    par: Par,
) -> Result<()> {
    gemm_checked(a, b, c, ldc, alpha, beta, 0.0, par)
}

/// The bounds-checked GEMM behind [`sgemm`] and [`dgemm`].
#[allow(clippy::too_many_arguments)] // sgemm's arguments plus the type's zero
fn gemm_checked<T: Copy + PartialEq + std::ops::Mul<Output = T> + 'static>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: &mut [T],
    ldc: usize,
    alpha: T,
    beta: T,
    zero: T,
    par: Par,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || ldc < n {
        return Err(AttnError::shape(format!("sgemm: ({m}×{k}) × ({}×{n}) with ldc={ldc}", b.rows)));
    }
    let ok_a = a.max_index().is_some_and(|i| k == 0 || m == 0 || i < a.data.len());
    let ok_b = b.max_index().is_some_and(|i| k == 0 || n == 0 || i < b.data.len());
    let need_c = if m == 0 || n == 0 { 0 } else { (m - 1) * ldc + n };
    if !ok_a || !ok_b || c.len() < need_c {
        return Err(AttnError::shape("sgemm: a buffer is shorter than its view".to_string()));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        for r in 0..m {
            for x in &mut c[r * ldc..r * ldc + n] {
                *x = if beta == zero { zero } else { beta * *x };
            }
        }
        return Ok(());
    }
    let parallelism = match par {
        Par::Serial => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: every index the GEMM touches was bounds-checked above: a and b through
    // `max_index < len`, c through `(m-1)·ldc + n ≤ len`; strides fit in isize because the
    // buffers they index do. `read_dst = beta != 0` so a zero beta never reads stale c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != zero,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_matches_naive_with_transpose() {
        let a: Vec<f32> = (0..6).map(|x| x as f32).collect(); // 2×3
        let b: Vec<f32> = (0..12).map(|x| (x as f32) * 0.5).collect(); // 4×3, use transposed → 3×4
        let mut c = vec![1.0f32; 8];
        sgemm(MatRef::row_major(&a, 2, 3), MatRef::transposed(&b, 4, 3), &mut c, 4, 2.0, 0.0, Par::Serial).unwrap();
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = (0..3).map(|t| a[i * 3 + t] * b[j * 3 + t]).sum::<f32>() * 2.0;
                assert!((c[i * 4 + j] - want).abs() < 1e-5);
            }
        }
        assert!(
            sgemm(MatRef::row_major(&a, 2, 3), MatRef::row_major(&b, 4, 3), &mut c, 4, 1.0, 0.0, Par::Serial).is_err()
        );
        // The f64 path: same product, same checks.
        let (a64, b64): (Vec<f64>, Vec<f64>) =
            (a.iter().map(|&x| x as f64).collect(), b.iter().map(|&x| x as f64).collect());
        let mut c64 = vec![1.0f64; 8];
        dgemm(MatRef::row_major(&a64, 2, 3), MatRef::transposed(&b64, 4, 3), &mut c64, 4, 2.0, 0.0, Par::Serial)
            .unwrap();
        assert!(c64.iter().zip(&c).all(|(x, &y)| (x - y as f64).abs() < 1e-5));
        assert!(
            dgemm(MatRef::row_major(&a64, 2, 3), MatRef::row_major(&b64, 4, 3), &mut c64, 4, 1.0, 0.0, Par::Serial)
                .is_err()
        );
    }
}
