//! P·V that leaves out the pairs a row may not see, for the rare strips whose keys include a
//! non-finite V row.
//!
//! The tiled kernels add P·V over a strip's whole key range, with P = 0 where the band or the
//! boolean mask drops a pair. For finite V that adds exact zeros, but 0·NaN and 0·∞ are NaN, so
//! a NaN or ∞ in V at key j would reach rows that cannot see j, which the NaN/Inf policy in
//! `crate::attention` forbids. Packing records the packed keys whose V row is not finite
//! ([`nonfinite`]); a strip whose keys hold none (the normal case: one emptiness test per
//! strip) keeps the register-blocked microkernel, and one that holds some runs [`pv_rows`],
//! which skips exactly the (row, non-finite key) pairs the row may not see and otherwise does
//! the microkernel's operations in its order (O·α, then one FMA per key), so every row gets
//! the bits it would get from the microkernel with that key's V finite (up to the sign of a
//! zero sum: 0·v is ±0 by v's sign, a skip adds nothing).
//!
//! A pair is dropped when the key is outside the row's band or the boolean mask is false: the
//! reference's definition. A −∞ bias or a −∞ score does not drop a pair (the reference also
//! multiplies its zero weight), so such a pair still turns the row NaN.

use super::Simd;
use super::flash::BlockJob;
use super::padded_dim;

/// True when no element of `xs` is NaN or ±∞ (no early exit, so it vectorizes).
#[inline]
pub fn all_finite(xs: &[f32]) -> bool {
    xs.iter().fold(true, |ok, x| ok & x.is_finite())
}

/// The entries of the sorted list `bad` in `[a, b)`.
#[inline(always)]
pub fn within(bad: &[usize], a: usize, b: usize) -> &[usize] {
    if bad.is_empty() {
        return bad;
    }
    let from = bad.partition_point(|&j| j < a);
    let to = bad.partition_point(|&j| j < b);
    &bad[from..to]
}

/// The keys of `bad` (sorted, inside the strip's `[a, b)`) that block row `r` may not see:
/// outside its range or dropped by the boolean mask. Offsets from `a`, ascending.
pub fn dropped<E>(job: &BlockJob<'_, E>, r: usize, a: usize, bad: &[usize]) -> Vec<usize> {
    let (lo, hi) = job.ranges[r];
    let mask = job.mods.and_then(|m| m.pair).and_then(|pair| pair(r, a, true)).and_then(|(t, _)| t.mask);
    bad.iter()
        .map(|&j| j - a)
        .filter(|&k| !(lo..hi).contains(&(a + k)) || mask.is_some_and(|m| !m.get(k).copied().unwrap_or(false)))
        .collect()
}

/// `O = α ⊙ O + P·V` for the `MR` rows of the strip at block row `r0` over packed keys `[a, b)`
/// (P in `job.s`, row stride `job.tile`), row by row, without the pairs [`dropped`] names.
pub fn pv_rows<S: Simd, const MR: usize>(
    s: S,
    job: &mut BlockJob<'_>,
    r0: usize,
    a: usize,
    b: usize,
    alpha: &[f32; MR],
) {
    let (w, dp, n, tile) = (S::W, padded_dim(job.d), b - a, job.tile);
    let bad = within(job.vbad, a, b);
    for (i, &alpha) in alpha.iter().enumerate() {
        let skip = dropped(job, r0 + i, a, bad);
        let p = &job.s[i * tile..i * tile + n];
        for c in (0..dp).step_by(w) {
            let o = &mut job.acc[(r0 + i) * dp + c..(r0 + i) * dp + c + w];
            let v = &job.vpack[a * dp + c..];
            // SAFETY: o holds W floats; V row k < n of this column block starts at k·dp ≤
            // (n − 1)·dp and holds W floats since c + W ≤ dp (vpack spans nkeys·dp ≥ b·dp).
            unsafe {
                let mut x = s.mul(s.load(o.as_ptr()), s.splat(alpha));
                let mut k0 = 0;
                for &end in skip.iter().chain(std::iter::once(&n)) {
                    for (k, &pk) in p.iter().enumerate().take(end).skip(k0) {
                        x = s.fma(s.splat(pk), s.load(v.as_ptr().add(k * dp)), x);
                    }
                    k0 = end + 1;
                }
                s.store(o.as_mut_ptr(), x);
            }
        }
    }
}
