//! The bf16 prefill block kernel (AVX512_BF16): [`super::flash::process_block`]'s tile/strip
//! loop with both products on `vdpbf16ps`, for bf16 inputs on [`super::Isa::Avx512Bf16`].
//!
//! # Packed layout (built by [`pack_k_pairs`], [`pack_v_pairs`], [`pack_q_pairs`])
//! Every `u32` holds two bf16 (low half first), the pairs `vdpbf16ps` multiplies and adds:
//! - K: panels of [`KP`] = 32 keys; panel = `⌈D/2⌉` steps × 32 lanes, lane `j` of step `t` =
//!   `(k_j[2t], k_j[2t+1])`. S = Q·Kᵀ broadcasts one Q pair and runs two `vdpbf16ps` per step.
//! - V: one row of `DP` lanes per **pair of keys**, lane `c` = `(v_{2p}[c], v_{2p+1}[c])`, so
//!   O += P·V broadcasts the P pair `(p_{2p}, p_{2p+1})` and keeps columns in natural order.
//! - Q: `rows × ⌈D/2⌉` pairs (D odd: the last pair's high half is 0).
//!
//! Scores and the online softmax are f32 (the shared [`online_softmax_step`], masking as in the
//! f32 kernel); the row sum is taken before P is rounded to bf16 (round to nearest even), as
//! FlashAttention does on GPUs. Strips of [`MR`] rows, P·V chunks of four 16-column vectors.
#![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays read best.

use super::bf16::Avx512Bf16;
use super::flash::{online_softmax_step, padded_dim};
use super::masked_pv::within;
use half::bf16;
use std::arch::x86_64::*;

/// Rows per strip.
pub const MR: usize = 6;
/// Keys per K panel.
pub const KP: usize = 32;

/// Packs keys `k0..k1` (head key 0 at element `base`) into pair panels; returns the packed key
/// count (a multiple of [`KP`], pad keys zero).
pub fn pack_k_pairs(src: &[bf16], base: usize, k0: usize, k1: usize, d: usize, dst: &mut Vec<u32>) -> usize {
    let (nkeys, d2) = ((k1 - k0).div_ceil(KP) * KP, d.div_ceil(2));
    dst.clear();
    dst.resize(nkeys * d2, 0);
    for j in 0..k1 - k0 {
        let row = &src[base + (k0 + j) * d..base + (k0 + j + 1) * d];
        let panel = &mut dst[(j / KP) * d2 * KP..(j / KP + 1) * d2 * KP];
        for (t, pair) in row.chunks(2).enumerate() {
            let hi = pair.get(1).map_or(0, |x| x.to_bits() as u32);
            panel[t * KP + j % KP] = pair[0].to_bits() as u32 | hi << 16;
        }
    }
    nkeys
}

/// Packs value rows `k0..k1` as `nkeys/2` rows of `padded_dim(D)` key pairs. Returns the
/// packed keys whose V row is not finite ([`Bf16BlockJob::vbad`]).
pub fn pack_v_pairs(src: &[bf16], base: usize, k0: usize, k1: usize, d: usize, dst: &mut Vec<u32>) -> Vec<usize> {
    let (nkeys, dp) = ((k1 - k0).div_ceil(KP) * KP, padded_dim(d));
    dst.clear();
    dst.resize(nkeys / 2 * dp, 0);
    let mut bad = Vec::new();
    for j in 0..k1 - k0 {
        let row = &src[base + (k0 + j) * d..base + (k0 + j + 1) * d];
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

/// Loads `rows` query rows (row 0 at `base`) as pairs into `rows_pad × ⌈D/2⌉` (pad rows zero).
pub fn pack_q_pairs(src: &[bf16], base: usize, rows: usize, rows_pad: usize, d: usize, dst: &mut Vec<u32>) {
    let d2 = d.div_ceil(2);
    dst.clear();
    dst.resize(rows_pad * d2, 0);
    for r in 0..rows {
        for (t, pair) in src[base + r * d..base + (r + 1) * d].chunks(2).enumerate() {
            dst[r * d2 + t] = pair[0].to_bits() as u32 | pair.get(1).map_or(0, |x| x.to_bits() as u32) << 16;
        }
    }
}

/// One query block on pair-packed K/V (the bf16 twin of [`super::flash::BlockJob`]).
pub struct Bf16BlockJob<'a> {
    pub d: usize,
    /// `rows × ⌈D/2⌉` Q pairs; `rows` a multiple of [`MR`].
    pub q: &'a [u32],
    pub scale_log2: f32,
    /// Per row, allowed packed keys `[lo, hi)`.
    pub ranges: &'a [(usize, usize)],
    pub kpack: &'a [u32],
    pub vpack: &'a [u32],
    /// Packed keys whose V row is not finite (ascending; see [`super::masked_pv`]).
    pub vbad: &'a [usize],
    pub nkeys: usize,
    /// Keys per tile, a positive multiple of [`KP`].
    pub tile: usize,
    /// `rows × DP` O accumulator (unnormalized on return).
    pub acc: &'a mut [f32],
    /// `MR × tile` scores.
    pub s: &'a mut [f32],
    /// `MR × tile/2` P pairs.
    pub p: &'a mut [u32],
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
}

#[inline(always)]
fn dp(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
    // SAFETY: both are 64-byte vectors of plain bits; the enclosing `#[target_feature]` function
    // enables avx512bf16.
    unsafe {
        _mm512_dpbf16_ps(acc, std::mem::transmute::<__m512i, __m512bh>(a), std::mem::transmute::<__m512i, __m512bh>(b))
    }
}

/// S = Q·Kᵀ for MR rows and one panel. # Safety: `q` spans `MR·d2`, `k` `d2·KP` u32, `out`
/// rows `r·ld + [0, KP)`.
#[inline(always)]
unsafe fn qk_panel(q: *const u32, d2: usize, k: *const u32, out: *mut f32, ld: usize) {
    // SAFETY: offsets stay inside the extents above.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for t in 0..d2 {
            let k0 = _mm512_loadu_si512(k.add(t * KP) as *const __m512i);
            let k1 = _mm512_loadu_si512(k.add(t * KP + 16) as *const __m512i);
            for r in 0..MR {
                let qb = _mm512_set1_epi32(*q.add(r * d2 + t) as i32);
                acc[r][0] = dp(acc[r][0], qb, k0);
                acc[r][1] = dp(acc[r][1], qb, k1);
            }
        }
        for r in 0..MR {
            _mm512_storeu_ps(out.add(r * ld), acc[r][0]);
            _mm512_storeu_ps(out.add(r * ld + 16), acc[r][1]);
        }
    }
}

/// O = α·O + P·V for MR rows over `np` key pairs and NV column vectors. # Safety: `p` rows
/// `r·ldp + [0, np)`, `v` rows `jp·dp + [0, NV·16)`, `o` rows `r·dp + [0, NV·16)`.
#[inline(always)]
unsafe fn pv_chunk<const NV: usize>(
    p: *const u32,
    ldp: usize,
    np: usize,
    v: *const u32,
    dp_: usize,
    o: *mut f32,
    alpha: &[f32; MR],
) {
    // SAFETY: offsets stay inside the extents above.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for r in 0..MR {
            let a = _mm512_set1_ps(alpha[r]);
            for c in 0..NV {
                acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o.add(r * dp_ + c * 16)), a);
            }
        }
        for jp in 0..np {
            let mut vv = [_mm512_setzero_si512(); NV];
            for c in 0..NV {
                vv[c] = _mm512_loadu_si512(v.add(jp * dp_ + c * 16) as *const __m512i);
            }
            for r in 0..MR {
                let pb = _mm512_set1_epi32(*p.add(r * ldp + jp) as i32);
                for c in 0..NV {
                    acc[r][c] = dp(acc[r][c], pb, vv[c]);
                }
            }
        }
        for r in 0..MR {
            for c in 0..NV {
                _mm512_storeu_ps(o.add(r * dp_ + c * 16), acc[r][c]);
            }
        }
    }
}

/// [`pv_chunk`] for the strip at block row `r0` over packed keys `[a, b)`, row by row, without
/// the pairs of a row and a non-finite V row outside the row's range ([`super::masked_pv`]: P = 0
/// there, and 0·NaN = NaN): that key's half of the V pair is zeroed for the row. Every other
/// product is the microkernel's, in its order.
#[inline(always)]
fn pv_rows(job: &mut Bf16BlockJob<'_>, r0: usize, a: usize, b: usize, alpha: &[f32; MR]) {
    let (dp_, tile, bad) = (padded_dim(job.d), job.tile, within(job.vbad, a, b));
    for i in 0..MR {
        let (lo, hi) = job.ranges[r0 + i];
        // (pair offset from a/2, lanes kept) per pair holding a dropped key; ascending.
        let mut cut: Vec<(usize, u32)> = Vec::new();
        for &j in bad.iter().filter(|&&j| !(lo..hi).contains(&j)) {
            let (jp, keep) = ((j - a) / 2, if (j - a).is_multiple_of(2) { 0xffff_0000 } else { 0x0000_ffff });
            match cut.last_mut() {
                Some(last) if last.0 == jp => last.1 &= keep,
                _ => cut.push((jp, keep)),
            }
        }
        for c in (0..dp_).step_by(16) {
            // SAFETY: O row r0 + i has dp floats from c; V pair rows a/2.. + (b−a)/2 ≤ nkeys/2 of
            // dp lanes (checked in `process`); P row i has tile/2 ≥ (b−a)/2 pairs.
            unsafe {
                let o = job.acc.as_mut_ptr().add((r0 + i) * dp_ + c);
                let mut x = _mm512_mul_ps(_mm512_loadu_ps(o), _mm512_set1_ps(alpha[i]));
                let mut next = cut.iter().peekable();
                for jp in 0..(b - a) / 2 {
                    let mut vv = _mm512_loadu_si512(job.vpack.as_ptr().add((a / 2 + jp) * dp_ + c) as *const __m512i);
                    if let Some(&(_, keep)) = next.next_if(|x| x.0 == jp) {
                        vv = _mm512_and_si512(vv, _mm512_set1_epi32(keep as i32));
                    }
                    x = dp(x, _mm512_set1_epi32(job.p[i * tile / 2 + jp] as i32), vv);
                }
                _mm512_storeu_ps(o, x);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn process_impl(t: Avx512Bf16, job: &mut Bf16BlockJob<'_>) {
    let (d2, dp_) = (job.d.div_ceil(2), padded_dim(job.d));
    let (rows, tile) = (job.ranges.len(), job.tile);
    job.acc[..rows * dp_].fill(0.0);
    job.m[..rows].fill(f32::NEG_INFINITY);
    job.l[..rows].fill(0.0);
    let live = || job.ranges.iter().filter(|r| r.0 < r.1);
    let (Some(lo_all), Some(hi_all)) = (live().map(|r| r.0).min(), live().map(|r| r.1).max()) else {
        return;
    };
    let mut t0 = lo_all / tile * tile;
    while t0 < hi_all {
        let t1 = (t0 + tile).min(job.nkeys);
        for r0 in (0..rows).step_by(MR) {
            let strip = &job.ranges[r0..r0 + MR];
            let live = strip.iter().filter(|r| r.0 < r.1);
            let (Some(slo), Some(shi)) = (live.clone().map(|r| r.0).min(), live.map(|r| r.1).max()) else {
                continue;
            };
            let a = t0.max(slo) / KP * KP;
            let b = t1.min(shi.div_ceil(KP) * KP);
            if a >= b {
                continue;
            }
            let n = b - a;
            for pnl in a / KP..b / KP {
                // SAFETY: rows r0..r0+MR of q exist; panel pnl < nkeys/KP; the S window is MR
                // rows of ld = tile ≥ n (checked in `process`).
                unsafe {
                    qk_panel(
                        job.q.as_ptr().add(r0 * d2),
                        d2,
                        job.kpack.as_ptr().add(pnl * d2 * KP),
                        job.s.as_mut_ptr().add(pnl * KP - a),
                        tile,
                    )
                };
            }
            if !strip.iter().all(|&(lo, hi)| lo <= a && b <= hi) {
                for (i, &(lo, hi)) in strip.iter().enumerate() {
                    let row = &mut job.s[i * tile..i * tile + n];
                    let (lo, hi) = (lo.clamp(a, b) - a, hi.clamp(a, b) - a);
                    row[..lo].fill(f32::NEG_INFINITY);
                    row[hi.max(lo)..].fill(f32::NEG_INFINITY);
                }
            }
            let mut alpha = [1.0f32; MR];
            for i in 0..MR {
                let row = &mut job.s[i * tile..i * tile + n];
                alpha[i] = online_softmax_step(t.avx512(), row, job.scale_log2, &mut job.m[r0 + i], &mut job.l[r0 + i]);
                for c in (0..n).step_by(32) {
                    // SAFETY: n is a multiple of 32; P row i has tile/2 ≥ n/2 pairs.
                    unsafe {
                        let x = _mm512_loadu_ps(job.s.as_ptr().add(i * tile + c));
                        let y = _mm512_loadu_ps(job.s.as_ptr().add(i * tile + c + 16));
                        let bh = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(y, x));
                        _mm512_storeu_si512(job.p.as_mut_ptr().add(i * tile / 2 + c / 2) as *mut __m512i, bh);
                    }
                }
            }
            if !within(job.vbad, a, b).is_empty() {
                // A non-finite V row among these keys (see `pv_rows`).
                pv_rows(job, r0, a, b, &alpha);
                continue;
            }
            let nvec = dp_ / 16;
            let mut c = 0;
            while c < nvec {
                // SAFETY: P is MR rows of tile/2 pairs holding n/2; V pair rows a/2.. + n/2 ≤
                // nkeys/2 of dp lanes, columns c·16 + chunk ≤ dp; O rows r0.. of dp floats.
                unsafe {
                    let (p, ldp) = (job.p.as_ptr(), tile / 2);
                    let v = job.vpack.as_ptr().add(a / 2 * dp_ + c * 16);
                    let o = job.acc.as_mut_ptr().add(r0 * dp_ + c * 16);
                    let step = nvec.min(c + 4) - c;
                    match step {
                        1 => pv_chunk::<1>(p, ldp, n / 2, v, dp_, o, &alpha),
                        2 => pv_chunk::<2>(p, ldp, n / 2, v, dp_, o, &alpha),
                        3 => pv_chunk::<3>(p, ldp, n / 2, v, dp_, o, &alpha),
                        _ => pv_chunk::<4>(p, ldp, n / 2, v, dp_, o, &alpha),
                    }
                    c += step;
                }
            }
        }
        t0 += tile;
    }
}

/// Runs one query block. Panics only on an internal layout bug, never on user input.
pub fn process(t: Avx512Bf16, job: &mut Bf16BlockJob<'_>) {
    let (d2, dp_, rows, tile) = (job.d.div_ceil(2), padded_dim(job.d), job.ranges.len(), job.tile);
    assert!(rows.is_multiple_of(MR) && job.nkeys.is_multiple_of(KP) && tile > 0 && tile.is_multiple_of(KP));
    assert!(job.q.len() >= rows * d2 && job.acc.len() >= rows * dp_ && job.m.len() >= rows && job.l.len() >= rows);
    assert!(job.s.len() >= MR * tile && job.p.len() >= MR * tile / 2);
    assert!(job.kpack.len() >= job.nkeys * d2 && job.vpack.len() >= job.nkeys / 2 * dp_);
    assert!(job.ranges.iter().all(|&(lo, hi)| lo <= hi && hi <= job.nkeys));
    // SAFETY: the token proves AVX-512F/BW and AVX512_BF16; extents were checked above.
    unsafe { process_impl(t, job) }
}
