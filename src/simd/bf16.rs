//! bf16 compute on AVX512_BF16 CPUs (`vdpbf16ps`: 32 bf16 products into 16 f32 sums per
//! instruction, twice the f32 FMA rate), for bf16 inputs only.
//!
//! The decode kernel here mirrors [`super::decode`] strip by strip, with K, V and Q kept in bf16
//! (read in place, half the bytes of f32):
//! - scores: `vdpbf16ps` of a bf16 Q row with 32 elements of a K row (adjacent pairs along D),
//!   f32 accumulation, horizontal sum; D's tail through a zero-masked load;
//! - the shared f32 online softmax ([`online_softmax_step`]); the row sum `l` is taken in f32
//!   **before** P is rounded to bf16 (round to nearest even, `vcvtne2ps2bf16`), as FlashAttention
//!   does on GPUs;
//! - O += P·V: two V rows are interleaved pairwise (`vpunpck{l,h}wd`) so one `vdpbf16ps` adds two
//!   keys' contributions to 16 output columns; the interleave permutes columns within 128-bit
//!   lanes, which [`Bf16State::finish_into`] undoes.
//!
//! Rounding: the inputs are bf16 already, so the products are exact in f32; the extra error
//! against the exact f32 path is P's rounding to bf16 (relative 2⁻⁹), the same rounding the naive
//! same-precision oracle applies, so results stay inside `validate::exact_tolerance` at bf16.
//! `vdpbf16ps` flushes denormal inputs and outputs to zero.
//!
//! [`dot_peak_loop`] is the register-resident `vdpbf16ps` loop behind
//! [`crate::ceiling::bf16_dot_ceiling`].

#[cfg(target_arch = "x86_64")]
pub use x86::*;

/// FLOPs per iteration of [`dot_peak_loop`]: 12 `vdpbf16ps` × 32 products × 2.
pub const DOT_PEAK_FLOPS_PER_ITER: u64 = 12 * 32 * 2;

/// Runs `iters` iterations of 12 independent `vdpbf16ps` on register operands; `None` without
/// AVX512_BF16.
#[cfg(not(target_arch = "x86_64"))]
pub fn dot_peak_loop(_iters: u64) -> Option<f32> {
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays.
    use super::super::decode::{Ahead, DecodeState, KB, KvBlock, Strip, reduce_sums};
    use super::super::flash::{online_softmax_step, padded_dim};
    use super::super::x86_avx512::Avx512;
    use std::arch::x86_64::*;

    /// Proof that the CPU has AVX-512F, AVX-512BW and AVX512_BF16.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512Bf16 {
        f: Avx512,
    }

    impl Avx512Bf16 {
        pub fn new() -> Option<Self> {
            let bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
            let bw = std::arch::is_x86_feature_detected!("avx512bw");
            Avx512::new().filter(|_| bf16 && bw).map(|f| Avx512Bf16 { f })
        }

        /// The AVX-512F token this one implies (for the shared f32 kernels).
        pub fn avx512(self) -> Avx512 {
            self.f
        }
    }

    /// D rounded up to 32 bf16 (one zmm of bf16).
    pub fn padded_dim32(d: usize) -> usize {
        d.div_ceil(32) * 32
    }

    /// Running state of one bf16 decode task: the f32 kernel's state with bf16-bit queries.
    /// `acc` holds, per 32-column chunk, 16 "low" and 16 "high" interleave slots (see the module
    /// docs); [`Bf16State::finish_into`] reorders.
    pub type Bf16State<'a> = DecodeState<'a, u16>;

    /// Column of slot `t` (0..32) of a 32-column chunk: slots 0..16 are the low interleave,
    /// 16..32 the high one; each 128-bit lane `l` holds columns `8l..8l+4` (low) / `8l+4..8l+8`.
    fn slot_column(t: usize) -> usize {
        let (hi, s) = (t / 16, t % 16);
        8 * (s / 4) + 4 * hi + s % 4
    }

    impl Bf16State<'_> {
        /// Writes the accumulators in natural column order as `rows × padded_dim(D)` into `dst`
        /// (the layout [`super::super::flash::finish_rows`] reads).
        pub fn finish_into(&self, dst: &mut Vec<f32>) {
            let (d, d32, dp, rows) = (self.d, padded_dim32(self.d), padded_dim(self.d), self.m.len());
            dst.clear();
            dst.resize(rows * dp, 0.0);
            for r in 0..rows {
                for t in 0..d32 {
                    let col = t / 32 * 32 + slot_column(t % 32);
                    if col < d {
                        dst[r * dp + col] = self.acc[r * d32 + t];
                    }
                }
            }
        }
    }

    /// Mask of the first `n` (≤ 32) 16-bit lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask32 {
        if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
    }

    /// `vdpbf16ps acc, a, b` on integer-typed bf16 vectors.
    #[inline(always)]
    fn dp(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        // SAFETY: __m512i and __m512bh are both 64-byte vectors of plain bits; the caller's
        // `#[target_feature]` context (avx512bf16) makes the instruction available.
        unsafe {
            _mm512_dpbf16_ps(
                acc,
                std::mem::transmute::<__m512i, __m512bh>(a),
                std::mem::transmute::<__m512i, __m512bh>(b),
            )
        }
    }

    /// Scores of `R` rows against `J` keys (stride `ks`). # Safety: `q` spans `R·d32`, `k`
    /// spans `d` bf16 at each `j·ks`, `j < J`.
    #[inline(always)]
    unsafe fn dots<const R: usize, const J: usize>(
        f: Avx512,
        q: *const u16,
        (k, ks): (*const u16, usize),
        d: usize,
        (ahead, j0): (&Ahead, usize),
    ) -> [[f32; J]; R] {
        let d32 = padded_dim32(d);
        let mut out = [[0.0f32; J]; R];
        // SAFETY: K loads are masked to the d elements of each row; Q rows are d32 long.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); J]; R];
            let mut c = 0;
            while c < d {
                // One 64-byte line of each K row per step: prefetch the same line further on.
                ahead.fetch_line(j0, j0 + J, c * 2);
                let m = lanes(d - c);
                let mut kv = [_mm512_setzero_si512(); J];
                for j in 0..J {
                    kv[j] = _mm512_maskz_loadu_epi16(m, k.add(j * ks + c) as *const i16);
                }
                for r in 0..R {
                    let qv = _mm512_loadu_si512(q.add(r * d32 + c) as *const __m512i);
                    for j in 0..J {
                        acc[r][j] = dp(acc[r][j], qv, kv[j]);
                    }
                }
                c += 32;
            }
            for r in 0..R {
                out[r] = reduce_sums(f, &acc[r]);
            }
        }
        out
    }

    /// O = α·O + P·V for `R` rows over `n` keys, P as bf16 pairs. # Safety: `pb` spans `R·KB/2`
    /// u32, `v` spans `d` bf16 at each `j·vs`, `j < n`, `o` spans `R·d32` f32.
    #[inline(always)]
    unsafe fn pv<const R: usize>(
        pb: *const u32,
        n: usize,
        (v, vs): (*const u16, usize),
        d: usize,
        o: *mut f32,
        alpha: &[f32; R],
    ) {
        let d32 = padded_dim32(d);
        // SAFETY: V loads are masked to each row's d elements; the second row of an odd tail is
        // zero, never a key outside the strip's range; O offsets stay below R·d32.
        unsafe {
            for c in (0..d).step_by(32) {
                let m = lanes(d - c);
                let mut lo = [_mm512_setzero_ps(); R];
                let mut hi = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let a = _mm512_set1_ps(alpha[r]);
                    lo[r] = _mm512_mul_ps(_mm512_loadu_ps(o.add(r * d32 + c)), a);
                    hi[r] = _mm512_mul_ps(_mm512_loadu_ps(o.add(r * d32 + c + 16)), a);
                }
                let mut j = 0;
                while j < n {
                    let v0 = _mm512_maskz_loadu_epi16(m, v.add(j * vs + c) as *const i16);
                    let v1 = if j + 1 < n {
                        _mm512_maskz_loadu_epi16(m, v.add((j + 1) * vs + c) as *const i16)
                    } else {
                        _mm512_setzero_si512()
                    };
                    let (vl, vh) = (_mm512_unpacklo_epi16(v0, v1), _mm512_unpackhi_epi16(v0, v1));
                    for r in 0..R {
                        let p = _mm512_set1_epi32(*pb.add(r * KB / 2 + j / 2) as i32);
                        lo[r] = dp(lo[r], p, vl);
                        hi[r] = dp(hi[r], p, vh);
                    }
                    j += 2;
                }
                for r in 0..R {
                    _mm512_storeu_ps(o.add(r * d32 + c), lo[r]);
                    _mm512_storeu_ps(o.add(r * d32 + c + 16), hi[r]);
                }
            }
        }
    }

    #[inline(always)]
    fn strip<const R: usize>(t: Avx512Bf16, st: &mut Bf16State<'_>, kv: &KvBlock<'_, u16>, sp: &Strip, ahead: Ahead) {
        let (d, d32, ks) = (st.d, padded_dim32(st.d), kv.ks);
        let n = sp.hi - sp.lo;
        let q = st.q[sp.row0 * d32..].as_ptr();
        let kb = kv.k[sp.lo * ks..].as_ptr();
        // SAFETY: rows row0..row0+R of q and keys lo..hi of k exist (checked by `process`).
        unsafe {
            let mut j = 0;
            while j + 4 <= n {
                let sc = dots::<R, 4>(t.f, q, (kb.add(j * ks), ks), d, (&ahead, sp.lo + j));
                for r in 0..R {
                    st.s[r * KB + j..r * KB + j + 4].copy_from_slice(&sc[r]);
                }
                j += 4;
            }
            if j + 2 <= n {
                let sc = dots::<R, 2>(t.f, q, (kb.add(j * ks), ks), d, (&Ahead::NONE, 0));
                for r in 0..R {
                    st.s[r * KB + j..r * KB + j + 2].copy_from_slice(&sc[r]);
                }
                j += 2;
            }
            ahead.fetch_rows(sp.lo + j, KB);
            if j < n {
                let sc = dots::<R, 1>(t.f, q, (kb.add(j * ks), ks), d, (&Ahead::NONE, 0));
                for r in 0..R {
                    st.s[r * KB + j] = sc[r][0];
                }
            }
        }
        let npad = n.div_ceil(16) * 16;
        let mut alpha = [1.0f32; R];
        let mut pbits = [[0u32; KB / 2]; R];
        for r in 0..R {
            let row = &mut st.s[r * KB..r * KB + npad];
            row[n..].fill(f32::NEG_INFINITY);
            let i = sp.row0 + r;
            alpha[r] = online_softmax_step(t.f, row, st.scale_log2, &mut st.m[i], &mut st.l[i]);
            // SAFETY: the S row has KB = 32 floats; entries npad..KB may be stale but only pairs
            // below n are read, and p[n] (odd n) is 0 (set to −∞ above, then exponentiated).
            unsafe {
                let a = _mm512_loadu_ps(st.s.as_ptr().add(r * KB));
                let b = _mm512_loadu_ps(st.s.as_ptr().add(r * KB + 16));
                let bh = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
                _mm512_storeu_si512(pbits[r].as_mut_ptr() as *mut __m512i, bh);
            }
        }
        // SAFETY: pbits is R × KB/2 u32; V rows lo..hi exist; acc rows row0..row0+R of d32.
        unsafe {
            pv::<R>(
                pbits.as_ptr() as *const u32,
                n,
                (kv.v[sp.lo * kv.vs..].as_ptr(), kv.vs),
                d,
                st.acc[sp.row0 * d32..].as_mut_ptr(),
                &alpha,
            );
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn process_impl(t: Avx512Bf16, st: &mut Bf16State<'_>, kv: &KvBlock<'_, u16>, strips: &[Strip]) {
        let mut ahead = st.ahead;
        for sp in strips {
            match sp.rows {
                1 => strip::<1>(t, st, kv, sp, ahead),
                2 => strip::<2>(t, st, kv, sp, ahead),
                3 => strip::<3>(t, st, kv, sp, ahead),
                _ => strip::<4>(t, st, kv, sp, ahead),
            }
            ahead = Ahead::NONE;
        }
    }

    /// Runs every strip of one block (bf16 K and V rows as bits, read in place).
    pub fn process(t: Avx512Bf16, st: &mut Bf16State<'_>, kv: KvBlock<'_, u16>, strips: &[Strip]) {
        let d32 = padded_dim32(st.d);
        kv.check(st.d);
        st.check((d32, d32), kv.n, strips);
        // SAFETY: the token proves AVX-512F/BW and AVX512_BF16; every extent was checked above.
        unsafe { process_impl(t, st, &kv, strips) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn peak_impl(iters: u64) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let a = _mm512_set1_epi32(0x3f80_3f80); // bf16 pair (1.0, 1.0)
        let b = std::hint::black_box(_mm512_set1_epi32(0x3400_3400)); // tiny, so sums stay finite
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = dp(*x, a, b);
            }
        }
        let mut s = 0.0;
        for x in acc {
            s += _mm512_reduce_add_ps(x);
        }
        s
    }

    /// `iters` iterations of 12 independent `vdpbf16ps`; `None` without AVX512_BF16.
    pub fn dot_peak_loop(iters: u64) -> Option<f32> {
        // SAFETY: the token check proves the CPU has AVX-512F and AVX512_BF16.
        Avx512Bf16::new().map(|_| unsafe { peak_impl(iters) })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slot_columns_are_a_permutation() {
            let mut seen: Vec<usize> = (0..32).map(slot_column).collect();
            seen.sort();
            assert_eq!(seen, (0..32).collect::<Vec<_>>());
            assert_eq!((slot_column(0), slot_column(4), slot_column(16), slot_column(31)), (0, 8, 4, 31));
        }
    }
}
