//! The backward's tile kernels (`grad::flash`): a small register-blocked GEMM for the five
//! products of one BR×BC tile, and the fused elementwise step P = 2^((S − LSE)·log₂e),
//! dS = P∘(dP − D).
//!
//! Algorithm: [`tile_gemm`] computes `C = alpha·A·B` (or `C += alpha·A·B`) for an m×k A read by
//! element through two strides (so Pᵀ and dSᵀ are read in place, never transposed) and a
//! row-major k×n B whose columns come in chunks of [`COLS`] floats. The microkernel is the
//! forward's (`flash::pv_chunk`): `MR` rows × `NV` vectors of accumulators, one broadcast of A
//! and `NV` loads of B per step of the reduction. Loop order: per column chunk, every strip of
//! `MR` rows (the chunk of B, k×16 floats, stays in L1), remainder rows by a smaller `MR`.
//! Nothing is packed per call: the backward packs Kᵀ and Vᵀ once per key block and reads Q, dO
//! and K as they are, which is the point against a general GEMM (whose packing and dispatch
//! were ~10% of the backward on 128×128×64 tiles).
//!
//! Complexity: 2·m·n·k flops, no allocation. Rounding: each C element is one FMA chain over k in
//! order, then one multiply by alpha (and one add into C when accumulating), so results depend
//! only on the shapes, never on threads.
//!
//! Caveats: n must be a multiple of [`COLS`] (the caller pads D and the key count); A and B hold
//! f32 (half-precision inputs are widened by the caller).
#![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays read best.

use super::Simd;
use super::flash::exp2;
use std::f32::consts::LOG2_E;

/// Columns per chunk of B and C: 2 AVX2 vectors, 4 portable ones.
pub const COLS: usize = 16;

/// One product of [`tile_gemm`]: `C[m×n] = alpha·A·B (+ C if accumulate)`.
pub struct TileGemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A(i, t) = `a[i·a_rs + t·a_cs]`.
    pub a: &'a [f32],
    pub a_rs: usize,
    pub a_cs: usize,
    /// B(t, j) = `b[t·ldb + j]`.
    pub b: &'a [f32],
    pub ldb: usize,
    /// C(i, j) = `c[i·ldc + j]`.
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub alpha: f32,
    pub accumulate: bool,
}

impl TileGemm<'_> {
    /// Whether every index the kernel touches is in bounds (n a multiple of [`COLS`]).
    fn in_bounds(&self) -> bool {
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 {
            return n.is_multiple_of(COLS);
        }
        let c_ok = self.ldc >= n && (m - 1) * self.ldc + n <= self.c.len();
        if k == 0 {
            return n.is_multiple_of(COLS) && c_ok;
        }
        n.is_multiple_of(COLS)
            && c_ok
            && (m - 1) * self.a_rs + (k - 1) * self.a_cs < self.a.len()
            && self.ldb >= n
            && (k - 1) * self.ldb + n <= self.b.len()
    }
}

/// `MR` rows × `NV·W` columns of C from A rows `a` (strides as in [`TileGemm`]) and B chunk `b`.
///
/// # Safety
/// A readable at `r·a_rs + t·a_cs` (r < MR, t < k), B at `t·ldb + [0, NV·W)`, C readable and
/// writable at `r·ldc + [0, NV·W)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    k: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    let w = S::W;
    let mut acc = [[s.splat(0.0); NV]; MR];
    // SAFETY (whole body): every offset stays within the extents the caller guarantees.
    unsafe {
        for t in 0..k {
            let bt = b.add(t * ldb);
            let mut bv = [s.splat(0.0); NV];
            for v in 0..NV {
                bv[v] = s.load(bt.add(v * w));
            }
            let at = a.add(t * a_cs);
            for r in 0..MR {
                let ab = s.splat(*at.add(r * a_rs));
                for v in 0..NV {
                    acc[r][v] = s.fma(ab, bv[v], acc[r][v]);
                }
            }
        }
        let al = s.splat(alpha);
        for r in 0..MR {
            for v in 0..NV {
                let p = c.add(r * ldc + v * w);
                let x = s.mul(acc[r][v], al);
                s.store(p, if accumulate { s.add(s.load(p), x) } else { x });
            }
        }
    }
}

/// Rows `[i0, i0 + R)` of one column chunk `j`.
///
/// # Safety
/// `g` passed [`TileGemm::in_bounds`], `i0 + R ≤ m`, `j + NV·W ≤ n`.
#[inline(always)]
unsafe fn rows<S: Simd, const R: usize, const NV: usize>(s: S, g: &mut TileGemm<'_>, i0: usize, j: usize) {
    // SAFETY: the offsets are those `in_bounds` checked, for rows i0..i0+R and columns j..j+NV·W.
    unsafe {
        micro::<S, R, NV>(
            s,
            g.a.as_ptr().add(i0 * g.a_rs),
            (g.a_rs, g.a_cs),
            g.k,
            g.b.as_ptr().add(j),
            g.ldb,
            g.c.as_mut_ptr().add(i0 * g.ldc + j),
            g.ldc,
            g.alpha,
            g.accumulate,
        )
    }
}

/// Runs one [`TileGemm`] with `MR`-row strips (`MR` ≤ 8) of `NV` vectors (`NV·W` = [`COLS`]).
/// Panics only on an internal layout bug (a job whose buffers disagree with its sizes).
#[inline(always)]
pub fn tile_gemm<S: Simd, const MR: usize, const NV: usize>(s: S, g: &mut TileGemm<'_>) {
    assert!(NV * S::W == COLS && (1..=8).contains(&MR) && g.in_bounds(), "tile_gemm: bad layout");
    if g.m == 0 || g.n == 0 {
        return;
    }
    if g.k == 0 {
        for i in 0..g.m {
            let row = &mut g.c[i * g.ldc..i * g.ldc + g.n];
            if !g.accumulate {
                row.fill(0.0);
            }
        }
        return;
    }
    let full = g.m / MR * MR;
    for j in (0..g.n).step_by(COLS) {
        // SAFETY (each call): in_bounds held above; i0 + R ≤ m and j + COLS ≤ n by the loops.
        unsafe {
            for i0 in (0..full).step_by(MR) {
                rows::<S, MR, NV>(s, g, i0, j);
            }
            match g.m - full {
                0 => {}
                1 => rows::<S, 1, NV>(s, g, full, j),
                2 => rows::<S, 2, NV>(s, g, full, j),
                3 => rows::<S, 3, NV>(s, g, full, j),
                4 => rows::<S, 4, NV>(s, g, full, j),
                5 => rows::<S, 5, NV>(s, g, full, j),
                6 => rows::<S, 6, NV>(s, g, full, j),
                _ => rows::<S, 7, NV>(s, g, full, j),
            }
        }
    }
}

/// The backward's elementwise step over one row's allowed run: `s[c]` (the modified scaled
/// score) becomes P = 2^((s − lse)·log₂e) and `dp[c]` becomes dS = P·(dP − delta). The same
/// arithmetic as the separate passes it replaces (subtract, multiply, [`exp2`], subtract,
/// multiply), in one sweep; the tail goes through a padded vector.
#[inline(always)]
pub fn exp_ds<S: Simd>(s: S, sv: &mut [f32], dp: &mut [f32], lse: f32, delta: f32) {
    assert_eq!(sv.len(), dp.len());
    let w = S::W;
    let (l, log2e, dl) = (s.splat(lse), s.splat(LOG2_E), s.splat(delta));
    // A fn, not a closure: closures do not inherit the caller's target features, so their
    // intrinsics would be out-of-line calls.
    ///
    /// # Safety
    /// `xs` and `ys` readable and writable for W floats.
    #[inline(always)]
    unsafe fn step<S: Simd>(s: S, xs: *mut f32, ys: *mut f32, (l, log2e, dl): (S::V, S::V, S::V)) {
        // SAFETY: the caller's guarantee.
        unsafe {
            let p = exp2(s, s.mul(s.sub(s.load(xs), l), log2e));
            s.store(xs, p);
            s.store(ys, s.mul(p, s.sub(s.load(ys), dl)));
        }
    }
    let c = (l, log2e, dl);
    let full = sv.len() / w * w;
    for (cs, cd) in sv[..full].chunks_exact_mut(w).zip(dp[..full].chunks_exact_mut(w)) {
        // SAFETY: chunks_exact_mut yields exactly W floats.
        unsafe { step(s, cs.as_mut_ptr(), cd.as_mut_ptr(), c) };
    }
    let n = sv.len() - full;
    if n > 0 {
        let (mut ts, mut td) = ([0.0f32; 64], [0.0f32; 64]);
        ts[..n].copy_from_slice(&sv[full..]);
        td[..n].copy_from_slice(&dp[full..]);
        // SAFETY: ts and td hold 64 ≥ W floats.
        unsafe { step(s, ts.as_mut_ptr(), td.as_mut_ptr(), c) };
        sv[full..].copy_from_slice(&ts[..n]);
        dp[full..].copy_from_slice(&td[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Isa;

    /// Deterministic values in [-1, 1) with mixed magnitudes.
    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0).collect()
    }

    /// Every row remainder (m = 1..13), row-major and transposed A, both C modes, k = 0, on
    /// every path the CPU has, against an f64 product. Tolerance: one f32 FMA chain over k ≤ 70
    /// terms of size ≤ 1 has error ≤ k·u·Σ|terms| ≈ 70·6e-8·70 = 3e-4 in the worst case; the
    /// bound 1e-4·k·(1 + |c|) is above that for these |terms| ≤ 1 values and far below any
    /// indexing error (which is O(1)).
    #[test]
    fn tile_gemm_matches_f64_for_every_remainder_and_stride() {
        let mut checked = 0;
        for isa in [Isa::Scalar, Isa::Avx2].into_iter().filter(|i| i.is_available()) {
            for (m, n, k) in [(1, 16, 5), (5, 32, 64), (6, 16, 1), (7, 48, 70), (13, 16, 33), (12, 32, 0), (0, 16, 3)] {
                for transposed in [false, true] {
                    for accumulate in [false, true] {
                        let (lda, ldb, ldc) = (k.max(m) + 3, n + 16, n + 5);
                        let a = vals(lda * k.max(m).max(1) + lda, 1);
                        let b = vals(ldb * k.max(1), 2);
                        let c0 = vals(ldc * m.max(1), 3);
                        let (a_rs, a_cs) = if transposed { (1, lda) } else { (lda, 1) };
                        let mut c = c0.clone();
                        let alpha = 0.75;
                        let mut g =
                            TileGemm { m, n, k, a: &a, a_rs, a_cs, b: &b, ldb, c: &mut c, ldc, alpha, accumulate };
                        isa.tile_gemm(&mut g);
                        for i in 0..m {
                            for j in 0..n {
                                let dot: f64 =
                                    (0..k).map(|t| a[i * a_rs + t * a_cs] as f64 * b[t * ldb + j] as f64).sum();
                                let base = if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                                let want = base + alpha as f64 * dot;
                                let got = c[i * ldc + j] as f64;
                                let tol = 1e-4 * (k as f64) * (1.0 + want.abs()) + 1e-7;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{isa} m={m} n={n} k={k} ({i},{j}): {got} vs {want}"
                                );
                            }
                            // Columns past n are never written.
                            assert_eq!(
                                &c[i * ldc + n..i * ldc + ldc.min(n + 5)],
                                &c0[i * ldc + n..i * ldc + ldc.min(n + 5)]
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 28, "only {checked} cases ran");
    }

    /// The fused step equals the separate passes it replaced (subtract, multiply, exp2, then
    /// P·(dP − D)) bit for bit, tails included, and keeps NaN in place.
    #[test]
    fn exp_ds_equals_the_separate_passes() {
        for isa in [Isa::Scalar, Isa::Avx2].into_iter().filter(|i| i.is_available()) {
            for n in [1, 7, 8, 9, 16, 37] {
                let mut s: Vec<f32> = vals(n, 4).iter().map(|x| x * 5.0 - 2.0).collect();
                s[n / 2] = if n > 8 { f32::NAN } else { s[n / 2] };
                let mut dp = vals(n, 5);
                let (lse, delta) = (1.25f32, -0.3f32);
                let mut want_p: Vec<f32> = s.iter().map(|x| (x - lse) * std::f32::consts::LOG2_E).collect();
                isa.exp2_slice(&mut want_p);
                let want_ds: Vec<f32> = want_p.iter().zip(&dp).map(|(p, g)| p * (g - delta)).collect();
                isa.exp_ds(&mut s, &mut dp, lse, delta);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&s), bits(&want_p), "{isa} n={n}");
                assert_eq!(bits(&dp), bits(&want_ds), "{isa} n={n}");
            }
        }
    }
}
