//! The decode kernel: a few query rows against K and V read **in place** (no packing).
//!
//! Used by [`crate::tiled::decode`] when N_q·group is small. One call handles a block of at
//! most [`KB`] keys for all rows of one GQA group; the rows are grouped into *strips* of up to
//! four rows that share one key range inside the block, so each K row and V row is loaded once
//! per strip, a row never touches a key outside its band (a NaN there stays out of it), and no
//! score needs masking. Per strip:
//! - scores: dot products of the strip's rows with each key row (vector FMAs along D, two keys at
//!   a time for eight independent chains, then a horizontal sum; D's tail in scalar);
//! - the shared [`online_softmax_step`] (base 2, f32);
//! - O = α·O + P·V with `RB × NV` vector accumulators over the strip's keys.
//!
//! Everything is `#[inline(always)]` and generic over [`Simd`]; [`run`] instantiates it per ISA
//! inside `#[target_feature]` wrappers, like [`super::flash`]. The reduction order depends only on
//! the strip geometry (set by the caller from the problem), so results are bitwise reproducible.
#![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays read best.

use super::flash::{online_softmax_step, padded_dim};
use super::{Isa, Simd};

/// Keys per block: K and V of one block (f32, D = 128) take 32 KiB, about one L1.
pub const KB: usize = 32;
/// Most rows in one strip (register blocking).
pub const RB: usize = 4;

/// A run of state rows `row0..row0 + rows` (`rows ≤ RB`) that all see block keys `[lo, hi)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strip {
    pub row0: usize,
    pub rows: usize,
    pub lo: usize,
    pub hi: usize,
}

/// The running state of the rows of one decode task (the accumulators of an online softmax).
pub struct DecodeState<'a> {
    pub d: usize,
    /// `rows × D` queries, unscaled.
    pub q: &'a [f32],
    /// `scale·log2(e)`.
    pub scale_log2: f32,
    /// `rows × padded_dim(D)` unnormalized O.
    pub acc: &'a mut [f32],
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
    /// `RB × KB` score scratch.
    pub s: &'a mut [f32],
}

impl DecodeState<'_> {
    /// Resets the accumulators of every row (O = 0, m = −∞, l = 0).
    pub fn reset(&mut self) {
        self.acc.fill(0.0);
        self.m.fill(f32::NEG_INFINITY);
        self.l.fill(0.0);
    }

    fn check(&self, k: &[f32], v: &[f32], strips: &[Strip]) {
        let (d, rows) = (self.d, self.m.len());
        assert!(self.q.len() >= rows * d && self.acc.len() >= rows * padded_dim(d) && self.l.len() >= rows);
        assert!(self.s.len() >= RB * KB && k.len() == v.len() && k.len().is_multiple_of(d.max(1)));
        let n = k.len() / d.max(1);
        for st in strips {
            assert!(st.rows >= 1 && st.rows <= RB && st.row0 + st.rows <= rows);
            assert!(st.lo < st.hi && st.hi <= n && st.hi - st.lo <= KB);
        }
    }
}

/// Dot products of `R` query rows with `J` key rows: `out[r][j] = q_r · k_j`.
///
/// # Safety
/// `q` readable for `R·d`, `k` for `J·d` floats.
#[inline(always)]
unsafe fn dots<S: Simd, const R: usize, const J: usize>(s: S, q: *const f32, k: *const f32, d: usize) -> [[f32; J]; R] {
    let w = S::W;
    let full = d / w * w;
    let mut acc = [[s.splat(0.0); J]; R];
    let mut out = [[0.0f32; J]; R];
    // SAFETY: every offset is below R·d (q) or J·d (k).
    unsafe {
        let mut c = 0;
        while c < full {
            let mut kv = [s.splat(0.0); J];
            for j in 0..J {
                kv[j] = s.load(k.add(j * d + c));
            }
            for r in 0..R {
                let qv = s.load(q.add(r * d + c));
                for j in 0..J {
                    acc[r][j] = s.fma(qv, kv[j], acc[r][j]);
                }
            }
            c += w;
        }
        for r in 0..R {
            for j in 0..J {
                let mut t = s.reduce_sum(acc[r][j]);
                for c in full..d {
                    t += *q.add(r * d + c) * *k.add(j * d + c);
                }
                out[r][j] = t;
            }
        }
    }
    out
}

/// `O[rows, 0..NV·W] = α ⊙ O + P·V` for `R` rows, `n` keys and `NV` vectors of columns starting
/// at `v`/`o`; with `tail`, also the scalar columns `d mod W` that follow the last full vector
/// (their offset from `v` is `(d / W)·W` minus the chunk's first column, so the caller passes
/// `tail` only with the last chunk). Returns `NV`.
///
/// # Safety
/// `p` readable for rows `r·KB + [0, n)`; `v` for `n` rows of stride `d` holding this chunk's
/// columns (and the tail); `o` readable and writable likewise with stride `padded_dim(d)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv<S: Simd, const R: usize, const NV: usize>(
    s: S,
    p: *const f32,
    n: usize,
    v: *const f32,
    d: usize,
    o: *mut f32,
    alpha: &[f32; R],
    tail: bool,
) -> usize {
    let w = S::W;
    let dp = padded_dim(d);
    // SAFETY (whole body): offsets stay inside the extents the caller guarantees.
    unsafe {
        let mut acc = [[s.splat(0.0); NV]; R];
        for r in 0..R {
            let a = s.splat(alpha[r]);
            for c in 0..NV {
                acc[r][c] = s.mul(s.load(o.add(r * dp + c * w)), a);
            }
        }
        for j in 0..n {
            let vj = v.add(j * d);
            let mut vv = [s.splat(0.0); NV];
            for c in 0..NV {
                vv[c] = s.load(vj.add(c * w));
            }
            for r in 0..R {
                let pb = s.splat(*p.add(r * KB + j));
                for c in 0..NV {
                    acc[r][c] = s.fma(pb, vv[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..NV {
                s.store(o.add(r * dp + c * w), acc[r][c]);
            }
        }
        if tail {
            let first = NV * w;
            for r in 0..R {
                for c in first..first + d % w {
                    let mut x = *o.add(r * dp + c) * alpha[r];
                    for j in 0..n {
                        x += *p.add(r * KB + j) * *v.add(j * d + c);
                    }
                    *o.add(r * dp + c) = x;
                }
            }
        }
    }
    NV
}

/// One strip of `R` rows over its keys.
#[inline(always)]
fn strip<S: Simd, const R: usize>(s: S, st: &mut DecodeState<'_>, k: &[f32], v: &[f32], sp: &Strip) {
    let d = st.d;
    let n = sp.hi - sp.lo;
    let q = st.q[sp.row0 * d..].as_ptr();
    let kbase = k[sp.lo * d..].as_ptr();
    let mut j = 0;
    // SAFETY: rows row0..row0+R of q and keys lo..hi of k exist (checked by `DecodeState::check`).
    unsafe {
        while j + 2 <= n {
            let sc = dots::<S, R, 2>(s, q, kbase.add(j * d), d);
            for r in 0..R {
                st.s[r * KB + j] = sc[r][0];
                st.s[r * KB + j + 1] = sc[r][1];
            }
            j += 2;
        }
        if j < n {
            let sc = dots::<S, R, 1>(s, q, kbase.add(j * d), d);
            for r in 0..R {
                st.s[r * KB + j] = sc[r][0];
            }
        }
    }
    let npad = n.div_ceil(S::W) * S::W;
    let mut alpha = [1.0f32; R];
    for r in 0..R {
        let row = &mut st.s[r * KB..r * KB + npad];
        row[n..].fill(f32::NEG_INFINITY);
        let i = sp.row0 + r;
        alpha[r] = online_softmax_step(s, row, st.scale_log2, &mut st.m[i], &mut st.l[i]);
    }
    let dp = padded_dim(d);
    let (p, vb) = (st.s.as_ptr(), v[sp.lo * d..].as_ptr());
    let nvec = d / S::W;
    let mut c = 0;
    // Column chunks of 4, 3, 2 or 1 vectors, each a fixed-size instance so its accumulators
    // stay in registers.
    while c < nvec.max(1) {
        let left = nvec - c.min(nvec);
        let o = st.acc[sp.row0 * dp + c * S::W..].as_mut_ptr();
        // SAFETY: P rows are RB·KB ≥ R·KB floats; V rows lo..hi exist and columns c·W + chunk
        // ≤ d; O rows row0..row0+R of dp floats; `last` adds D's scalar tail.
        unsafe {
            let vc = vb.add(c * S::W);
            let last = c + 4 >= nvec;
            c += match left {
                0 => pv::<S, R, 0>(s, p, n, vc, d, o, &alpha, true),
                1 => pv::<S, R, 1>(s, p, n, vc, d, o, &alpha, last),
                2 => pv::<S, R, 2>(s, p, n, vc, d, o, &alpha, last),
                3 => pv::<S, R, 3>(s, p, n, vc, d, o, &alpha, last),
                _ => pv::<S, R, 4>(s, p, n, vc, d, o, &alpha, last),
            }
            .max(1);
        }
    }
}

/// Runs every strip of one block (K and V rows of the block, `n × D`, f32).
#[inline(always)]
pub fn process<S: Simd>(s: S, st: &mut DecodeState<'_>, k: &[f32], v: &[f32], strips: &[Strip]) {
    st.check(k, v, strips);
    for sp in strips {
        match sp.rows {
            1 => strip::<S, 1>(s, st, k, v, sp),
            2 => strip::<S, 2>(s, st, k, v, sp),
            3 => strip::<S, 3>(s, st, k, v, sp),
            _ => strip::<S, 4>(s, st, k, v, sp),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn process_avx512(t: super::x86_avx512::Avx512, st: &mut DecodeState<'_>, k: &[f32], v: &[f32], strips: &[Strip]) {
    process(t, st, k, v, strips)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn process_avx2(t: super::x86_avx2::Avx2Fma, st: &mut DecodeState<'_>, k: &[f32], v: &[f32], strips: &[Strip]) {
    process(t, st, k, v, strips)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn process_neon(t: super::aarch64_neon::Neon, st: &mut DecodeState<'_>, k: &[f32], v: &[f32], strips: &[Strip]) {
    process(t, st, k, v, strips)
}

/// [`process`] on `isa` (the portable path when the CPU lacks it; callers resolve first).
pub fn run(isa: Isa, st: &mut DecodeState<'_>, k: &[f32], v: &[f32], strips: &[Strip]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => {
            if let Some(t) = super::x86_avx512::Avx512::new() {
                // SAFETY: the token proves the CPU has AVX-512F.
                return unsafe { process_avx512(t, st, k, v, strips) };
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            if let Some(t) = super::x86_avx2::Avx2Fma::new() {
                // SAFETY: the token proves the CPU has AVX2 and FMA.
                return unsafe { process_avx2(t, st, k, v, strips) };
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            if let Some(t) = super::aarch64_neon::Neon::new() {
                // SAFETY: the token proves the CPU has NEON.
                return unsafe { process_neon(t, st, k, v, strips) };
            }
        }
        _ => {}
    }
    process(super::scalar::Portable, st, k, v, strips)
}

/// Asks the cache for every 64-byte line of `data` (a no-op off x86-64). The decode strategy
/// streams each K/V row once, so it prefetches the next block while computing this one.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = data.as_ptr() as *const i8;
        for off in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: the address lies inside `data`, and a prefetch never faults anyway.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off)) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
