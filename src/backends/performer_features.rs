//! `performer`'s random features and feature maps: the orthogonal (or i.i.d.) ω matrix and the
//! two kernels, FAVOR+ softmax features and generalized-attention ReLU features (see
//! `performer.rs` for the estimator that uses them).

use crate::error::Result;
use crate::linalg::{MatRef, Par, sgemm};
use crate::options::Kernel;
use crate::seeded;
use rand_distr::{ChiSquared, Distribution, StandardNormal};

/// ε added to every ReLU feature, as in the reference implementation's `relu_kernel_transformation`
/// (keeps the denominator of a row positive when all its features are 0).
pub const RELU_STABILIZER: f32 = 1e-3;

/// `m` orthogonal random features for head dimension `d`, m×d row-major (see module docs).
///
/// Block b draws a d×d Gaussian matrix and orthonormalizes its rows, but only the first
/// `min(d, m − b·d)` rows are used, and Gram–Schmidt's row i depends only on rows < i: so only
/// those rows are kept and orthonormalized, O(r²·d) for r used rows instead of O(d³) (at D = 4096
/// and m = 256, ~10⁹ instead of ~3·10¹¹ operations: the whole matrix made one call take minutes).
/// The unused rows' normals are still drawn and dropped, so the chi norms after them come from the
/// same place in the stream and the features are those of the full block.
pub fn orthogonal_features(m: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * d);
    let chi = ChiSquared::new(d as f64).expect("d ≥ 1 degrees of freedom is a valid chi-squared");
    for b in 0..m.div_ceil(d) {
        let rows = (m - b * d).min(d);
        let mut rng = seeded::rng(seeded::derive_seed(seed, &[0x4641564f, d as u64, b as u64]));
        let mut g: Vec<f64> = (0..rows * d).map(|_| StandardNormal.sample(&mut rng)).collect();
        for _ in rows * d..d * d {
            let _: f64 = StandardNormal.sample(&mut rng);
        }
        orthonormalize_rows(&mut g, d);
        for row in g.chunks(d) {
            let norm = chi.sample(&mut rng).sqrt();
            out.extend(row.iter().map(|&x| (x * norm) as f32));
        }
    }
    out
}

/// `m` i.i.d. N(0, I_d) features, m×d row-major (the unstructured baseline).
pub fn iid_features(m: usize, d: usize, seed: u64) -> Vec<f32> {
    seeded::gaussian(seeded::derive_seed(seed, &[0x49494446, d as u64]), m * d, 1.0)
}

/// Modified Gram–Schmidt on the rows of a (rows ≤ d)×d matrix, twice per row ("twice is enough")
/// so the rows are orthonormal to f64 rounding even when the Gaussian draw is ill-conditioned.
fn orthonormalize_rows(a: &mut [f64], d: usize) {
    for i in 0..a.len() / d {
        let (done, rest) = a.split_at_mut(i * d);
        let row = &mut rest[..d];
        for _ in 0..2 {
            for prev in done.chunks(d) {
                let dot: f64 = row.iter().zip(prev).map(|(x, y)| x * y).sum();
                row.iter_mut().zip(prev).for_each(|(x, y)| *x -= dot * y);
            }
        }
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Per-call constants of the feature map.
pub(super) struct FeatureMap<'a> {
    pub(super) omega: &'a [f32],
    pub(super) m: usize,
    pub(super) d: usize,
    pub(super) scale: f32,
    pub(super) kernel: Kernel,
}

impl FeatureMap<'_> {
    /// ½·ln m: folds the 1/√m of the softmax features into the exponent.
    fn half_ln_m(&self) -> f32 {
        0.5 * (self.m as f32).ln()
    }

    /// For the rows of x (rows×D) into a (rows×m): softmax kernel, the exponents
    /// √s·X·ωᵀ − s·‖x‖²/2; ReLU kernel, the final features ReLU(√s·X·ωᵀ/√m) + ε.
    pub(super) fn raw(&self, x: &[f32], a: &mut [f32]) -> Result<()> {
        let rows = x.len() / self.d;
        let omega = MatRef::transposed(self.omega, self.m, self.d);
        let alpha = match self.kernel {
            Kernel::Softmax => self.scale.sqrt(),
            Kernel::Relu => (self.scale / self.m as f32).sqrt(),
        };
        sgemm(MatRef::row_major(x, rows, self.d), omega, a, self.m, alpha, 0.0, Par::Serial)?;
        match self.kernel {
            Kernel::Softmax => {
                for (ar, xr) in a.chunks_mut(self.m).zip(x.chunks(self.d)) {
                    let half_sq = 0.5 * self.scale * xr.iter().map(|v| v * v).sum::<f32>();
                    ar.iter_mut().for_each(|v| *v -= half_sq);
                }
            }
            // `max` would drop a NaN; keep it in its row (NaN policy).
            Kernel::Relu => a.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v } + RELU_STABILIZER),
        }
        Ok(())
    }

    /// The shift a block of raw key values asks for: its max for the softmax kernel (so exp
    /// cannot overflow), 0 for ReLU features (already final).
    pub(super) fn key_shift_of(&self, a: &[f32]) -> f32 {
        match self.kernel {
            Kernel::Softmax => a.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
            Kernel::Relu => 0.0,
        }
    }

    /// Whether keys need a shift at all (a causal run makes a first pass for it).
    pub(super) fn shifts_keys(&self) -> bool {
        self.kernel == Kernel::Softmax
    }

    /// Query features in place; writes each row's shift (its max exponent, or 0 for ReLU).
    pub(super) fn queries(&self, x: &[f32], a: &mut [f32], shift: &mut [f32]) -> Result<()> {
        self.raw(x, a)?;
        if self.kernel == Kernel::Relu {
            shift.fill(0.0);
            return Ok(());
        }
        for (row, sh) in a.chunks_mut(self.m).zip(shift.iter_mut()) {
            *sh = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let c = *sh + self.half_ln_m();
            crate::simd::exp_shifted(row, c);
        }
        Ok(())
    }

    /// Softmax kernel: exp(a − key_shift − ½ ln m) in place; ReLU: nothing to do.
    pub(super) fn finish_keys(&self, a: &mut [f32], key_shift: f32) {
        if self.kernel == Kernel::Softmax {
            crate::simd::exp_shifted(a, key_shift + self.half_ln_m());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The features before only the used rows were orthonormalized: each whole d×d block.
    fn whole_block_features(m: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut out = Vec::with_capacity(m * d);
        let chi = ChiSquared::new(d as f64).unwrap();
        for b in 0..m.div_ceil(d) {
            let mut rng = seeded::rng(seeded::derive_seed(seed, &[0x4641564f, d as u64, b as u64]));
            let mut g: Vec<f64> = (0..d * d).map(|_| StandardNormal.sample(&mut rng)).collect();
            orthonormalize_rows(&mut g, d);
            for row in g.chunks(d).take(m - b * d) {
                let norm = chi.sample(&mut rng).sqrt();
                out.extend(row.iter().map(|&x| (x * norm) as f32));
            }
        }
        out
    }

    /// Orthonormalizing only the used rows gives the same features, bit for bit, with a partial
    /// last block, a block cut to fewer rows than d, and whole blocks.
    #[test]
    fn used_rows_only_gives_the_whole_block_features() {
        for (m, d) in [(10, 4), (3, 16), (64, 16), (70, 32), (1, 1)] {
            assert_eq!(orthogonal_features(m, d, 7), whole_block_features(m, d, 7), "m={m} d={d}");
        }
    }
}
