//! The shared, ISA-generic body of the tiled attention kernel used by `flash-cpu` and `local`,
//! and the one home of the online-softmax step.
//!
//! Everything here is `#[inline(always)]` and generic over [`Simd`]; the per-ISA modules
//! instantiate [`process_block`] inside a `#[target_feature]` wrapper with their register
//! blocking (`MR` rows per strip, `KPV` vectors of keys per K panel, `NV` vectors of output
//! columns per P·V chunk). The loop itself, [`block_loop`], is generic over the operand format
//! ([`Operands`]): f32 panels ([`F32Panels`], below) or bf16 pairs on `vdpbf16ps`
//! (`super::bf16_block`), so score modifiers, masks and the NaN-in-V policy are one code path
//! for both.
//!
//! # Data layout of f32 operands (built by the `pack_*` functions, f16/bf16 widened while packing)
//! - Q block: `rows × D` row-major, unscaled (softmax applies `scale·log2(e)` with one FMA).
//! - K: panels of `KP = KPV·W` keys, each panel `D × KP` (Kᵀ): the QKᵀ microkernel broadcasts
//!   one q element and loads `KPV` vectors of consecutive keys.
//! - V: `keys × DP` row-major with `DP = round_up(D, 16)` zero-padded: the P·V microkernel
//!   broadcasts one p and loads `NV` vectors of a V row.
//!
//! # Block loop
//! For each key tile (a multiple of `KP` keys, sized by the caller to stay in L2), for each
//! strip of `MR` query rows: the strip's key range is trimmed to whole panels inside the tile
//! (tiles and panels wholly outside every row's band are skipped), S = Q·Kᵀ (MR×n) is
//! computed by the `MR×KP` microkernel, boundary tiles get −∞ outside each row's band
//! (interior tiles are not masked), the online-softmax step updates (m, l) and rescales, and
//! the `MR×(NV·W)` microkernel accumulates O += P·V. Each row's reduction order depends only on
//! the block/tile geometry, never on threads, so results are bitwise reproducible.
//!
//! # exp2 accuracy
//! [`exp2`]: round-to-nearest split `x = n + f`, `f ∈ [-½, ½]`, degree-6 polynomial for 2ᶠ
//! (relative-error minimax fit, Horner with FMA), 2ⁿ from exponent bits; inputs ≤ −127 give
//! exactly 0. Measured max relative error vs f64 `exp2` over 2·10⁶ points in [−126, 0]:
//! **7.9e-8** (≈0.7 f32 ulp) on the AVX2 and AVX-512 paths (FMA), **9.8e-8** on the portable
//! path (separate multiply and add); test `exp2_max_relative_error` in `tests/flash_cpu.rs`
//! asserts < 1.5e-7 on every path the CPU has. (A degree-5 fit measured 1.6e-7 and saved one
//! FMA per 16 scores, about 0.7% of the kernel's FMAs; the extra accuracy was worth it.)
//!
//! # Rounding
//! Scores are `q·k` in f32 (FMA chains; two interleaved chains on 32-register ISAs), the scale
//! is applied inside the exponent with one FMA, P·V accumulates in f32 and rows are divided by
//! their sum at the end. Errors are then of the order of the naive f32 computation's.
#![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays read best.

use super::Simd;
use super::kv_rows::Rows;
pub use super::operands::{F32Panels, Operands};
pub use super::padded_dim;
pub use super::score_mod::{BlockMods, Cover, CoverFn, PairFn, finish_rows_with_sink};
use super::score_mod::{RowMod, modify};
use crate::row_layout::HeadRows;

/// Register geometry of one ISA's kernel: rows per strip and keys per packed K panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelShape {
    pub mr: usize,
    pub kp: usize,
}

const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to the nearest integer.
// Degree-6 relative-error minimax fit of 2ᶠ on [-½, ½] (Horner, constant term 1).
#[allow(clippy::approx_constant)] // Fitted coefficient: equals ln 2 only to f32 rounding.
const C1: f32 = 0.693_147_2;
const C2: f32 = 0.240_226_48;
const C3: f32 = 0.055_503_324;
const C4: f32 = 0.009_618_437;
const C5: f32 = 0.001_339_887_5;
const C6: f32 = 0.000_153_533_62;

/// 2ˣ for `x ≤ 0` (also valid up to 127); `x ≤ −127` and `−∞` give 0, NaN gives NaN.
#[inline(always)]
pub fn exp2<S: Simd>(s: S, x: S::V) -> S::V {
    let x = s.max(s.splat(-127.0), x);
    let t = s.add(x, s.splat(MAGIC));
    let n = s.sub(t, s.splat(MAGIC));
    let f = s.sub(x, n);
    let mut p = s.fma(s.splat(C6), f, s.splat(C5));
    p = s.fma(p, f, s.splat(C4));
    p = s.fma(p, f, s.splat(C3));
    p = s.fma(p, f, s.splat(C2));
    p = s.fma(p, f, s.splat(C1));
    p = s.fma(p, f, s.splat(1.0));
    s.mul(p, s.pow2_from_magic(t))
}

/// [`exp2`] over a slice (tail done through a padded vector).
#[inline(always)]
pub fn exp2_slice<S: Simd>(s: S, xs: &mut [f32]) {
    let w = S::W;
    let mut tmp = [0.0f32; 64];
    for c in xs.chunks_mut(w) {
        tmp[..c.len()].copy_from_slice(c);
        // SAFETY: tmp holds 64 ≥ W floats.
        unsafe {
            let v = exp2(s, s.load(tmp.as_ptr()));
            s.store(tmp.as_mut_ptr(), v);
        }
        let n = c.len();
        c.copy_from_slice(&tmp[..n]);
    }
}

/// The online-softmax step for one row and one tile, in base 2.
///
/// `row` holds the tile's raw scores `q·k` (−∞ where masked; `len` a multiple of `W`) and `c` is
/// `scale·log2(e)`; on return `row` holds `p = 2^(c·s − m_new)`, the exponent formed with one FMA
/// so that only scores near the row max carry (small) rounding, and a rounding of `m_new` shifts
/// every exponent alike and cancels in the normalization. `(m, l)` are the running max (in
/// units of `c·s`) and sum of the row; the returned `alpha = 2^(m_old − m_new)` is what the
/// caller multiplies the row's O accumulator by before adding P·V. A row that has seen no
/// allowed key keeps `m = −∞`, gets p = 0 and alpha = 1.
#[inline(always)]
pub fn online_softmax_step<S: Simd>(s: S, row: &mut [f32], c: f32, m: &mut f32, l: &mut f32) -> f32 {
    let w = S::W;
    debug_assert_eq!(row.len() % w, 0);
    let mut vmax = s.splat(f32::NEG_INFINITY);
    for c in row.chunks_exact(w) {
        // SAFETY: chunks_exact yields exactly W floats.
        vmax = s.max(vmax, unsafe { s.load(c.as_ptr()) });
    }
    let tile_max = s.reduce_max(vmax) * c;
    let m_new = if *m > tile_max { *m } else { tile_max };
    if m_new == f32::NEG_INFINITY {
        // x86 `max` drops a NaN met against −∞, so a NaN score can hide here: keep it in its row
        // (NaN policy) by poisoning l and O instead of reading the row as empty.
        if row.iter().any(|x| x.is_nan()) {
            *l = f32::NAN;
            row.fill(f32::NAN);
            return f32::NAN;
        }
        row.fill(0.0);
        return 1.0;
    }
    let alpha = (*m - m_new).exp2();
    let (cv, neg_m) = (s.splat(c), s.splat(-m_new));
    let mut vsum = s.splat(0.0);
    for ch in row.chunks_exact_mut(w) {
        // SAFETY: chunks_exact_mut yields exactly W floats.
        unsafe {
            let p = exp2(s, s.fma(s.load(ch.as_ptr()), cv, neg_m));
            s.store(ch.as_mut_ptr(), p);
            vsum = s.add(vsum, p);
        }
    }
    *l = *l * alpha + s.reduce_sum(vsum);
    *m = m_new;
    alpha
}

/// One query block's work: inputs packed as in the module docs, scratch, and accumulators.
/// Built by the backends; [`process_block`] checks every length before touching memory.
pub struct BlockJob<'a, E = f32> {
    /// Head dimension D.
    pub d: usize,
    /// `rows × D` Q (`rows × ⌈D/2⌉` for bf16 pairs); `rows` a multiple of the ISA's `mr`.
    pub q: &'a [E],
    /// `scale·log2(e)`, applied to scores inside the online-softmax step.
    pub scale_log2: f32,
    /// Per row, its allowed keys `[lo, hi)` in packed coordinates (`lo == hi`: none).
    pub ranges: &'a [(usize, usize)],
    /// `nkeys / kp` panels of `D × kp` (`⌈D/2⌉ × kp` pairs).
    pub kpack: &'a [E],
    /// `nkeys × DP` (`nkeys/2 × DP` pairs).
    pub vpack: &'a [E],
    /// Packed keys whose V row holds a NaN or ±∞ (ascending; see [`super::masked_pv`]).
    pub vbad: &'a [usize],
    /// Packed keys (a multiple of `kp`; pad keys are zero and never inside a range).
    pub nkeys: usize,
    /// Keys per L2 tile (a positive multiple of `kp`); tiles start at packed key 0.
    pub tile: usize,
    /// `rows × DP` O accumulator (unnormalized on return).
    pub acc: &'a mut [f32],
    /// `mr × tile` score scratch.
    pub s: &'a mut [f32],
    /// `mr × tile/2` P pairs (bf16 operands only; empty for f32).
    pub p: &'a mut [u32],
    /// Running max (base 2) per row.
    pub m: &'a mut [f32],
    /// Running sum per row.
    pub l: &'a mut [f32],
    /// Score modifiers (`None`: the plain path, the scale folded into the exponent).
    pub mods: Option<&'a BlockMods<'a>>,
}

/// `S = Q·Kᵀ` for `MR` rows and one panel of `KPV·W` keys.
///
/// # Safety
/// `q` readable for `MR·d`, `k` for `d·KPV·W`, `out` writable for rows `r·ld + [0, KPV·W)`.
#[inline(always)]
pub(super) unsafe fn qk_panel<S: Simd, const MR: usize, const KPV: usize, const SPLIT: bool>(
    s: S,
    q: *const f32,
    d: usize,
    k: *const f32,
    out: *mut f32,
    ld: usize,
) {
    let w = S::W;
    let kp = KPV * w;
    /// acc += q[:, t] ⊗ k[t, :] for one step of the reduction.
    ///
    /// # Safety
    /// As for `qk_panel`, with `t < d`.
    #[inline(always)]
    unsafe fn step<S: Simd, const MR: usize, const KPV: usize>(
        s: S,
        q: *const f32,
        d: usize,
        kt: *const f32,
        t: usize,
        acc: &mut [[S::V; KPV]; MR],
    ) {
        // SAFETY: the caller guarantees q spans MR·d and kt spans KPV·W floats.
        unsafe {
            let mut kv = [s.splat(0.0); KPV];
            for v in 0..KPV {
                kv[v] = s.load(kt.add(v * S::W));
            }
            for r in 0..MR {
                let qb = s.splat(*q.add(r * d + t));
                for v in 0..KPV {
                    acc[r][v] = s.fma(qb, kv[v], acc[r][v]);
                }
            }
        }
    }
    // With SPLIT, even and odd steps of the D-reduction go to two accumulator sets (ISAs with
    // 32 registers): half the dependency chain and about 1/√2 the rounding error of one chain.
    let mut acc = [[s.splat(0.0); KPV]; MR];
    let mut acc2 = [[s.splat(0.0); KPV]; MR];
    // SAFETY (whole body): every offset stays within the extents the caller guarantees.
    unsafe {
        let mut t = 0;
        if SPLIT {
            while t + 2 <= d {
                step::<S, MR, KPV>(s, q, d, k.add(t * kp), t, &mut acc);
                step::<S, MR, KPV>(s, q, d, k.add((t + 1) * kp), t + 1, &mut acc2);
                t += 2;
            }
        }
        while t < d {
            step::<S, MR, KPV>(s, q, d, k.add(t * kp), t, &mut acc);
            t += 1;
        }
        for r in 0..MR {
            for v in 0..KPV {
                let a = if SPLIT { s.add(acc[r][v], acc2[r][v]) } else { acc[r][v] };
                s.store(out.add(r * ld + v * w), a);
            }
        }
    }
}

/// `O[:, chunk] = alpha ⊙ O[:, chunk] + P·V[:, chunk]` for `MR` rows, `n` keys, `NV·W` columns
/// (V's columns `c0 + [0, NV·W)` of its rows `j0 + [0, n)`, widened by the row source).
///
/// # Safety
/// `p` readable for rows `r·ldp + [0, n)`, `v` holds rows `j0 + [0, n)` with columns
/// `c0 + [0, NV·W)` (`c0` a multiple of W), `o` readable and writable for rows
/// `r·ldo + [0, NV·W)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pv_chunk<S: Simd, V: Rows, const MR: usize, const NV: usize>(
    s: S,
    p: *const f32,
    ldp: usize,
    n: usize,
    (v, j0, c0): (V, usize, usize),
    o: *mut f32,
    ldo: usize,
    alpha: &[f32; MR],
) {
    let w = S::W;
    let mut acc = [[s.splat(0.0); NV]; MR];
    // SAFETY (whole body): every offset stays within the extents the caller guarantees.
    unsafe {
        for r in 0..MR {
            let a = s.splat(alpha[r]);
            for c in 0..NV {
                acc[r][c] = s.mul(s.load(o.add(r * ldo + c * w)), a);
            }
        }
        for j in 0..n {
            let vj = v.row(j0 + j);
            let mut vv = [s.splat(0.0); NV];
            for c in 0..NV {
                vv[c] = V::load(s, vj, c0 + c * w);
            }
            for r in 0..MR {
                let pb = s.splat(*p.add(r * ldp + j));
                for c in 0..NV {
                    acc[r][c] = s.fma(pb, vv[c], acc[r][c]);
                }
            }
        }
        for r in 0..MR {
            for c in 0..NV {
                s.store(o.add(r * ldo + c * w), acc[r][c]);
            }
        }
    }
}

/// Runs one query block on f32 operands (see the module docs): [`block_loop`] with
/// [`F32Panels`]. Panics only on an internal layout bug, never on user input.
#[inline(always)]
pub fn process_block<S: Simd, const MR: usize, const KPV: usize, const NV: usize, const SPLIT: bool>(
    s: S,
    job: &mut BlockJob<'_>,
) {
    assert!(NV <= 4 && padded_dim(job.d).is_multiple_of(S::W));
    block_loop::<F32Panels<S, KPV, NV, SPLIT>, MR>(F32Panels(s), job)
}

/// The block loop of every operand format (see the module docs and [`Operands`]). Panics only
/// on an internal layout bug (a `BlockJob` whose buffers disagree with its sizes), never on
/// user input.
#[inline(always)]
pub fn block_loop<O: Operands<MR>, const MR: usize>(o: O, job: &mut BlockJob<'_, O::E>) {
    let kp = O::KP;
    let (d, rl) = (job.d, O::row_len(job.d));
    let dp = padded_dim(d);
    let rows = job.ranges.len();
    let tile = job.tile;
    // Every raw-pointer access below is justified by these checks.
    assert!(dp.is_multiple_of(O::S::W) && kp.is_multiple_of(O::S::W) && rows.is_multiple_of(MR));
    assert!(job.nkeys.is_multiple_of(kp) && kp.is_multiple_of(2));
    assert!(tile > 0 && tile.is_multiple_of(kp) && job.s.len() >= MR * tile && job.p.len() >= O::p_len(tile));
    assert!(job.q.len() >= rows * rl && job.acc.len() >= rows * dp && job.m.len() >= rows && job.l.len() >= rows);
    assert!(job.kpack.len() >= job.nkeys * rl && job.vpack.len() >= O::v_len(job.nkeys, dp));
    assert!(job.ranges.iter().all(|&(lo, hi)| lo <= hi && hi <= job.nkeys));

    job.acc[..rows * dp].fill(0.0);
    job.m[..rows].fill(f32::NEG_INFINITY);
    job.l[..rows].fill(0.0);
    let nonempty = job.ranges.iter().filter(|r| r.0 < r.1);
    let lo_all = nonempty.clone().map(|r| r.0).min();
    let hi_all = nonempty.map(|r| r.1).max();
    let (Some(lo_all), Some(hi_all)) = (lo_all, hi_all) else {
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
            let a = t0.max(slo) / kp * kp;
            let b = t1.min(shi.div_ceil(kp) * kp);
            if a >= b {
                continue;
            }
            match job.mods.and_then(|m| m.panels) {
                None => strip_keys::<O, MR>(o, job, r0, a, b, true),
                // Runs of panels the boolean mask leaves non-empty; empty panels are skipped, and
                // a run of panels the mask allows wholly skips the per-pair mask.
                Some(cover) => {
                    // One look at the whole range first: most strips of a sparse mask skip it.
                    match cover(r0, a, b) {
                        Cover::Empty => continue,
                        Cover::Full => {
                            strip_keys::<O, MR>(o, job, r0, a, b, false);
                            continue;
                        }
                        Cover::Partial => {}
                    }
                    let (mut pnl, end) = (a / kp, b / kp);
                    while pnl < end {
                        let c = cover(r0, pnl * kp, (pnl + 1) * kp);
                        pnl += 1;
                        if c == Cover::Empty {
                            continue;
                        }
                        let (start, mut partial) = (pnl - 1, c == Cover::Partial);
                        while pnl < end {
                            match cover(r0, pnl * kp, (pnl + 1) * kp) {
                                Cover::Empty => break,
                                c => partial |= c == Cover::Partial,
                            }
                            pnl += 1;
                        }
                        strip_keys::<O, MR>(o, job, r0, start * kp, pnl * kp, partial);
                    }
                }
            }
        }
        t0 += tile;
    }
}

/// One strip of `MR` rows over packed keys `[a, b)` (whole panels inside one tile): S = Q·Kᵀ,
/// score modifiers, band mask, online softmax, O += P·V. `pair_mask`: apply the boolean mask.
#[inline(always)]
fn strip_keys<O: Operands<MR>, const MR: usize>(
    o: O,
    job: &mut BlockJob<'_, O::E>,
    r0: usize,
    a: usize,
    b: usize,
    pair_mask: bool,
) {
    let (s, kp) = (o.simd(), O::KP);
    let (rl, tile) = (O::row_len(job.d), job.tile);
    let strip = &job.ranges[r0..r0 + MR];
    let n = b - a;
    let sbuf = &mut *job.s;
    for pnl in a / kp..b / kp {
        // SAFETY: rows r0..r0+MR < rows so q spans MR·rl; panel pnl < nkeys/kp so kpack
        // spans rl·kp from pnl·rl·kp; the S window is MR rows of ld = tile ≥ n ≥ pnl·kp−a+kp
        // (extents checked in `block_loop`).
        unsafe {
            o.qk_panel(
                job.q.as_ptr().add(r0 * rl),
                rl,
                job.kpack.as_ptr().add(pnl * rl * kp),
                sbuf.as_mut_ptr().add(pnl * kp - a),
                tile,
            );
        }
    }
    if let Some(m) = job.mods {
        for i in 0..MR {
            let row = &mut sbuf[i * tile..i * tile + n];
            if let Some(score) = &m.score {
                let rm = m.rows.get(r0 + i).copied().unwrap_or_default();
                modify(s, score, RowMod { diag: rm.diag - a as f32, ..rm }, row);
            }
            if let Some((terms, real)) = m.pair.and_then(|pair| pair(r0 + i, a, pair_mask)) {
                terms.apply(s, row, real);
            }
        }
    }
    if !strip.iter().all(|&(lo, hi)| lo <= a && b <= hi) {
        for (i, &(lo, hi)) in strip.iter().enumerate() {
            let row = &mut sbuf[i * tile..i * tile + n];
            let (lo, hi) = (lo.clamp(a, b) - a, hi.clamp(a, b) - a);
            if lo >= hi {
                row.fill(f32::NEG_INFINITY);
            } else {
                row[..lo].fill(f32::NEG_INFINITY);
                row[hi..].fill(f32::NEG_INFINITY);
            }
        }
    }
    let mut alpha = [1.0f32; MR];
    for i in 0..MR {
        let row = &mut sbuf[i * tile..i * tile + n];
        alpha[i] = online_softmax_step(s, row, job.scale_log2, &mut job.m[r0 + i], &mut job.l[r0 + i]);
    }
    o.pv(job, r0, a, b, &alpha);
}

/// Normalizes `rows` accumulator rows into `out` (`rows × D`) and writes the natural-log LSE.
/// A row with no allowed key (l = 0) gets zeros and LSE = −∞.
pub fn finish_rows(acc: &[f32], m: &[f32], l: &[f32], d: usize, out: &mut [f32], lse: Option<&mut [f32]>) {
    finish_rows_with_sink(acc, m, l, d, out, lse, None)
}

/// Packs keys `k0..k1` of one head's rows (any row stride) into `D × kp` panels
/// (Kᵀ), zero-padding the last panel. Returns the packed key count (a multiple of `kp`).
pub fn pack_k(src: HeadRows<'_>, k0: usize, k1: usize, d: usize, kp: usize, dst: &mut Vec<f32>) -> usize {
    pack_k_rows(k1 - k0, d, kp, dst, |j, row| src.read(k0 + j, row))
}

/// [`pack_k`] over `n` key rows from a row source: `read(j, row)` fills key `j`'s D elements
/// (a KV cache's pages, say, read where they lie). Returns the packed key count.
pub fn pack_k_rows(
    n: usize,
    d: usize,
    kp: usize,
    dst: &mut Vec<f32>,
    mut read: impl FnMut(usize, &mut [f32]),
) -> usize {
    let nkeys = n.div_ceil(kp) * kp;
    dst.clear();
    dst.resize(nkeys * d, 0.0);
    let mut row = vec![0.0f32; d];
    for j in 0..n {
        read(j, &mut row);
        let panel = &mut dst[(j / kp) * d * kp..(j / kp + 1) * d * kp];
        let jj = j % kp;
        for (t, &x) in row.iter().enumerate() {
            panel[t * kp + jj] = x;
        }
    }
    nkeys
}

/// Packs value rows `k0..k1` of one head's rows as `nkeys × DP`, zero-padded.
/// Returns the packed keys whose V row is not finite ([`BlockJob::vbad`]).
pub fn pack_v(src: HeadRows<'_>, k0: usize, k1: usize, d: usize, kp: usize, dst: &mut Vec<f32>) -> Vec<usize> {
    pack_v_rows(k1 - k0, d, kp, dst, |j, row| src.read(k0 + j, row))
}

/// [`pack_v`] over `n` value rows from a row source (`read(j, row)` fills value `j`).
pub fn pack_v_rows(
    n: usize,
    d: usize,
    kp: usize,
    dst: &mut Vec<f32>,
    mut read: impl FnMut(usize, &mut [f32]),
) -> Vec<usize> {
    let dp = padded_dim(d);
    let nkeys = n.div_ceil(kp) * kp;
    dst.clear();
    dst.resize(nkeys * dp, 0.0);
    let mut bad = Vec::new();
    for j in 0..n {
        let row = &mut dst[j * dp..j * dp + d];
        read(j, row);
        if !super::masked_pv::all_finite(row) {
            bad.push(j);
        }
    }
    bad
}

/// Loads query rows `i0..i0 + rows` of one head into `dst` (`rows_pad × D`, zero pad rows).
/// Q is not pre-scaled: the scale is applied in the softmax step, one rounding fewer per score.
pub fn pack_q(src: HeadRows<'_>, i0: usize, rows: usize, rows_pad: usize, d: usize, dst: &mut Vec<f32>) {
    dst.clear();
    dst.resize(rows_pad * d, 0.0);
    src.read_rows(i0, d, &mut dst[..rows * d]);
}
