//! The operand formats of the one tiled block loop ([`super::flash::block_loop`]).
//!
//! The loop (tiles, strips, mask-cover skipping, score modifiers, band mask, online softmax)
//! is the same for every element type; what differs is how Q, K and V are packed and how the
//! two products run, which an [`Operands`] implementation says:
//! - [`F32Panels`]: f32 Kᵀ panels and V rows, FMA microkernels of any [`Simd`] ISA;
//! - `bf16_block::Bf16Pairs` (x86-64): bf16 pairs, both products on `vdpbf16ps`, P rounded to
//!   bf16 after the f32 softmax (the layout is in `super::bf16_pairs`).
//!
//! So every modifier, mask and the NaN-in-V policy ([`super::masked_pv`]) run in either format
//! through the same code; only the microkernels are per format.

use super::Simd;
use super::flash::{BlockJob, pv_chunk, qk_panel};
use super::kv_rows::Strided;
use super::masked_pv;
use super::padded_dim;

/// One operand format of the block loop for strips of `MR` rows.
pub trait Operands<const MR: usize>: Copy {
    /// The f32 vector vocabulary of the score step (modifiers, softmax).
    type S: Simd;
    /// One packed element: an f32, or two bf16 in a `u32` (low half first).
    type E: Copy;
    /// Keys per packed K panel.
    const KP: usize;
    fn simd(self) -> Self::S;
    /// Packed elements per Q row, which is also the step count of one K panel: D, or ⌈D/2⌉.
    fn row_len(d: usize) -> usize;
    /// Packed V elements for `nkeys` keys of `dp` padded columns.
    fn v_len(nkeys: usize, dp: usize) -> usize;
    /// P scratch (`u32`) the format needs for a strip of `tile` keys.
    fn p_len(tile: usize) -> usize;
    /// `S = Q·Kᵀ` for `MR` rows and one panel of [`Operands::KP`] keys.
    ///
    /// # Safety
    /// `q` readable for `MR·rl`, `k` for `rl·KP` (`rl` = [`Operands::row_len`]), `out` writable
    /// for rows `r·ld + [0, KP)`.
    unsafe fn qk_panel(self, q: *const Self::E, rl: usize, k: *const Self::E, out: *mut f32, ld: usize);
    /// `O = α ⊙ O + P·V` for the strip at block row `r0` over packed keys `[a, b)`, P being the
    /// f32 softmax weights in `job.s` (row stride `job.tile`); leaves out the pairs a row may
    /// not see when a non-finite V row is among the keys ([`masked_pv`]).
    fn pv(self, job: &mut BlockJob<'_, Self::E>, r0: usize, a: usize, b: usize, alpha: &[f32; MR]);
}

/// f32 operands on the ISA `S`: K panels of `KPV` vectors, P·V chunks of `NV` vectors, and
/// (`SPLIT`) two accumulator sets for the Q·Kᵀ reduction.
#[derive(Clone, Copy, Debug)]
pub struct F32Panels<S, const KPV: usize, const NV: usize, const SPLIT: bool>(pub S);

impl<S: Simd, const MR: usize, const KPV: usize, const NV: usize, const SPLIT: bool> Operands<MR>
    for F32Panels<S, KPV, NV, SPLIT>
{
    type S = S;
    type E = f32;
    const KP: usize = KPV * S::W;

    #[inline(always)]
    fn simd(self) -> S {
        self.0
    }
    #[inline(always)]
    fn row_len(d: usize) -> usize {
        d
    }
    #[inline(always)]
    fn v_len(nkeys: usize, dp: usize) -> usize {
        nkeys * dp
    }
    #[inline(always)]
    fn p_len(_tile: usize) -> usize {
        0
    }
    #[inline(always)]
    unsafe fn qk_panel(self, q: *const f32, rl: usize, k: *const f32, out: *mut f32, ld: usize) {
        // SAFETY: forwarded from the caller (rl = D for f32 operands).
        unsafe { qk_panel::<S, MR, KPV, SPLIT>(self.0, q, rl, k, out, ld) }
    }
    #[inline(always)]
    fn pv(self, job: &mut BlockJob<'_, f32>, r0: usize, a: usize, b: usize, alpha: &[f32; MR]) {
        let (s, w, tile, n) = (self.0, S::W, job.tile, b - a);
        let dp = padded_dim(job.d);
        if !masked_pv::within(job.vbad, a, b).is_empty() {
            // A non-finite V row among these keys: P = 0 must not multiply it for rows that may
            // not see it (0·NaN = NaN), so this strip adds P·V row by row without those pairs.
            masked_pv::pv_rows::<S, MR>(s, job, r0, a, b, alpha);
            return;
        }
        let nvec = dp / w;
        let mut c = 0;
        while c < nvec {
            let left = nvec - c;
            // SAFETY: P is MR rows of ld = tile holding n keys; V rows a..b < nkeys of DP
            // floats, columns c·W.. + chunk·W ≤ DP; O rows r0.. of DP floats, same columns
            // (extents checked in `block_loop`).
            unsafe {
                let p = job.s.as_ptr();
                let v = (Strided::new(job.vpack.as_ptr(), dp, b), a, c * w);
                let o = job.acc.as_mut_ptr().add(r0 * dp + c * w);
                let step = if left >= NV {
                    pv_chunk::<S, _, MR, NV>(s, p, tile, n, v, o, dp, alpha);
                    NV
                } else if left >= 3 {
                    pv_chunk::<S, _, MR, 3>(s, p, tile, n, v, o, dp, alpha);
                    3
                } else if left >= 2 {
                    pv_chunk::<S, _, MR, 2>(s, p, tile, n, v, o, dp, alpha);
                    2
                } else {
                    pv_chunk::<S, _, MR, 1>(s, p, tile, n, v, o, dp, alpha);
                    1
                };
                c += step;
            }
        }
    }
}
