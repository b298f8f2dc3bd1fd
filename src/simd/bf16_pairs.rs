//! The bf16-pair operand format of the block loop: packing, and a portable reference of its
//! microkernels ([`PairEmu`]).
//!
//! # Packed layout (built by [`pack_k_pairs`], [`pack_v_pairs`], [`pack_q_pairs`])
//! Every `u32` holds two bf16 (low half first), the pairs `vdpbf16ps` multiplies and adds:
//! - K: panels of `kp` keys; panel = `⌈D/2⌉` steps × `kp` lanes, lane `j` of step `t` =
//!   `(k_j[2t], k_j[2t+1])`. S = Q·Kᵀ broadcasts one Q pair per step.
//! - V: one row of `DP` lanes per **pair of keys**, lane `c` = `(v_{2p}[c], v_{2p+1}[c])`, so
//!   O += P·V broadcasts the P pair `(p_{2p}, p_{2p+1})` and keeps columns in natural order.
//! - Q: `rows × ⌈D/2⌉` pairs (D odd: the last pair's high half is 0).
//! - P: the f32 softmax weights rounded to bf16 (round to nearest even) after the row sum is
//!   taken, as FlashAttention does on GPUs; `MR × tile/2` pairs.
//!
//! # Portable reference
//! [`PairEmu`] runs the format with scalar f32 arithmetic: bf16·bf16 products are exact in
//! f32, so each `acc + a·b` is the one rounding `vdpbf16ps` makes per product; it does not
//! flush denormals as the instruction does, and its summation order within a pair may differ
//! from the hardware's. It lets the pair format's block loop (modifiers, masks, NaN-in-V
//! policy) be tested on CPUs without AVX512_BF16; it is slow and no backend selects it.

use super::flash::BlockJob;
use super::masked_pv::{dropped, within};
use super::operands::Operands;
use super::{Simd, padded_dim};
use half::bf16;

/// Packs keys `k0..k1` (head key 0 at element `base`, key `j` at `base + j·stride`) into pair
/// panels of `kp` keys; returns the packed key count (a multiple of `kp`, pad keys zero).
pub fn pack_k_pairs(
    src: &[bf16],
    (base, stride): (usize, usize),
    k0: usize,
    k1: usize,
    d: usize,
    kp: usize,
    dst: &mut Vec<u32>,
) -> usize {
    let (nkeys, d2) = ((k1 - k0).div_ceil(kp) * kp, d.div_ceil(2));
    dst.clear();
    dst.resize(nkeys * d2, 0);
    for j in 0..k1 - k0 {
        let at = base + (k0 + j) * stride;
        let row = &src[at..at + d];
        let panel = &mut dst[(j / kp) * d2 * kp..(j / kp + 1) * d2 * kp];
        for (t, pair) in row.chunks(2).enumerate() {
            let hi = pair.get(1).map_or(0, |x| x.to_bits() as u32);
            panel[t * kp + j % kp] = pair[0].to_bits() as u32 | hi << 16;
        }
    }
    nkeys
}

/// Packs value rows `k0..k1` as `nkeys/2` rows of `padded_dim(D)` key pairs (`nkeys` as in
/// [`pack_k_pairs`]). Returns the packed keys whose V row is not finite ([`BlockJob::vbad`]).
pub fn pack_v_pairs(
    src: &[bf16],
    (base, stride): (usize, usize),
    k0: usize,
    k1: usize,
    d: usize,
    kp: usize,
    dst: &mut Vec<u32>,
) -> Vec<usize> {
    let (nkeys, dp) = ((k1 - k0).div_ceil(kp) * kp, padded_dim(d));
    dst.clear();
    dst.resize(nkeys / 2 * dp, 0);
    let mut bad = Vec::new();
    for j in 0..k1 - k0 {
        let at = base + (k0 + j) * stride;
        let row = &src[at..at + d];
        let shift = 16 * (j % 2);
        for (x, v) in dst[j / 2 * dp..j / 2 * dp + d].iter_mut().zip(row) {
            *x |= (v.to_bits() as u32) << shift;
        }
        // Exponent bits all set: NaN or ±∞.
        if row.iter().fold(false, |any, v| any | (v.to_bits() & 0x7f80 == 0x7f80)) {
            bad.push(j);
        }
    }
    bad
}

/// Zeroes packed key `j`'s half of its V pair row (`dp` lanes per pair row).
pub fn zero_value_pair_half(vpack: &mut [u32], j: usize, dp: usize) {
    let keep = pair_keep_other(j);
    vpack[j / 2 * dp..(j / 2 + 1) * dp].iter_mut().for_each(|x| *x &= keep);
}

/// The bits of a pair word that belong to the other key than packed key `j`.
#[inline(always)]
pub fn pair_keep_other(j: usize) -> u32 {
    if j.is_multiple_of(2) { 0xffff_0000 } else { 0x0000_ffff }
}

/// Loads `rows` query rows (row `r` at `base + r·stride`) as pairs into `rows_pad × ⌈D/2⌉`
/// (pad rows zero).
pub fn pack_q_pairs(
    src: &[bf16],
    (base, stride): (usize, usize),
    rows: usize,
    rows_pad: usize,
    d: usize,
    dst: &mut Vec<u32>,
) {
    let d2 = d.div_ceil(2);
    dst.clear();
    dst.resize(rows_pad * d2, 0);
    for r in 0..rows {
        let at = base + r * stride;
        for (t, pair) in src[at..at + d].chunks(2).enumerate() {
            dst[r * d2 + t] = pair[0].to_bits() as u32 | pair.get(1).map_or(0, |x| x.to_bits() as u32) << 16;
        }
    }
}

/// The two halves of a pair as f32 (low, high).
#[inline(always)]
fn halves(x: u32) -> (f32, f32) {
    (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000))
}

/// The non-finite V rows among packed keys `[a, b)` that block row `r` may not see, as
/// `(pair offset from a/2, bits kept)` per pair holding such a key, ascending
/// ([`super::masked_pv`]: P = 0 there, and 0·NaN = NaN, so that key's half is cleared).
pub fn cut_pairs<E>(job: &BlockJob<'_, E>, r: usize, a: usize, b: usize) -> Vec<(usize, u32)> {
    let mut cut: Vec<(usize, u32)> = Vec::new();
    for k in dropped(job, r, a, within(job.vbad, a, b)) {
        let (jp, keep) = (k / 2, pair_keep_other(k));
        match cut.last_mut() {
            Some(last) if last.0 == jp => last.1 &= keep,
            _ => cut.push((jp, keep)),
        }
    }
    cut
}

/// Portable reference of the pair format on the f32 vocabulary `S`, `KP` keys per panel.
#[derive(Clone, Copy, Debug)]
pub struct PairEmu<S, const KP: usize>(pub S);

impl<S: Simd, const MR: usize, const KP: usize> Operands<MR> for PairEmu<S, KP> {
    type S = S;
    type E = u32;
    const KP: usize = KP;

    fn simd(self) -> S {
        self.0
    }
    fn row_len(d: usize) -> usize {
        d.div_ceil(2)
    }
    fn v_len(nkeys: usize, dp: usize) -> usize {
        nkeys / 2 * dp
    }
    fn p_len(tile: usize) -> usize {
        MR * tile / 2
    }
    unsafe fn qk_panel(self, q: *const u32, rl: usize, k: *const u32, out: *mut f32, ld: usize) {
        let mut acc = [[0.0f32; KP]; MR];
        // SAFETY: the caller guarantees q spans MR·rl, k spans rl·KP and out rows r·ld + [0, KP).
        unsafe {
            for t in 0..rl {
                let kt = std::slice::from_raw_parts(k.add(t * KP), KP);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let (ql, qh) = halves(*q.add(r * rl + t));
                    for (a, &kx) in acc.iter_mut().zip(kt) {
                        let (kl, kh) = halves(kx);
                        *a = (*a + ql * kl) + qh * kh;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                std::slice::from_raw_parts_mut(out.add(r * ld), KP).copy_from_slice(acc);
            }
        }
    }
    fn pv(self, job: &mut BlockJob<'_, u32>, r0: usize, a: usize, b: usize, alpha: &[f32; MR]) {
        let (dp, tile, np) = (padded_dim(job.d), job.tile, (b - a) / 2);
        for (i, &alpha) in alpha.iter().enumerate() {
            for (pp, s) in job.p[i * tile / 2..i * tile / 2 + np].iter_mut().zip(job.s[i * tile..].chunks_exact(2)) {
                *pp = bf16::from_f32(s[0]).to_bits() as u32 | (bf16::from_f32(s[1]).to_bits() as u32) << 16;
            }
            let cut = cut_pairs(job, r0 + i, a, b);
            let o = &mut job.acc[(r0 + i) * dp..(r0 + i + 1) * dp];
            o.iter_mut().for_each(|x| *x *= alpha);
            for jp in 0..np {
                let keep = cut.iter().find(|c| c.0 == jp).map_or(u32::MAX, |c| c.1);
                let (pl, ph) = halves(job.p[i * tile / 2 + jp]);
                for (x, &v) in o.iter_mut().zip(&job.vpack[(a / 2 + jp) * dp..(a / 2 + jp + 1) * dp]) {
                    let (vl, vh) = halves(v & keep);
                    *x = (*x + pl * vl) + ph * vh;
                }
            }
        }
    }
}
