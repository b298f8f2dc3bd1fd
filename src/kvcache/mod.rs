//! A KV cache for serving: contiguous or paged storage, f32 / bf16 / int8 elements, in-place
//! append with fused rotary embedding, and attention over the cache (decode and chunked
//! prefill) reading the pages where they lie.
//!
//! # Layout (FlashAttention's / FlashInfer's NHD)
//! K and V each live in `(num_pages, page_size, H_kv, D)`. Sequence `b` owns the pages listed in
//! row `b` of the block table `(B, max_pages)` (i32, as FlashAttention's `block_table`); its
//! logical token `t` is slot `t % page_size` of page `block_table[b][t / page_size]`. A
//! *contiguous* cache is the special case of one page per sequence (`page_size` = capacity,
//! block table `[[0], [1], …]`), i.e. FlashAttention's `(B, seqlen_cache, H_kv, D)`.
//!
//! `cache_seqlens[b]` is the end of sequence `b`'s filled slots and `cache_leftpad[b]` its start
//! (FlashAttention's semantics: keys `[leftpad, seqlen)` are valid; the new tokens of an append
//! go to `seqlen`, and their rotary positions count from `leftpad`).
//!
//! # Element types
//! f32 and bf16 store the values. int8 ([`quant`]) is symmetric int8 with one bf16 scale per
//! block of 16 consecutive elements of a (token, KV head) row, the step searched per block for
//! least squared error: blocks keep an outlier channel's damage inside its own 16 elements (one
//! scale per row of D = 128 lets one outlier coarsen all 128), and blocks of 16 with a searched
//! step bring the decode error within the 3× of bf16's, which llama.cpp's q8_0 format
//! (blocks of 32, step max|x|/127) missed (4.05×). A bf16 scale per 16 costs what an f32 (or
//! q8_0's f16) scale per 32 costs: 144 bytes per row of D = 128 against 256 for bf16 (1.78×
//! fewer). Quantization happens on append, once per row.
//!
//! # Complexity and caveats
//! Append: O(new tokens · H_kv · D); int8 adds the step search (≤ 18 passes over each block of
//! 16; measured 46 ns per element on the loaded 2-vCPU machine below, from the fill times
//! `examples/kvcache_speed.rs` prints; from the figures below that is, as an estimate, about 3%
//! of a 32K-token prefill's attention time and 0.2% of a decode step's at 32K keys). Decode (N_q·group ≤ 16,
//! [`attend`]): as the decode strategy of `flash-cpu` ([`crate::tiled::decode`]): each K/V
//! byte of the attended range is read once per call, where it lies: the decode kernel reads
//! each block's rows from their pages through a table of storage rows, f32 as is, bf16
//! widened and int8 dequantized in registers ([`crate::simd::kv_rows`]; only f16 is staged
//! as f32, block by block). Nothing sequence-sized is gathered. Chunked prefill (more query
//! rows, [`prefill`]): the tiled GEMM-shaped kernel, its K/V panels packed straight from the
//! pages.
//! Refusals ([`KvCacheError`]) are checked before anything is written.
//!
//! Measured (2 threads, H = 32/8, D = 128, on a 2-vCPU AVX2 EPYC without AVX-512; ratios
//! from one run each, variants alternated rep by rep):
//! - decode, 1 × 32768 keys (`examples/kvcache_speed.rs`, three runs, load average about 1.4):
//!   paged 16 took 0.86–0.89× the time of contiguous, paged 256 0.96–1.01×; bf16 0.54–0.61×,
//!   int8 0.62–0.74× of f32's: int8 decode 0.82–0.86× as fast as bf16 (target ≥ 1.7×);
//!   contiguous f32 read 47–65% of the streaming-read ceiling (paged 16: 54–74%), bf16
//!   38–61%, int8 17–29% (target ≥ 70%; the ceiling itself swung between runs); `flash-cpu`
//!   on plain (B, H_kv, N, D) f32 tensors 60–82%. Reading the pages in place instead of
//!   staging f32 copies took 0.91–0.98× the time for f32, 0.81–0.84× for bf16 and 0.89–0.95×
//!   for int8 (two runs, both paths in one binary, alternated); the kernel's own prefetch of
//!   each head's rows two keys ahead then cut paged 16 f32 from 21.8–22.4 ms to 18.7–19.2 ms
//!   (alternated binaries, two rounds).
//! - Why int8 is not faster than bf16 here: both are bound by the arithmetic, not the memory
//!   (bf16 reads under two thirds of the ceiling). Each K/V element feeds `group` = 4 FMAs; bf16 widens
//!   with integer shifts, off the FP pipes, while int8 needs a convert and a multiply by its
//!   step on the FP pipes, about 1.5× bf16's FP work per element. The FMAs alone cap two AVX2
//!   cores near 8 elements per cycle, about 20 GB/s of int8 at 2.4 GHz; so int8 can only pull
//!   ahead where bf16 becomes bandwidth-bound (more cores per memory channel), or with integer
//!   dot products (VNNI `vpdpbusd` on AVX-512; this CPU has none, so none are written).
//! - chunked prefill, 512 new tokens onto a 32768-key f32 cache
//!   (`examples/kvcache_prefill_speed.rs`, two runs): contiguous 0.81 and 0.54, paged 16 0.79
//!   and 0.55 of the f32 GEMM ceiling measured in the same run (88 and 84 GFLOP/s), beside
//!   `flash-cpu` on plain tensors at 0.77 and 0.56 (target ≥ 0.85): the cache's prefill runs
//!   at the tiled kernel's own speed; the swing between runs is the machine's load.
//!
//! int8's decode error: at most 2.90× bf16's on `normal`, 2.10× on `structured`, over the
//! shapes and seeds of `tests/kvcache.rs` ([`quant`]).

pub mod append;
pub mod attend;
pub mod pages;
pub mod prefill;
pub mod quant;

pub use append::{AppendOptions, Rotary, RotaryLayout, append_pages, rotate_q};
use pages::check_table;
pub use pages::{PageIndex, PagedKv, Pages, PagesMut};

use crate::error::{AttnError, Result};
use half::bf16;
use std::fmt;

/// Smallest page size of a paged cache.
pub const MIN_PAGE_SIZE: usize = 16;

/// Why a cache operation was refused. Nothing was written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvCacheError {
    #[error(
        "cache full: sequence {batch} holds {seqlen} of {capacity} slots (block_table's max_pages × page_size), \
         cannot append {new_tokens}"
    )]
    CacheFull { batch: usize, seqlen: usize, new_tokens: usize, capacity: usize },
    #[error("block_table[{batch}][{slot}] = {page} is not a page index in [0, {num_pages})")]
    BadPageIndex { batch: usize, slot: usize, page: i64, num_pages: usize },
    #[error("length {len} of sequence {batch} is out of range (capacity {capacity})")]
    LengthOutOfRange { batch: usize, len: usize, capacity: usize },
    #[error("leftpad {leftpad} of sequence {batch} exceeds its length {seqlen}")]
    LeftpadBeyondLength { batch: usize, leftpad: usize, seqlen: usize },
    #[error("page size {page_size} is below the minimum {min}")]
    PageSizeTooSmall { page_size: usize, min: usize },
    #[error("{what} has {got} elements, expected {expected}")]
    ShapeMismatch { what: &'static str, got: usize, expected: usize },
    #[error("cache_batch_idx[{row}] = {index} is not a sequence of the cache (batch {batch})")]
    BadBatchIndex { row: usize, index: usize, batch: usize },
    #[error("cache_batch_idx names sequence {index} twice")]
    DuplicateBatchIndex { index: usize },
    #[error("rotary dim {rotary_dim} must be even and at most head_dim {head_dim}")]
    RotaryDim { rotary_dim: usize, head_dim: usize },
    #[error("rotary tables hold {positions} positions, position {needed} is needed")]
    RotaryTooShort { needed: usize, positions: usize },
    #[error("zero-sized cache dimension {what}")]
    ZeroDim { what: &'static str },
    #[error("cache of {what} elements overflows usize")]
    Overflow { what: &'static str },
    #[error("k_cache and v_cache have different element types")]
    DTypeMismatch,
}

impl From<KvCacheError> for AttnError {
    fn from(e: KvCacheError) -> Self {
        AttnError::KvCache(e)
    }
}

/// Element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDType {
    F32,
    BF16,
    /// Symmetric int8, one bf16 scale per 16 elements of a row ([`quant`]).
    Int8,
}

impl KvDType {
    pub const ALL: [KvDType; 3] = [KvDType::F32, KvDType::BF16, KvDType::Int8];

    pub fn as_str(self) -> &'static str {
        match self {
            KvDType::F32 => "f32",
            KvDType::BF16 => "bf16",
            KvDType::Int8 => "int8",
        }
    }

    /// Bytes one (token, KV head) row of `d` elements takes, scales included.
    pub fn row_bytes(self, d: usize) -> usize {
        match self {
            KvDType::F32 => 4 * d,
            KvDType::BF16 => 2 * d,
            KvDType::Int8 => quant::row_bytes(d),
        }
    }
}

impl fmt::Display for KvDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KvDType {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(KvDType::F32),
            "bf16" => Ok(KvDType::BF16),
            "int8" => Ok(KvDType::Int8),
            _ => Err(AttnError::invalid(format!("unknown kv dtype `{s}` (expected f32, bf16 or int8)"))),
        }
    }
}

/// Storage layout of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvLayout {
    /// One region of `capacity` slots per sequence.
    Contiguous,
    /// Pages of `page_size` slots addressed by a block table.
    Paged { page_size: usize },
}

impl fmt::Display for KvLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvLayout::Contiguous => f.write_str("contiguous"),
            KvLayout::Paged { page_size } => write!(f, "paged:{page_size}"),
        }
    }
}

impl std::str::FromStr for KvLayout {
    type Err = AttnError;
    /// `contiguous` or `paged:PAGE`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || AttnError::invalid(format!("kv layout `{s}` must be `contiguous` or `paged:PAGE`"));
        match s.split_once(':') {
            None if s == "contiguous" => Ok(KvLayout::Contiguous),
            Some(("paged", n)) => {
                let page_size: usize = n.parse().map_err(|_| bad())?;
                if page_size < MIN_PAGE_SIZE {
                    return Err(KvCacheError::PageSizeTooSmall { page_size, min: MIN_PAGE_SIZE }.into());
                }
                Ok(KvLayout::Paged { page_size })
            }
            _ => Err(bad()),
        }
    }
}

/// The element storage of K or V.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    /// Values and one scale per [`quant::QBLOCK`] elements of a row.
    Int8 {
        q: Vec<i8>,
        scale: Vec<bf16>,
    },
}

impl Store {
    fn new(dtype: KvDType, slots: usize, d: usize) -> Store {
        match dtype {
            KvDType::F32 => Store::F32(vec![0.0; slots * d]),
            KvDType::BF16 => Store::BF16(vec![bf16::ZERO; slots * d]),
            KvDType::Int8 => {
                Store::Int8 { q: vec![0; slots * d], scale: vec![bf16::ZERO; slots * quant::scales_per_row(d)] }
            }
        }
    }

    /// The storage, borrowed read-only.
    pub(crate) fn pages(&self) -> Pages<'_> {
        match self {
            Store::F32(x) => Pages::F32(x),
            Store::BF16(x) => Pages::BF16(x),
            Store::Int8 { q, scale } => Pages::Int8 { q, scale },
        }
    }

    /// The storage, borrowed for writing.
    pub(crate) fn pages_mut(&mut self) -> PagesMut<'_> {
        match self {
            Store::F32(x) => PagesMut::F32(x),
            Store::BF16(x) => PagesMut::BF16(x),
            Store::Int8 { q, scale } => PagesMut::Int8 { q, scale },
        }
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        match self {
            Store::F32(x) => 4 * x.len(),
            Store::BF16(x) => 2 * x.len(),
            Store::Int8 { q, scale } => q.len() + quant::SCALE_BYTES * scale.len(),
        }
    }
}

/// The [`PageIndex`] of a cache, borrowing its fields one by one (a macro, not a method, so
/// that [`KvCache::parts_mut`] can lend the stores mutably beside it).
macro_rules! page_index {
    ($c:expr) => {
        PageIndex {
            kv_heads: $c.kv_heads,
            head_dim: $c.head_dim,
            page_size: $c.page_size,
            num_pages: $c.num_pages,
            max_pages: $c.max_pages,
            block_table: &$c.block_table,
            seqlens: &$c.seqlens,
            leftpad: &$c.leftpad,
        }
    };
}

/// A KV cache of `batch` sequences (see the module docs for the layout and semantics).
#[derive(Clone, Debug)]
pub struct KvCache {
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: KvDType,
    layout: KvLayout,
    page_size: usize,
    num_pages: usize,
    max_pages: usize,
    block_table: Vec<i32>,
    seqlens: Vec<usize>,
    leftpad: Vec<usize>,
    pub(crate) k: Store,
    pub(crate) v: Store,
}

fn nonzero(what: &'static str, x: usize) -> std::result::Result<usize, KvCacheError> {
    if x == 0 { Err(KvCacheError::ZeroDim { what }) } else { Ok(x) }
}

impl KvCache {
    /// A contiguous cache: `capacity` slots per sequence, empty.
    pub fn contiguous(batch: usize, kv_heads: usize, head_dim: usize, capacity: usize, dtype: KvDType) -> Result<Self> {
        nonzero("batch", batch)?;
        let table = (0..batch)
            .map(|b| i32::try_from(b).map_err(|_| KvCacheError::Overflow { what: "batch" }))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Self::build(batch, kv_heads, head_dim, capacity, batch, 1, table, dtype, KvLayout::Contiguous)
    }

    /// A paged cache of `num_pages` pages of `page_size` slots; `block_table` is `(batch,
    /// max_pages)` row-major, every entry a page index in `[0, num_pages)` (pages may be
    /// shared between sequences, e.g. a common prompt prefix). Empty.
    #[allow(clippy::too_many_arguments)]
    pub fn paged(
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        page_size: usize,
        num_pages: usize,
        max_pages: usize,
        block_table: Vec<i32>,
        dtype: KvDType,
    ) -> Result<Self> {
        if page_size < MIN_PAGE_SIZE {
            return Err(KvCacheError::PageSizeTooSmall { page_size, min: MIN_PAGE_SIZE }.into());
        }
        Self::build(
            batch,
            kv_heads,
            head_dim,
            page_size,
            num_pages,
            max_pages,
            block_table,
            dtype,
            KvLayout::Paged { page_size },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        page_size: usize,
        num_pages: usize,
        max_pages: usize,
        block_table: Vec<i32>,
        dtype: KvDType,
        layout: KvLayout,
    ) -> Result<Self> {
        for (what, x) in [("batch", batch), ("kv_heads", kv_heads), ("head_dim", head_dim), ("page_size", page_size)] {
            nonzero(what, x)?;
        }
        nonzero("num_pages", num_pages)?;
        nonzero("max_pages", max_pages)?;
        let expected = batch.checked_mul(max_pages).ok_or(KvCacheError::Overflow { what: "block table" })?;
        if block_table.len() != expected {
            return Err(KvCacheError::ShapeMismatch { what: "block_table", got: block_table.len(), expected }.into());
        }
        check_table(&block_table, max_pages, num_pages)?;
        let slots = [page_size, kv_heads]
            .iter()
            .try_fold(num_pages, |a, &x| a.checked_mul(x))
            .filter(|s| s.checked_mul(head_dim).and_then(|e| e.checked_mul(4)).is_some())
            .ok_or(KvCacheError::Overflow { what: "storage" })?;
        let bytes = (2 * slots * dtype.row_bytes(head_dim)) as u64;
        crate::budget::check_budget("kvcache", "cache storage", Some(bytes))?;
        Ok(KvCache {
            batch,
            kv_heads,
            head_dim,
            dtype,
            layout,
            page_size,
            num_pages,
            max_pages,
            block_table,
            seqlens: vec![0; batch],
            leftpad: vec![0; batch],
            k: Store::new(dtype, slots, head_dim),
            v: Store::new(dtype, slots, head_dim),
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn dtype(&self) -> KvDType {
        self.dtype
    }
    pub fn layout(&self) -> KvLayout {
        self.layout
    }
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }
    pub fn block_table(&self) -> &[i32] {
        &self.block_table
    }
    /// `cache_seqlens`: end of each sequence's filled slots.
    pub fn seqlens(&self) -> &[usize] {
        &self.seqlens
    }
    /// `cache_leftpad`: start of each sequence's valid slots.
    pub fn leftpad(&self) -> &[usize] {
        &self.leftpad
    }
    /// Slots per sequence (`max_pages · page_size`).
    pub fn capacity(&self) -> usize {
        self.max_pages * self.page_size
    }
    /// Bytes of K and V storage.
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// Replaces the block table (the engine moved or allocated pages); checked first.
    pub fn set_block_table(&mut self, table: Vec<i32>) -> Result<()> {
        if table.len() != self.block_table.len() {
            let (got, expected) = (table.len(), self.block_table.len());
            return Err(KvCacheError::ShapeMismatch { what: "block_table", got, expected }.into());
        }
        check_table(&table, self.max_pages, self.num_pages)?;
        self.block_table = table;
        Ok(())
    }

    /// Sets `cache_seqlens` and `cache_leftpad` (FlashAttention's: keys `[leftpad, seqlen)`
    /// are valid). Checked first: one of each per sequence, `leftpad ≤ seqlen ≤ capacity`.
    pub fn set_lengths(&mut self, seqlens: &[usize], leftpad: Option<&[usize]>) -> Result<()> {
        let zeros = vec![0; self.batch];
        let leftpad = leftpad.unwrap_or(&zeros);
        for (what, got) in [("cache_seqlens", seqlens.len()), ("cache_leftpad", leftpad.len())] {
            if got != self.batch {
                return Err(KvCacheError::ShapeMismatch { what, got, expected: self.batch }.into());
            }
        }
        for (b, (&len, &lp)) in seqlens.iter().zip(leftpad).enumerate() {
            if len > self.capacity() {
                return Err(KvCacheError::LengthOutOfRange { batch: b, len, capacity: self.capacity() }.into());
            }
            if lp > len {
                return Err(KvCacheError::LeftpadBeyondLength { batch: b, leftpad: lp, seqlen: len }.into());
            }
        }
        self.seqlens.copy_from_slice(seqlens);
        self.leftpad.copy_from_slice(leftpad);
        Ok(())
    }

    /// The geometry and lengths, borrowed (the table was checked when set).
    pub fn index(&self) -> PageIndex<'_> {
        page_index!(self)
    }

    /// The index and both stores, the stores writable (for the append).
    fn parts_mut(&mut self) -> (PageIndex<'_>, PagesMut<'_>, PagesMut<'_>) {
        (page_index!(self), self.k.pages_mut(), self.v.pages_mut())
    }

    /// The cache as a borrowed [`PagedKv`] (what [`KvCache::attend`] runs on).
    pub fn view(&self) -> PagedKv<'_> {
        PagedKv { index: self.index(), k: self.k.pages(), v: self.v.pages() }
    }

    /// The valid keys and values of sequence `b` (slots `[leftpad, seqlen)`), dequantized,
    /// as `(H_kv, len, D)` f32 each: a copy, for checking and inspection (attention never
    /// gathers).
    pub fn to_dense(&self, b: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        if b >= self.batch {
            return Err(KvCacheError::BadBatchIndex { row: 0, index: b, batch: self.batch }.into());
        }
        let (lo, hi, d) = (self.leftpad[b], self.seqlens[b], self.head_dim);
        let (ix, kp, vp) = (self.index(), self.k.pages(), self.v.pages());
        let n = hi - lo;
        let (mut k, mut v) = (vec![0.0; self.kv_heads * n * d], vec![0.0; self.kv_heads * n * d]);
        for h in 0..self.kv_heads {
            for t in 0..n {
                let r = ix.row_of(b, lo + t, h);
                let at = (h * n + t) * d;
                kp.read_row(r, &mut k[at..at + d]);
                vp.read_row(r, &mut v[at..at + d]);
            }
        }
        Ok((k, v))
    }
}
