//! Where the decode kernel ([`super::decode`]) finds a block's K and V rows, and how `W` of a
//! row's elements become f32 lanes.
//!
//! - [`Strided`]: f32 or bf16 rows at a fixed stride: flash-cpu's tensors (any layout) read in
//!   place, bf16 widened in registers.
//! - [`Slots`]: rows of a KV cache addressed through a table of storage rows (paged or not),
//!   f32 or bf16, the bf16 widened in registers (a shift: exact).
//! - [`Int8Slots`]: int8 cache rows, each code widened and multiplied by its block's bf16 step
//!   in registers: `x̂ = q·s`, the very product [`crate::kvcache::quant`]'s dequantization
//!   computes, so the kernel's results are bitwise those of dequantizing first.
//!
//! Reading the cache's own dtype in the kernel, rather than staging f32 copies of each block,
//! is what lets a smaller dtype read fewer bytes *and* do less work: the staged int8 decode
//! spent about a third of its time writing and re-reading f32 copies and ran no faster than
//! bf16.
//!
//! Safety contract: a source is built by a checked constructor ([`Slots::new`],
//! [`Int8Slots::new`]) or, for [`Strided`], from a checked [`super::decode::KvBlock`], so that
//! every row `j < n` and column `c < d` the kernel asks for lies inside the storage.

use super::Simd;
use crate::kvcache::quant::QBLOCK;

/// Rows of one block as the decode kernel reads them.
pub trait Rows: Copy {
    /// A resolved row (a pointer, or pointers): computed once per key, then indexed by column.
    type Row: Copy;
    /// Row `j` of the block.
    ///
    /// # Safety
    /// `j` below the block's row count (the constructor's `n`).
    unsafe fn row(self, j: usize) -> Self::Row;
    /// Elements `c..c + W` of `row` as f32 lanes.
    ///
    /// # Safety
    /// `c + S::W ≤ d`; `c` a multiple of `S::W` (so an int8 vector never straddles two steps).
    unsafe fn load<S: Simd>(s: S, row: Self::Row, c: usize) -> S::V;
    /// Element `c` of `row` (D's tail past the last full vector).
    ///
    /// # Safety
    /// `c < d`.
    unsafe fn get(row: Self::Row, c: usize) -> f32;
    /// Rows the source holds (the block's keys).
    fn rows(self) -> usize;
    /// Asks the cache for row `j`, which may lie past the block (a row the source knows the
    /// address of, or nothing). Addresses only: never dereferenced.
    #[inline(always)]
    fn prefetch(self, _j: usize) {}
}

/// Asks the cache for the `bytes` bytes at `p`, line by line.
#[inline(always)]
fn prefetch_bytes(p: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        super::decode::prefetch_line(p.wrapping_add(off));
    }
}

/// Rows `p + j·stride` of f32 or bf16 bits (tensors read in place, any row stride).
#[derive(Clone, Copy, Debug)]
pub struct Strided<E = f32> {
    p: *const E,
    stride: usize,
    n: usize,
}

impl<E> Strided<E> {
    /// # Safety
    /// Rows `p + j·stride`, `j < n`, hold the columns the kernel reads (`d` of them).
    pub(super) unsafe fn new(p: *const E, stride: usize, n: usize) -> Self {
        Strided { p, stride, n }
    }
}

impl<E: Elem> Rows for Strided<E> {
    type Row = *const E;
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const E {
        // SAFETY: row j lies in the block (the caller's guarantee).
        unsafe { self.p.add(j * self.stride) }
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, row: *const E, c: usize) -> S::V {
        // SAFETY: columns c..c+W of the row exist (the caller's guarantee).
        unsafe { E::load(s, row.add(c)) }
    }
    #[inline(always)]
    unsafe fn get(row: *const E, c: usize) -> f32 {
        // SAFETY: column c exists.
        unsafe { (*row.add(c)).to_f32() }
    }
    fn rows(self) -> usize {
        self.n
    }
}

/// An element type a cache stores and the kernel widens in registers: f32 or bf16 bits.
pub trait Elem: Copy {
    /// # Safety
    /// `p..p + W` readable.
    unsafe fn load<S: Simd>(s: S, p: *const Self) -> S::V;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const f32) -> S::V {
        // SAFETY: forwarded.
        unsafe { s.load(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for u16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const u16) -> S::V {
        // SAFETY: forwarded.
        unsafe { s.load_bf16(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

/// Panics unless every row at `offs[j] + head·d` of `d` elements lies inside `len` elements.
fn check_rows(offs: &[usize], head: usize, d: usize, len: usize) {
    let fits = |o: usize| o.checked_add((head + 1) * d).is_some_and(|end| end <= len);
    assert!(offs.iter().all(|&o| fits(o)), "cache row outside its storage");
}

/// Cache rows of element `E`: row `j` starts at element `offs[j] + head·d` of the storage (the
/// caller resolves the page table into `offs` once per block, for every head). The block's
/// keys are rows `j < n`; entries past `n` are rows further on, only ever prefetched.
#[derive(Clone, Copy, Debug)]
pub struct Slots<'a, E> {
    base: *const E,
    offs: &'a [usize],
    n: usize,
    d: usize,
}

impl<'a, E> Slots<'a, E> {
    /// Rows `offs[j] + head·d` of `data` (rows of `d` elements), the first `n` of them the
    /// block's keys; panics if one lies outside or `n > offs.len()`.
    pub fn new(data: &'a [E], (offs, n): (&'a [usize], usize), head: usize, d: usize) -> Self {
        check_rows(offs, head, d, data.len());
        assert!(n <= offs.len(), "block rows");
        Slots { base: data[(head * d).min(data.len())..].as_ptr(), offs, n, d }
    }

    /// The first element of row `j`.
    ///
    /// # Safety
    /// `j < offs.len()`.
    #[inline(always)]
    unsafe fn at(self, j: usize) -> *const E {
        // SAFETY: j < offs.len() (the caller's guarantee); the row was checked by `new`.
        unsafe { self.base.add(*self.offs.get_unchecked(j)) }
    }

    /// Asks the cache for row `j`'s `d` elements, when the table knows row `j`.
    #[inline(always)]
    fn prefetch_row(self, j: usize) {
        if let Some(&o) = self.offs.get(j) {
            prefetch_bytes(self.base.wrapping_add(o) as *const u8, self.d * std::mem::size_of::<E>());
        }
    }
}

impl<E: Elem> Rows for Slots<'_, E> {
    type Row = *const E;
    #[inline(always)]
    unsafe fn row(self, j: usize) -> *const E {
        // SAFETY: j below the block's rows ≤ offs.len() (the caller's guarantee).
        unsafe { self.at(j) }
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, row: *const E, c: usize) -> S::V {
        // SAFETY: columns c..c+W of a checked row.
        unsafe { E::load(s, row.add(c)) }
    }
    #[inline(always)]
    unsafe fn get(row: *const E, c: usize) -> f32 {
        // SAFETY: column c of a checked row.
        unsafe { (*row.add(c)).to_f32() }
    }
    fn rows(self) -> usize {
        self.n
    }
    #[inline(always)]
    fn prefetch(self, j: usize) {
        self.prefetch_row(j)
    }
}

/// int8 cache rows: the codes of row `j` start at `offs[j] + head·d`; its steps, already
/// widened to f32 by the caller, are `steps[j·nb..(j + 1)·nb]` (`nb = ⌈d / QBLOCK⌉`), so
/// that each vector's step is one broadcast load.
#[derive(Clone, Copy, Debug)]
pub struct Int8Slots<'a> {
    codes: Slots<'a, i8>,
    steps: *const f32,
    nb: usize,
}

impl<'a> Int8Slots<'a> {
    /// Rows as [`Slots::new`]'s; panics if a row's codes lie outside `q`, `n > offs.len()`, or
    /// `steps` holds fewer than `n` rows.
    pub fn new(q: &'a [i8], (offs, n): (&'a [usize], usize), head: usize, d: usize, steps: &'a [f32]) -> Self {
        let nb = d.div_ceil(QBLOCK);
        let codes = Slots::new(q, (offs, n), head, d);
        assert!(steps.len() >= n * nb, "int8 steps of every row");
        Int8Slots { codes, steps: steps.as_ptr(), nb }
    }
}

impl Rows for Int8Slots<'_> {
    type Row = (*const i8, *const f32);
    #[inline(always)]
    unsafe fn row(self, j: usize) -> Self::Row {
        // SAFETY: j below the block's rows (the caller's guarantee); the row's codes and steps
        // were checked by `new`.
        unsafe { (self.codes.at(j), self.steps.add(j * self.nb)) }
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, (q, st): Self::Row, c: usize) -> S::V {
        // SAFETY: columns c..c+W of a checked row; c is a multiple of W and W divides QBLOCK,
        // so all W codes share step c / QBLOCK.
        unsafe { s.mul(s.load_i8(q.add(c)), s.splat(*st.add(c / QBLOCK))) }
    }
    #[inline(always)]
    unsafe fn get((q, st): Self::Row, c: usize) -> f32 {
        // SAFETY: column c of a checked row.
        unsafe { f32::from(*q.add(c)) * *st.add(c / QBLOCK) }
    }
    fn rows(self) -> usize {
        self.codes.n
    }
    #[inline(always)]
    fn prefetch(self, j: usize) {
        self.codes.prefetch_row(j)
    }
}

#[cfg(test)]
mod tests {
    //! Every row source against f32 rows holding the same values, bitwise, on every ISA this
    //! CPU has (the portable path runs the trait's default widening loads, AVX2 and AVX-512
    //! their own): the in-register widening must be exactly the staging it replaced.
    use super::super::decode::{Block, DecodeState, KB, KvBlock, RB, Strip, run_block};
    use super::super::{Isa, padded_dim};
    use super::*;
    use crate::seeded::normal_values;

    /// The decode state after one block of `n` keys for `rows` query rows (strips of up to RB
    /// rows, every row seeing keys `[lo, n)`).
    fn run(isa: Isa, block: Block<'_>, d: usize, rows: usize, (lo, n): (usize, usize)) -> Vec<u32> {
        let dp = padded_dim(d);
        let q = normal_values(rows * d, 3);
        let (mut acc, mut m, mut l) = (vec![0.0f32; rows * dp], vec![f32::NEG_INFINITY; rows], vec![0.0f32; rows]);
        let mut s = vec![0.0f32; RB * KB];
        let mut st = DecodeState {
            d,
            q: &q,
            scale_log2: 0.125,
            acc: &mut acc,
            m: &mut m,
            l: &mut l,
            s: &mut s,
            ahead: super::super::decode::Ahead::NONE,
            score_mod: None,
        };
        let strips: Vec<Strip> =
            (0..rows).step_by(RB).map(|r0| Strip { row0: r0, rows: RB.min(rows - r0), lo, hi: n }).collect();
        run_block(isa, &mut st, block, &strips);
        acc.iter().chain(&m).chain(&l).map(|x| x.to_bits()).collect()
    }

    #[test]
    fn in_register_widening_equals_f32_rows_bitwise() {
        let mut checked = 0;
        for isa in Isa::available() {
            for d in [8, 64, 72, 128] {
                for (rows, lo, n) in [(1, 0, 1), (4, 0, KB), (3, 5, 27), (6, 2, KB)] {
                    // Two heads per token, tokens in a shuffled order (as a page table leaves them).
                    let (heads, head) = (2, 1);
                    // Two entries past the block: rows the kernel only prefetches.
                    let offs: Vec<usize> = (0..n + 2).map(|j| ((j * 7) % n) * heads * d).collect();
                    let total = n * heads * d;
                    let nb = d.div_ceil(QBLOCK);
                    let x = normal_values(total, d as u64);
                    let codes: Vec<i8> = x.iter().map(|v| (v * 40.0).clamp(-127.0, 127.0) as i8).collect();
                    let steps: Vec<f32> = normal_values(2 * n * nb, 9).iter().map(|v| v.abs() * 0.01).collect();
                    let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                    let f32_rows = |val: &dyn Fn(usize, usize) -> f32| -> Vec<f32> {
                        (0..n).flat_map(|j| (0..d).map(move |c| (j, c))).map(|(j, c)| val(j, c)).collect()
                    };
                    let at = |j: usize, c: usize| offs[j] + head * d + c;
                    let (sk, sv) = steps.split_at(n * nb);
                    let kq = f32_rows(&|j, c| f32::from(codes[at(j, c)]) * sk[j * nb + c / QBLOCK]);
                    let vq = f32_rows(&|j, c| f32::from(codes[at(j, c)]) * sv[j * nb + c / QBLOCK]);
                    let int8 = Block::Int8(
                        Int8Slots::new(&codes, (&offs, n), head, d, sk),
                        Int8Slots::new(&codes, (&offs, n), head, d, sv),
                    );
                    let want = run(isa, Block::F32(KvBlock::contiguous(&kq, &vq, d)), d, rows, (lo, n));
                    assert_eq!(run(isa, int8, d, rows, (lo, n)), want, "int8 {isa} d={d} rows={rows} n={n}");
                    let wide = f32_rows(&|j, c| f32::from_bits(u32::from(bits[at(j, c)]) << 16));
                    let bf16 = Block::SlotsBf16(
                        Slots::new(&bits, (&offs, n), head, d),
                        Slots::new(&bits, (&offs, n), head, d),
                    );
                    let want = run(isa, Block::F32(KvBlock::contiguous(&wide, &wide, d)), d, rows, (lo, n));
                    assert_eq!(run(isa, bf16, d, rows, (lo, n)), want, "bf16 {isa} d={d} rows={rows} n={n}");
                    // bf16 at a stride (flash-cpu's (B, N, H_kv, D) tensors), in token order.
                    let (base, stride) = (head * d, heads * d);
                    let strided = Block::Bf16(KvBlock::rows(&bits, base, stride, &bits, base, stride, d, (0, n)));
                    let wide = f32_rows(&|j, c| f32::from_bits(u32::from(bits[base + j * stride + c]) << 16));
                    let want = run(isa, Block::F32(KvBlock::contiguous(&wide, &wide, d)), d, rows, (lo, n));
                    assert_eq!(run(isa, strided, d, rows, (lo, n)), want, "strided bf16 {isa} d={d} rows={rows} n={n}");
                    let xs: Vec<f32> = (0..total).map(|i| x[i]).collect();
                    let f32s =
                        Block::SlotsF32(Slots::new(&xs, (&offs, n), head, d), Slots::new(&xs, (&offs, n), head, d));
                    let plain = f32_rows(&|j, c| xs[at(j, c)]);
                    let want = run(isa, Block::F32(KvBlock::contiguous(&plain, &plain, d)), d, rows, (lo, n));
                    assert_eq!(run(isa, f32s, d, rows, (lo, n)), want, "f32 {isa} d={d} rows={rows} n={n}");
                    checked += 4;
                }
            }
        }
        // The portable path and at least the ISA the CPU reports best.
        assert!(checked >= 4 * 16 * Isa::available().len().max(1), "{checked}");
    }

    #[test]
    #[should_panic(expected = "cache row outside its storage")]
    fn a_row_past_the_storage_is_refused() {
        let data = vec![0.0f32; 64];
        let _ = Slots::new(&data, (&[0, 64], 2), 0, 8);
    }
}
