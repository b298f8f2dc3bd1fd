//! The decode kernel: a few query rows against K and V read **in place** (no packing).
//!
//! K and V rows may have any row stride ([`KvBlock`]): a contiguous (B, H_kv, N, D) cache has
//! stride D, FlashAttention's (B, N, H_kv, D) cache stride H_kv·D; the kernel reads each row
//! where it lies, so the layout changes addresses only, never the arithmetic (results are
//! bitwise the same for both).
//!
//! Used by [`crate::tiled::decode`] when N_q·group is small. One call handles a block of at
//! most [`KB`] keys for all rows of one GQA group; the rows are grouped into *strips* of up to
//! four rows that share one key range inside the block, so each K row and V row is loaded once
//! per strip, a row never touches a key outside its band (a NaN there stays out of it), and no
//! score needs masking. Per strip:
//! - scores: dot products of the strip's rows with each key row (vector FMAs along D, four keys
//!   at a time for up to sixteen independent chains, then one transposing horizontal sum per
//!   row and four keys; D's tail in scalar);
//! - the shared [`online_softmax_step`] (base 2, f32);
//! - O = α·O + P·V with `RB × NV` vector accumulators over the strip's keys;
//! - while scoring, the K and V rows [`PREFETCH_BYTES`] further on are prefetched one 64-byte
//!   line per loop step ([`Ahead`]): decode is a stream over K and V, and keeping it busy is
//!   what brings it to the memory-bandwidth limit.
//!
//! Everything is `#[inline(always)]` and generic over [`Simd`]; [`run`] instantiates it per ISA
//! inside `#[target_feature]` wrappers, like [`super::flash`]. The reduction order depends only on
//! the strip geometry (set by the caller from the problem), so results are bitwise reproducible.
#![allow(clippy::needless_range_loop)] // Index loops over const-size register arrays read best.

use super::flash::{online_softmax_step, padded_dim, pv_chunk};
use super::kv_rows::Strided;
pub use super::kv_rows::{Int8Slots, Rows, Slots};
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

/// One block's K and V rows as the kernels read them, in place: key `j`'s row is
/// `k[j·ks..j·ks + d]` and `v[j·vs..j·vs + d]`, for `j < n`.
#[derive(Clone, Copy, Debug)]
pub struct KvBlock<'a, T> {
    pub k: &'a [T],
    pub ks: usize,
    pub v: &'a [T],
    pub vs: usize,
    pub n: usize,
}

impl<'a, T> KvBlock<'a, T> {
    /// Adjacent rows of `d` elements (`k` and `v` hold the same number of whole rows).
    pub fn contiguous(k: &'a [T], v: &'a [T], d: usize) -> Self {
        assert!(k.len() == v.len() && k.len().is_multiple_of(d.max(1)), "K/V block of whole rows");
        KvBlock { k, ks: d, v, vs: d, n: k.len() / d.max(1) }
    }

    /// Rows `[b0, b1)` of the streams whose row 0 starts at `k[kb]` and `v[vb]` (strides `ks`,
    /// `vs`): the slices end with row `b1 − 1`'s last element, so a gap after it is never in them.
    #[allow(clippy::too_many_arguments)]
    pub fn rows(
        k: &'a [T],
        kb: usize,
        ks: usize,
        v: &'a [T],
        vb: usize,
        vs: usize,
        d: usize,
        (b0, b1): (usize, usize),
    ) -> Self {
        let span = |base: usize, st: usize| base + b0 * st..base + (b1 - 1) * st + d;
        KvBlock { k: &k[span(kb, ks)], ks, v: &v[span(vb, vs)], vs, n: b1 - b0 }
    }

    /// Panics unless every one of the `n` rows (of `d` elements) lies inside both slices.
    pub fn check(&self, d: usize) {
        let fits = |len: usize, st: usize| self.n == 0 || (st >= d && (self.n - 1) * st + d <= len);
        assert!(fits(self.k.len(), self.ks) && fits(self.v.len(), self.vs), "K/V rows outside their slices");
    }
}

/// How far ahead of the key rows being scored the K and V streams are prefetched: 4 KiB (8 f32
/// rows at D = 128). The hardware prefetchers alone do not keep the two interleaved K/V streams
/// busy: without software prefetch the f32 decode ran 2.4× slower. 8 rows beat 32 and 64 for
/// f32 and tied for bf16 (measured side by side on the 2-vCPU EPYC; figures in `reports/`).
pub const PREFETCH_BYTES: usize = 4096;

/// Rows of `row_len` elements `T` in [`PREFETCH_BYTES`] (at least 1).
pub fn ahead_rows<T>(row_len: usize) -> usize {
    PREFETCH_BYTES.div_ceil((row_len * std::mem::size_of::<T>()).max(1))
}

/// The K and V rows [`PREFETCH_BYTES`] ahead of the current block's first row, asked for a few
/// rows at a time while the block computes (interleaved with the arithmetic: a burst of
/// prefetches stalls on the miss buffers). Addresses only: never dereferenced.
#[derive(Clone, Copy, Debug)]
pub struct Ahead {
    k: *const u8,
    v: *const u8,
    row_bytes: usize,
    /// Bytes from one row to the next in each stream (`row_bytes` when adjacent).
    k_step: usize,
    v_step: usize,
    rows: usize,
}

impl Ahead {
    pub const NONE: Ahead =
        Ahead { k: std::ptr::null(), v: std::ptr::null(), row_bytes: 0, k_step: 0, v_step: 0, rows: 0 };

    /// For a block starting at row `b0` of the adjacent-row streams `k` and `v` (rows of
    /// `row_len` elements, the task's keys ending at row `end`): the rows from
    /// `b0 + PREFETCH_BYTES / row bytes` up to `end`.
    pub fn of<T>(k: &[T], v: &[T], row_len: usize, b0: usize, end: usize) -> Ahead {
        let from = b0 + ahead_rows::<T>(row_len);
        Ahead::strided(KvBlock { k, ks: row_len, v, vs: row_len, n: 0 }, row_len, from, end)
    }

    /// Rows `[from, end)` of streams with row strides `kv.ks` and `kv.vs` (`kv.n` unused: the
    /// rows that fit in the slices count).
    pub fn strided<T>(kv: KvBlock<'_, T>, row_len: usize, from: usize, end: usize) -> Ahead {
        let size = std::mem::size_of::<T>();
        let row_bytes = row_len * size;
        if row_bytes == 0 || kv.ks < row_len || kv.vs < row_len {
            return Ahead::NONE;
        }
        let fit = |len: usize, st: usize| if len < row_len { 0 } else { (len - row_len) / st + 1 };
        let from = from.min(end);
        let rows = end.min(fit(kv.k.len(), kv.ks)).min(fit(kv.v.len(), kv.vs)).saturating_sub(from);
        let at = |s: &[T], st: usize| s.as_ptr().wrapping_add(from * st) as *const u8;
        Ahead { k: at(kv.k, kv.ks), v: at(kv.v, kv.vs), row_bytes, k_step: kv.ks * size, v_step: kv.vs * size, rows }
    }

    /// Prefetches rows `[j0, j1)` (clamped) of both streams.
    #[inline(always)]
    pub fn fetch_rows(&self, j0: usize, j1: usize) {
        let (j0, j1) = (j0.min(self.rows), j1.min(self.rows));
        if self.k_step == self.row_bytes && self.v_step == self.row_bytes {
            // Adjacent rows: one run of lines.
            for off in (j0 * self.row_bytes..j1 * self.row_bytes).step_by(64) {
                prefetch_line(self.k.wrapping_add(off));
                prefetch_line(self.v.wrapping_add(off));
            }
            return;
        }
        for j in j0..j1 {
            for off in (0..self.row_bytes).step_by(64) {
                prefetch_line(self.k.wrapping_add(j * self.k_step + off));
                prefetch_line(self.v.wrapping_add(j * self.v_step + off));
            }
        }
    }

    /// Prefetches the 64-byte line at byte `at` of rows `[j0, j1)` (clamped) of both streams:
    /// the score loop calls it once per line it consumes, so prefetches trickle out between
    /// the FMAs instead of queueing up in a burst.
    #[inline(always)]
    pub fn fetch_line(&self, j0: usize, j1: usize, at: usize) {
        if at < self.row_bytes {
            for j in j0..j1.min(self.rows) {
                prefetch_line(self.k.wrapping_add(j * self.k_step + at));
                prefetch_line(self.v.wrapping_add(j * self.v_step + at));
            }
        }
    }

    /// Bytes per row (0 for [`Ahead::NONE`]).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
}

/// The running state of the rows of one decode task (the accumulators of an online softmax).
/// `Q` is the query element: f32 here, bf16 bits (`u16`) for [`super::bf16`]'s kernel, whose
/// `acc` is permuted and `D` padded to 32 (see there).
pub struct DecodeState<'a, Q = f32> {
    pub d: usize,
    /// `rows × D` queries, unscaled (bf16: `rows × padded_dim32(D)`, zero-padded).
    pub q: &'a [Q],
    /// `scale·log2(e)`.
    pub scale_log2: f32,
    /// `rows × padded_dim(D)` unnormalized O (bf16: `rows × padded_dim32(D)`, permuted).
    pub acc: &'a mut [f32],
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
    /// `RB × KB` score scratch.
    pub s: &'a mut [f32],
    /// The next block's rows, prefetched during this one's scores.
    pub ahead: Ahead,
    /// Score modifiers (softcap, ALiBi) of the f32 kernel: called per strip row with the state
    /// row, the strip's first key within the block and its scores (padded to `W`, pads set to
    /// −∞ afterwards); with a hook the scores it leaves are natural units and `scale_log2` is
    /// `log2 e` (the caller's choice). `None` keeps the plain path.
    pub score_mod: Option<&'a ScoreHook<'a>>,
}

/// A score-modifier step for [`DecodeState::score_mod`]: `(row, first key, scores)`.
pub type ScoreHook<'a> = dyn Fn(usize, usize, &mut [f32]) + 'a;

impl<Q> DecodeState<'_, Q> {
    /// Resets the accumulators of every row (O = 0, m = −∞, l = 0).
    pub fn reset(&mut self) {
        self.acc.fill(0.0);
        self.m.fill(f32::NEG_INFINITY);
        self.l.fill(0.0);
    }
}

impl<Q> DecodeState<'_, Q> {
    /// Panics unless the state holds `rows` rows of `q_len`-element queries and `acc_len`-element
    /// accumulators and every strip lies inside them and inside the block's `keys` rows (what the kernels'
    /// unchecked reads rely on).
    pub fn check(&self, (q_len, acc_len): (usize, usize), keys: usize, strips: &[Strip]) {
        let rows = self.m.len();
        assert!(self.q.len() >= rows * q_len && self.acc.len() >= rows * acc_len && self.l.len() >= rows);
        assert!(self.s.len() >= RB * KB);
        for st in strips {
            assert!(st.rows >= 1 && st.rows <= RB && st.row0 + st.rows <= rows);
            assert!(st.lo < st.hi && st.hi <= keys && st.hi - st.lo <= KB);
        }
    }
}

/// The horizontal sums of `J` accumulators: four keys share one transposing reduction
/// ([`Simd::reduce_sum4`], bitwise equal to four single ones). Shared with the bf16 kernel.
#[inline(always)]
pub fn reduce_sums<S: Simd, const J: usize>(s: S, acc: &[S::V; J]) -> [f32; J] {
    if J == 4 {
        let four = s.reduce_sum4([acc[0], acc[1 % J], acc[2 % J], acc[3 % J]]);
        std::array::from_fn(|j| four[j])
    } else {
        std::array::from_fn(|j| s.reduce_sum(acc[j]))
    }
}

/// Dot products of `R` query rows with key rows `j0 + [0, J)` of `k`: `out[r][j] = q_r · k_j`.
///
/// # Safety
/// `q` readable for `R·d` floats, `k` holds rows `j0 + [0, J)` of `d` elements.
#[inline(always)]
unsafe fn dots<S: Simd, K: Rows, const R: usize, const J: usize>(
    s: S,
    q: *const f32,
    (k, j0): (K, usize),
    d: usize,
    ahead: &Ahead,
) -> [[f32; J]; R] {
    let w = S::W;
    let full = d / w * w;
    let mut acc = [[s.splat(0.0); J]; R];
    let mut out = [[0.0f32; J]; R];
    // SAFETY: every offset is below R·d (q) or inside row j0 + j, j < J, of k.
    unsafe {
        let rows: [K::Row; J] = std::array::from_fn(|j| k.row(j0 + j));
        let mut c = 0;
        while c < full {
            if (c * 4) % 64 == 0 {
                ahead.fetch_line(j0, j0 + J, c * 4);
            }
            let mut kv = [s.splat(0.0); J];
            for j in 0..J {
                kv[j] = K::load(s, rows[j], c);
            }
            for r in 0..R {
                let qv = s.load(q.add(r * d + c));
                for j in 0..J {
                    acc[r][j] = s.fma(qv, kv[j], acc[r][j]);
                }
            }
            c += w;
        }
        for at in ((full * 4).div_ceil(64) * 64..ahead.row_bytes()).step_by(64) {
            ahead.fetch_line(j0, j0 + J, at);
        }
        for r in 0..R {
            let sums = reduce_sums(s, &acc[r]);
            for j in 0..J {
                let mut t = sums[j];
                for c in full..d {
                    t += *q.add(r * d + c) * K::get(rows[j], c);
                }
                out[r][j] = t;
            }
        }
    }
    out
}

/// `O[rows, 0..NV·W] = α ⊙ O + P·V` for `R` rows, V's rows `j0 + [0, n)` and `NV` vectors of
/// columns from `c0` (the prefill kernel's [`pv_chunk`], with P rows of stride [`KB`]); with
/// `tail`, also the scalar columns `d mod W` that follow the last full vector (the caller
/// passes `tail` only with the last chunk). Returns `NV`.
///
/// # Safety
/// `p` readable for rows `r·KB + [0, n)`; `v` holds rows `j0 + [0, n)` with this chunk's
/// columns (and the tail); `o` (column `c0` of row 0) readable and writable likewise with
/// stride `padded_dim(d)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv<S: Simd, V: Rows, const R: usize, const NV: usize>(
    s: S,
    p: *const f32,
    n: usize,
    (v, j0, c0): (V, usize, usize),
    d: usize,
    o: *mut f32,
    alpha: &[f32; R],
    tail: bool,
) -> usize {
    let w = S::W;
    let dp = padded_dim(d);
    // SAFETY (whole body): offsets stay inside the extents the caller guarantees.
    unsafe {
        pv_chunk::<S, V, R, NV>(s, p, KB, n, (v, j0, c0), o, dp, alpha);
        if tail {
            let first = NV * w;
            for r in 0..R {
                for c in first..first + d % w {
                    let mut x = *o.add(r * dp + c) * alpha[r];
                    for j in 0..n {
                        x += *p.add(r * KB + j) * V::get(v.row(j0 + j), c0 + c);
                    }
                    *o.add(r * dp + c) = x;
                }
            }
        }
    }
    NV
}

/// Rows a row source prefetches ahead of the keys being scored (sources that know rows past
/// the block: the KV cache's page rows).
pub const SOURCE_AHEAD_ROWS: usize = 2;

/// Asks the sources for the K and V rows [`SOURCE_AHEAD_ROWS`] after keys `[j, j + J)`.
#[inline(always)]
fn fetch_ahead<K: Rows, V: Rows>((k, v): (K, V), j: usize, count: usize) {
    for x in j + SOURCE_AHEAD_ROWS..j + SOURCE_AHEAD_ROWS + count {
        k.prefetch(x);
        v.prefetch(x);
    }
}

/// One strip of `R` rows over its keys.
#[inline(always)]
fn strip<S: Simd, K: Rows, V: Rows, const R: usize>(
    s: S,
    st: &mut DecodeState<'_>,
    (k, v): (K, V),
    sp: &Strip,
    ahead: Ahead,
) {
    let d = st.d;
    let n = sp.hi - sp.lo;
    let q = st.q[sp.row0 * d..].as_ptr();
    let mut j = 0;
    // SAFETY: rows row0..row0+R of q and keys lo..hi of k exist (checked by `DecodeState::check`
    // and the sources' constructors).
    unsafe {
        // Four keys at a time keep R·4 accumulators live: too many for 16 registers.
        while S::REGS >= 32 && j + 4 <= n {
            fetch_ahead((k, v), sp.lo + j, 4);
            let sc = dots::<S, K, R, 4>(s, q, (k, sp.lo + j), d, &ahead);
            for r in 0..R {
                st.s[r * KB + j..r * KB + j + 4].copy_from_slice(&sc[r]);
            }
            j += 4;
        }
        while j + 2 <= n {
            fetch_ahead((k, v), sp.lo + j, 2);
            let sc = dots::<S, K, R, 2>(s, q, (k, sp.lo + j), d, &ahead);
            for r in 0..R {
                st.s[r * KB + j..r * KB + j + 2].copy_from_slice(&sc[r]);
            }
            j += 2;
        }
        ahead.fetch_rows(sp.lo + j, KB);
        if j < n {
            let sc = dots::<S, K, R, 1>(s, q, (k, sp.lo + j), d, &Ahead::NONE);
            for r in 0..R {
                st.s[r * KB + j] = sc[r][0];
            }
        }
    }
    let npad = n.div_ceil(S::W) * S::W;
    let mut alpha = [1.0f32; R];
    for r in 0..R {
        let row = &mut st.s[r * KB..r * KB + npad];
        let i = sp.row0 + r;
        if let Some(hook) = st.score_mod {
            hook(i, sp.lo, row);
        }
        row[n..].fill(f32::NEG_INFINITY);
        alpha[r] = online_softmax_step(s, row, st.scale_log2, &mut st.m[i], &mut st.l[i]);
    }
    let dp = padded_dim(d);
    let p = st.s.as_ptr();
    let nvec = d / S::W;
    let mut c = 0;
    // Column chunks of 4, 3, 2 or 1 vectors (at most 2 with 16 registers), each a fixed-size
    // instance so its accumulators stay in registers.
    while c < nvec.max(1) {
        let left = nvec - c.min(nvec);
        let o = st.acc[sp.row0 * dp + c * S::W..].as_mut_ptr();
        // SAFETY: P rows are RB·KB ≥ R·KB floats; V rows lo..hi exist and columns c·W + chunk
        // ≤ d; O rows row0..row0+R of dp floats; `last` adds D's scalar tail.
        unsafe {
            let vc = (v, sp.lo, c * S::W);
            let last = c + 4 >= nvec;
            c += match left {
                0 => pv::<S, V, R, 0>(s, p, n, vc, d, o, &alpha, true),
                1 => pv::<S, V, R, 1>(s, p, n, vc, d, o, &alpha, last),
                2 => pv::<S, V, R, 2>(s, p, n, vc, d, o, &alpha, last),
                3 if S::REGS >= 32 => pv::<S, V, R, 3>(s, p, n, vc, d, o, &alpha, last),
                // R·4 accumulators (and R·3) do not fit 16 registers with the V vectors.
                _ if S::REGS < 32 => pv::<S, V, R, 2>(s, p, n, vc, d, o, &alpha, false),
                _ => pv::<S, V, R, 4>(s, p, n, vc, d, o, &alpha, last),
            }
            .max(1);
        }
    }
}

/// Runs every strip of one block from row sources (whose constructors checked their rows).
#[inline(always)]
pub fn process<S: Simd, K: Rows, V: Rows>(s: S, st: &mut DecodeState<'_>, kv: (K, V), strips: &[Strip]) {
    st.check((st.d, padded_dim(st.d)), kv.0.rows().min(kv.1.rows()), strips);
    let mut ahead = st.ahead;
    for sp in strips {
        match sp.rows {
            1 => strip::<S, K, V, 1>(s, st, kv, sp, ahead),
            2 => strip::<S, K, V, 2>(s, st, kv, sp, ahead),
            3 => strip::<S, K, V, 3>(s, st, kv, sp, ahead),
            _ => strip::<S, K, V, 4>(s, st, kv, sp, ahead),
        }
        ahead = Ahead::NONE;
    }
}

/// One block's K and V rows, in one of the forms the kernel reads in place.
#[derive(Clone, Copy, Debug)]
pub enum Block<'a> {
    /// f32 rows at strides (flash-cpu's tensors, or staged rows).
    F32(KvBlock<'a, f32>),
    /// bf16 rows (bits) at strides, widened in registers.
    Bf16(KvBlock<'a, u16>),
    /// Cache rows of f32.
    SlotsF32(Slots<'a, f32>, Slots<'a, f32>),
    /// Cache rows of bf16 (bits), widened in registers.
    SlotsBf16(Slots<'a, u16>, Slots<'a, u16>),
    /// int8 cache rows, dequantized in registers.
    Int8(Int8Slots<'a>, Int8Slots<'a>),
}

/// The row sources of a strided block of `d`-element rows (checked here).
#[inline(always)]
fn strided<E>(kv: KvBlock<'_, E>, d: usize) -> (Strided<E>, Strided<E>) {
    kv.check(d);
    // SAFETY: `check` proved rows j < kv.n of d elements inside both slices.
    unsafe { (Strided::new(kv.k.as_ptr(), kv.ks, kv.n), Strided::new(kv.v.as_ptr(), kv.vs, kv.n)) }
}

/// [`process`] for each form of [`Block`] (strided blocks are checked here).
#[inline(always)]
fn process_block<S: Simd>(s: S, st: &mut DecodeState<'_>, block: Block<'_>, strips: &[Strip]) {
    match block {
        Block::F32(kv) => process(s, st, strided(kv, st.d), strips),
        Block::Bf16(kv) => process(s, st, strided(kv, st.d), strips),
        Block::SlotsF32(k, v) => process(s, st, (k, v), strips),
        Block::SlotsBf16(k, v) => process(s, st, (k, v), strips),
        Block::Int8(k, v) => process(s, st, (k, v), strips),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn process_avx512(t: super::x86_avx512::Avx512, st: &mut DecodeState<'_>, b: Block<'_>, strips: &[Strip]) {
    process_block(t, st, b, strips)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn process_avx2(t: super::x86_avx2::Avx2Fma, st: &mut DecodeState<'_>, b: Block<'_>, strips: &[Strip]) {
    process_block(t, st, b, strips)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn process_neon(t: super::aarch64_neon::Neon, st: &mut DecodeState<'_>, b: Block<'_>, strips: &[Strip]) {
    process_block(t, st, b, strips)
}

/// [`process`] of f32 rows at strides on `isa` (the portable path when the CPU lacks it;
/// callers resolve first).
pub fn run(isa: Isa, st: &mut DecodeState<'_>, kv: KvBlock<'_, f32>, strips: &[Strip]) {
    run_block(isa, st, Block::F32(kv), strips)
}

/// [`process`] of any [`Block`] on `isa` (the portable path when the CPU lacks it).
pub fn run_block(isa: Isa, st: &mut DecodeState<'_>, block: Block<'_>, strips: &[Strip]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => {
            if let Some(t) = super::x86_avx512::Avx512::new() {
                // SAFETY: the token proves the CPU has AVX-512F.
                return unsafe { process_avx512(t, st, block, strips) };
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            if let Some(t) = super::x86_avx2::Avx2Fma::new() {
                // SAFETY: the token proves the CPU has AVX2 and FMA.
                return unsafe { process_avx2(t, st, block, strips) };
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            if let Some(t) = super::aarch64_neon::Neon::new() {
                // SAFETY: the token proves the CPU has NEON.
                return unsafe { process_neon(t, st, block, strips) };
            }
        }
        _ => {}
    }
    process_block(super::scalar::Portable, st, block, strips)
}

/// Asks the cache for the 64-byte line at `p` (a no-op off x86-64). Hint T2 (outer levels):
/// spreading T0 prefetches through the score loop was 1.4× slower on the EPYC (presumably as
/// T0 fills L1, where the block being computed lives).
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T2 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
