//! The AVX512_BF16 microkernels of the bf16-pair operand format ([`Bf16Pairs`]): both products
//! of [`super::flash::block_loop`] on `vdpbf16ps`, for bf16 inputs on [`super::Isa::Avx512Bf16`].
//! The layout is [`super::bf16_pairs`]'s; the loop, the score modifiers, the masks and the f32
//! online softmax are the f32 kernel's, so every modifier runs here at the bf16 rate.
//!
//! Q·Kᵀ: MR = 6 rows × 32 keys (12 accumulators, one Q pair broadcast and two `vdpbf16ps` per
//! step). P·V: P rounded to bf16 pairs (`vcvtne2ps2bf16`, round to nearest even) after the row
//! sum is taken, then chunks of four 16-column vectors (24 accumulators).
#![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays read best.

use super::bf16::Avx512Bf16;
use super::bf16_pairs::cut_pairs;
use super::flash::{BlockJob, block_loop};
use super::masked_pv::within;
use super::operands::Operands;
use super::padded_dim;
use super::x86_avx512::Avx512;
use std::arch::x86_64::*;

/// Rows per strip.
pub const MR: usize = 6;
/// Keys per K panel.
pub const KP: usize = 32;

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
/// the pairs of a row and a non-finite V row it may not see ([`super::masked_pv`]: P = 0 there,
/// and 0·NaN = NaN): that key's half of the V pair is zeroed for the row
/// ([`cut_pairs`]). Every other product is the microkernel's, in its order.
#[inline(always)]
fn pv_rows(job: &mut BlockJob<'_, u32>, r0: usize, a: usize, b: usize, alpha: &[f32; MR]) {
    let (dp_, tile) = (padded_dim(job.d), job.tile);
    for i in 0..MR {
        let cut = cut_pairs(job, r0 + i, a, b);
        for c in (0..dp_).step_by(16) {
            // SAFETY: O row r0 + i has dp floats from c; V pair rows a/2.. + (b−a)/2 ≤ nkeys/2 of
            // dp lanes (checked in `block_loop`); P row i has tile/2 ≥ (b−a)/2 pairs.
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

/// The bf16-pair operand format on AVX512_BF16 (strips of [`MR`] rows, panels of [`KP`] keys).
#[derive(Clone, Copy, Debug)]
pub struct Bf16Pairs(pub Avx512Bf16);

impl Operands<MR> for Bf16Pairs {
    type S = Avx512;
    type E = u32;
    const KP: usize = KP;

    #[inline(always)]
    fn simd(self) -> Avx512 {
        self.0.avx512()
    }
    #[inline(always)]
    fn row_len(d: usize) -> usize {
        d.div_ceil(2)
    }
    #[inline(always)]
    fn v_len(nkeys: usize, dp: usize) -> usize {
        nkeys / 2 * dp
    }
    #[inline(always)]
    fn p_len(tile: usize) -> usize {
        MR * tile / 2
    }
    #[inline(always)]
    unsafe fn qk_panel(self, q: *const u32, rl: usize, k: *const u32, out: *mut f32, ld: usize) {
        // SAFETY: forwarded from the caller (rl = ⌈D/2⌉).
        unsafe { qk_panel(q, rl, k, out, ld) }
    }
    #[inline(always)]
    fn pv(self, job: &mut BlockJob<'_, u32>, r0: usize, a: usize, b: usize, alpha: &[f32; MR]) {
        let (dp_, tile, n) = (padded_dim(job.d), job.tile, b - a);
        for i in 0..MR {
            for c in (0..n).step_by(32) {
                // SAFETY: n is a multiple of KP = 32; S row i has tile ≥ n floats, P row i has
                // tile/2 ≥ n/2 pairs (checked in `block_loop`).
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
            pv_rows(job, r0, a, b, alpha);
            return;
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
                    1 => pv_chunk::<1>(p, ldp, n / 2, v, dp_, o, alpha),
                    2 => pv_chunk::<2>(p, ldp, n / 2, v, dp_, o, alpha),
                    3 => pv_chunk::<3>(p, ldp, n / 2, v, dp_, o, alpha),
                    _ => pv_chunk::<4>(p, ldp, n / 2, v, dp_, o, alpha),
                }
                c += step;
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn process_impl(t: Bf16Pairs, job: &mut BlockJob<'_, u32>) {
    block_loop::<Bf16Pairs, MR>(t, job)
}

/// Runs one query block on pair-packed operands ([`super::bf16_pairs`]). Panics only on an
/// internal layout bug, never on user input.
pub fn process(t: Avx512Bf16, job: &mut BlockJob<'_, u32>) {
    // SAFETY: the token proves AVX-512F/BW and AVX512_BF16; `block_loop` checks every extent
    // before touching memory.
    unsafe { process_impl(Bf16Pairs(t), job) }
}
