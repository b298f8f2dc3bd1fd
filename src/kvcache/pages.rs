//! Page storage and the page index, borrowed: what the attention kernel and the append read and
//! write. [`KvCache`](super::KvCache) owns its storage and lends it out through these types;
//! a serving engine (or the Python `flash_attn_with_kvcache(block_table=...)`, or the candle
//! door) that owns its own pages in FlashAttention's layout `(num_pages, page_size, H_kv, D)`
//! builds a [`PagedKv`] over them and attends in place, with no copy into a `KvCache`.
//!
//! [`PageIndex`] is the geometry (`H_kv`, `D`, `page_size`, `num_pages`, `max_pages`) and the
//! per-sequence state (block table, `cache_seqlens`, `cache_leftpad`); it maps logical slot
//! `t` of sequence `b` to storage row `(block_table[b][t / page_size] · page_size + t %
//! page_size) · H_kv + h`. [`Pages`]/[`PagesMut`] are the element storage of K or V: f32, f16,
//! bf16 (caller-owned caches come in the model's dtype) or int8 with scales (owned caches).
//!
//! Checks: a borrowed index is validated once when built ([`PageIndex::new`]): storage lengths
//! against the geometry, every block-table entry a sequence can reach (slots below its
//! `seqlen`, or below `seqlen + new tokens` for an append: entries past that are never read,
//! so an engine may leave them as padding, e.g. -1) a page index, lengths within capacity.
//! Complexity: O(B · max_pages) for the check.

use super::{KvCacheError, MIN_PAGE_SIZE, quant};
use half::{bf16, f16};

/// Element storage of K or V, read-only: `(num_pages · page_size · H_kv)` rows of D.
#[derive(Clone, Copy, Debug)]
pub enum Pages<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    /// Values and one bf16 scale per [`quant::QBLOCK`] elements of a row.
    Int8 {
        q: &'a [i8],
        scale: &'a [bf16],
    },
}

/// Element storage of K or V, writable (the append's destination).
#[derive(Debug)]
pub enum PagesMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
    Int8 { q: &'a mut [i8], scale: &'a mut [bf16] },
}

impl Pages<'_> {
    /// Rows of `d` elements held.
    pub fn rows(&self, d: usize) -> usize {
        match self {
            Pages::F32(x) => x.len() / d,
            Pages::F16(x) => x.len() / d,
            Pages::BF16(x) => x.len() / d,
            Pages::Int8 { q, scale } => (q.len() / d).min(scale.len() / quant::scales_per_row(d)),
        }
    }

    /// Bytes one row of `d` elements takes, scales included.
    pub fn row_bytes(&self, d: usize) -> usize {
        match self {
            Pages::F32(_) => 4 * d,
            Pages::F16(_) | Pages::BF16(_) => 2 * d,
            Pages::Int8 { .. } => quant::row_bytes(d),
        }
    }

    /// Reads row `slot` into `dst` (D elements) as f32.
    #[inline]
    pub(crate) fn read_row(&self, slot: usize, dst: &mut [f32]) {
        let d = dst.len();
        match self {
            Pages::F32(x) => dst.copy_from_slice(&x[slot * d..(slot + 1) * d]),
            Pages::F16(x) => quant::widen_f16(&x[slot * d..(slot + 1) * d], dst),
            Pages::BF16(x) => quant::widen_bf16(&x[slot * d..(slot + 1) * d], dst),
            Pages::Int8 { q, scale } => {
                let nb = quant::scales_per_row(d);
                quant::dequantize_row(&q[slot * d..(slot + 1) * d], &scale[slot * nb..(slot + 1) * nb], dst);
            }
        }
    }

    /// Asks the cache for row `slot` (D = `d` elements, and its int8 scales): NHD rows of one
    /// KV head lie `H_kv` rows apart, a stride the hardware prefetchers do not follow across
    /// 4 KiB pages, so the attention kernel asks a few rows ahead itself.
    #[inline]
    pub(crate) fn prefetch_row(&self, slot: usize, d: usize) {
        let (ptr, bytes) = match self {
            Pages::F32(x) => (x[slot * d..].as_ptr() as *const u8, 4 * d),
            Pages::F16(x) => (x[slot * d..].as_ptr() as *const u8, 2 * d),
            Pages::BF16(x) => (x[slot * d..].as_ptr() as *const u8, 2 * d),
            Pages::Int8 { q, scale } => {
                prefetch_line(scale[slot * quant::scales_per_row(d)..].as_ptr() as *const u8);
                (q[slot * d..].as_ptr() as *const u8, d)
            }
        };
        for off in (0..bytes).step_by(64) {
            prefetch_line(ptr.wrapping_add(off));
        }
    }
}

impl PagesMut<'_> {
    /// The same storage, read-only.
    pub fn as_pages(&self) -> Pages<'_> {
        match self {
            PagesMut::F32(x) => Pages::F32(x),
            PagesMut::F16(x) => Pages::F16(x),
            PagesMut::BF16(x) => Pages::BF16(x),
            PagesMut::Int8 { q, scale } => Pages::Int8 { q, scale },
        }
    }

    /// Writes row `slot` (a (token, head) row of `src.len()` = D elements), rounding to the
    /// storage's type (to nearest even for f16/bf16; int8 quantizes the row).
    pub(crate) fn write_row(&mut self, slot: usize, src: &[f32]) {
        let d = src.len();
        match self {
            PagesMut::F32(x) => x[slot * d..(slot + 1) * d].copy_from_slice(src),
            PagesMut::F16(x) => {
                x[slot * d..(slot + 1) * d].iter_mut().zip(src).for_each(|(y, &s)| *y = f16::from_f32(s))
            }
            PagesMut::BF16(x) => {
                x[slot * d..(slot + 1) * d].iter_mut().zip(src).for_each(|(y, &s)| *y = bf16::from_f32(s))
            }
            PagesMut::Int8 { q, scale } => {
                let nb = quant::scales_per_row(d);
                quant::quantize_row(src, &mut q[slot * d..(slot + 1) * d], &mut scale[slot * nb..(slot + 1) * nb]);
            }
        }
    }
}

/// Asks the cache for the 64-byte line at `p` (a no-op off x86-64).
#[inline(always)]
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Geometry and per-sequence state of a paged cache (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct PageIndex<'a> {
    pub kv_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
    pub num_pages: usize,
    pub max_pages: usize,
    /// `(batch, max_pages)` row-major.
    pub block_table: &'a [i32],
    /// `cache_seqlens`: end of each sequence's filled slots.
    pub seqlens: &'a [usize],
    /// `cache_leftpad`: start of each sequence's valid slots.
    pub leftpad: &'a [usize],
}

impl<'a> PageIndex<'a> {
    /// A checked index over caller-owned pages: `block_table` `(batch, max_pages)` (batch =
    /// `seqlens.len()`), `leftpad` all zeros when `None` is given to [`PagedKv::new`]. Entries
    /// a sequence reaches with `seqlen + reserve` slots must be page indices; `seqlen +
    /// reserve` must fit the table (`reserve` = tokens about to be appended to every sequence, 0
    /// to attend; [`super::append_pages`] checks the sequences it writes to again).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kv_heads: usize,
        head_dim: usize,
        page_size: usize,
        num_pages: usize,
        block_table: &'a [i32],
        seqlens: &'a [usize],
        leftpad: &'a [usize],
        reserve: usize,
    ) -> Result<Self, KvCacheError> {
        for (what, x) in [("kv_heads", kv_heads), ("head_dim", head_dim), ("num_pages", num_pages)] {
            if x == 0 {
                return Err(KvCacheError::ZeroDim { what });
            }
        }
        if page_size < MIN_PAGE_SIZE {
            return Err(KvCacheError::PageSizeTooSmall { page_size, min: MIN_PAGE_SIZE });
        }
        let batch = seqlens.len();
        if batch == 0 {
            return Err(KvCacheError::ZeroDim { what: "batch" });
        }
        if leftpad.len() != batch {
            return Err(KvCacheError::ShapeMismatch { what: "cache_leftpad", got: leftpad.len(), expected: batch });
        }
        if block_table.is_empty() || !block_table.len().is_multiple_of(batch) {
            let expected = batch * block_table.len().div_ceil(batch).max(1);
            return Err(KvCacheError::ShapeMismatch { what: "block_table", got: block_table.len(), expected });
        }
        let max_pages = block_table.len() / batch;
        let capacity = max_pages.checked_mul(page_size).ok_or(KvCacheError::Overflow { what: "capacity" })?;
        for (b, (&len, &lp)) in seqlens.iter().zip(leftpad).enumerate() {
            if len.checked_add(reserve).is_none_or(|end| end > capacity) {
                return Err(if reserve == 0 {
                    KvCacheError::LengthOutOfRange { batch: b, len, capacity }
                } else {
                    KvCacheError::CacheFull { batch: b, seqlen: len, new_tokens: reserve, capacity }
                });
            }
            if lp > len {
                return Err(KvCacheError::LeftpadBeyondLength { batch: b, leftpad: lp, seqlen: len });
            }
            let reached = (len + reserve).div_ceil(page_size);
            check_table(&block_table[b * max_pages..b * max_pages + reached], max_pages, num_pages).map_err(
                |e| match e {
                    KvCacheError::BadPageIndex { slot, page, num_pages, .. } => {
                        KvCacheError::BadPageIndex { batch: b, slot, page, num_pages }
                    }
                    e => e,
                },
            )?;
        }
        Ok(PageIndex { kv_heads, head_dim, page_size, num_pages, max_pages, block_table, seqlens, leftpad })
    }

    /// Sequences.
    pub fn batch(&self) -> usize {
        self.seqlens.len()
    }

    /// Slots per sequence (`max_pages · page_size`).
    pub fn capacity(&self) -> usize {
        self.max_pages * self.page_size
    }

    /// Rows of D elements the storage must hold.
    pub fn rows(&self) -> usize {
        self.num_pages * self.page_size * self.kv_heads
    }

    /// Valid keys of sequence `b`.
    pub(crate) fn len_of(&self, b: usize) -> usize {
        self.seqlens[b] - self.leftpad[b]
    }

    /// Storage row of logical slot `pos` of sequence `b`, head `h` (the table was checked).
    #[inline]
    pub(crate) fn row_of(&self, b: usize, pos: usize, h: usize) -> usize {
        let page = self.block_table[b * self.max_pages + pos / self.page_size] as usize;
        (page * self.page_size + pos % self.page_size) * self.kv_heads + h
    }

    /// The storage holds [`PageIndex::rows`] rows.
    pub(crate) fn check_rows(&self, what: &'static str, pages: &Pages<'_>) -> Result<(), KvCacheError> {
        let (got, expected) = (pages.rows(self.head_dim), self.rows());
        if got != expected {
            let d = self.head_dim;
            return Err(KvCacheError::ShapeMismatch { what, got: got * d, expected: expected * d });
        }
        Ok(())
    }
}

/// Every block-table entry must be a page index (`batch`/`slot` of the error count rows of
/// `max_pages` from the start of `table`).
pub(crate) fn check_table(table: &[i32], max_pages: usize, num_pages: usize) -> Result<(), KvCacheError> {
    match table.iter().position(|&p| p < 0 || p as usize >= num_pages) {
        Some(i) => Err(KvCacheError::BadPageIndex {
            batch: i / max_pages,
            slot: i % max_pages,
            page: table[i] as i64,
            num_pages,
        }),
        None => Ok(()),
    }
}

/// A paged cache over borrowed storage, ready to attend ([`PagedKv::attend`]): decode and
/// chunked prefill read the pages in place.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    pub index: PageIndex<'a>,
    pub k: Pages<'a>,
    pub v: Pages<'a>,
}

impl<'a> PagedKv<'a> {
    /// Checks the storage against the index (K and V of the same type and of
    /// `num_pages · page_size · H_kv · D` elements).
    pub fn new(index: PageIndex<'a>, k: Pages<'a>, v: Pages<'a>) -> Result<Self, KvCacheError> {
        index.check_rows("k_cache", &k)?;
        index.check_rows("v_cache", &v)?;
        if std::mem::discriminant(&k) != std::mem::discriminant(&v) {
            return Err(KvCacheError::DTypeMismatch);
        }
        Ok(PagedKv { index, k, v })
    }

    /// Bytes one (token, KV head) row takes in K (as in V).
    pub(crate) fn row_bytes(&self) -> usize {
        self.k.row_bytes(self.index.head_dim)
    }
}
