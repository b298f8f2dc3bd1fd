//! In-place append of new K/V rows at `cache_seqlens`, with rotary embedding fused in, and the
//! combined append-then-attend call (FlashAttention's `flash_attn_with_kvcache`).
//!
//! New K/V come in the crate's layout `(B_new, H_kv, N_new, D)`; row `i` goes to sequence
//! `cache_batch_idx[i]` (identity when absent), at slots `seqlen, seqlen + 1, …`, and the
//! lengths advance by `N_new`. Rotary (cos/sin tables `(positions, rotary_dim / 2)`, as
//! FlashAttention's) rotates the first `rotary_dim` channels of each new K row at position
//! `slot − leftpad` before it is stored (and quantized), so an int8 cache quantizes the rotated
//! row. Q is rotated at the same positions in [`KvCache::append_attend`] when causal or
//! windowed; otherwise every query sits at the first new position (FlashAttention's rule).
//! Every check (shapes, indices, capacity, rotary range) runs before the first write.
//!
//! Complexity: O(B_new · H_kv · N_new · D).

use super::pages::{PageIndex, PagesMut, check_table};
use super::{KvCache, KvCacheError};
use crate::error::Result;
use crate::problem::Problem;

/// Rotary pairing of channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RotaryLayout {
    /// GPT-J: channels `(2i, 2i + 1)` rotate together.
    Interleaved,
    /// GPT-NeoX: channels `(i, i + rotary_dim / 2)` rotate together.
    HalfSplit,
}

/// Rotary tables: `cos`, `sin` of shape `(positions, rotary_dim / 2)`.
#[derive(Clone, Copy, Debug)]
pub struct Rotary<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub rotary_dim: usize,
    pub layout: RotaryLayout,
}

impl Rotary<'_> {
    /// The usual tables, `θ_i = base^(−2i / rotary_dim)`, angle `pos · θ_i`, computed in f64.
    pub fn tables(positions: usize, rotary_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
        let half = rotary_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(positions * half), Vec::with_capacity(positions * half));
        for p in 0..positions {
            for i in 0..half {
                let a = p as f64 * base.powf(-2.0 * i as f64 / rotary_dim as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Positions the tables hold.
    pub fn positions(&self) -> usize {
        self.cos.len() / (self.rotary_dim / 2).max(1)
    }

    /// Refuses a bad `rotary_dim`, tables of unequal or ragged length, and tables that do not
    /// reach `last_position`.
    pub fn check(&self, head_dim: usize, last_position: Option<usize>) -> std::result::Result<(), KvCacheError> {
        let rd = self.rotary_dim;
        if rd == 0 || !rd.is_multiple_of(2) || rd > head_dim {
            return Err(KvCacheError::RotaryDim { rotary_dim: rd, head_dim });
        }
        if !self.cos.len().is_multiple_of(rd / 2) {
            return Err(KvCacheError::ShapeMismatch {
                what: "rotary cos",
                got: self.cos.len(),
                expected: self.positions() * rd / 2,
            });
        }
        if self.sin.len() != self.cos.len() {
            return Err(KvCacheError::ShapeMismatch {
                what: "rotary sin",
                got: self.sin.len(),
                expected: self.cos.len(),
            });
        }
        match last_position {
            Some(p) if p >= self.positions() => {
                Err(KvCacheError::RotaryTooShort { needed: p, positions: self.positions() })
            }
            _ => Ok(()),
        }
    }

    /// Rotates the first `rotary_dim` channels of `x` by position `pos` (checked by the caller).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.rotary_dim / 2;
        let (c, s) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
        for i in 0..half {
            let (a, b) = match self.layout {
                RotaryLayout::Interleaved => (2 * i, 2 * i + 1),
                RotaryLayout::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * c[i] - x1 * s[i];
            x[b] = x0 * s[i] + x1 * c[i];
        }
    }
}

/// Options of an append: which sequences the new rows go to and the rotary tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendOptions<'a> {
    /// `cache_batch_idx`: new row `i` goes to sequence `cache_batch_idx[i]` (distinct).
    pub cache_batch_idx: Option<&'a [usize]>,
    pub rotary: Option<Rotary<'a>>,
}

/// Sequence of new row `i`.
pub(crate) fn target(idx: Option<&[usize]>, i: usize) -> usize {
    idx.map_or(i, |x| x[i])
}

/// Checks `cache_batch_idx` (or its absence) for `rows` new rows over `batch` sequences.
pub(crate) fn check_batch_idx(
    idx: Option<&[usize]>,
    rows: usize,
    batch: usize,
) -> std::result::Result<(), KvCacheError> {
    match idx {
        None if rows != batch => {
            Err(KvCacheError::ShapeMismatch { what: "batch of the new rows", got: rows, expected: batch })
        }
        None => Ok(()),
        Some(x) => {
            if x.len() != rows {
                return Err(KvCacheError::ShapeMismatch { what: "cache_batch_idx", got: x.len(), expected: rows });
            }
            let mut seen = vec![false; batch];
            for (row, &index) in x.iter().enumerate() {
                if index >= batch {
                    return Err(KvCacheError::BadBatchIndex { row, index, batch });
                }
                if std::mem::replace(&mut seen[index], true) {
                    return Err(KvCacheError::DuplicateBatchIndex { index });
                }
            }
            Ok(())
        }
    }
}

/// Everything an append refuses, without writing; returns the number of new rows.
fn check_append(
    ix: &PageIndex<'_>,
    k_new: &[f32],
    v_new: &[f32],
    n_new: usize,
    opts: &AppendOptions<'_>,
) -> Result<usize> {
    let row = ix.kv_heads * n_new * ix.head_dim;
    let rows = opts.cache_batch_idx.map_or(ix.batch(), |x| x.len());
    for (what, t) in [("k_new", k_new), ("v_new", v_new)] {
        if t.len() != rows * row {
            return Err(KvCacheError::ShapeMismatch { what, got: t.len(), expected: rows * row }.into());
        }
    }
    check_batch_idx(opts.cache_batch_idx, rows, ix.batch())?;
    let mut last = None;
    for i in 0..rows {
        let b = target(opts.cache_batch_idx, i);
        let seqlen = ix.seqlens[b];
        if seqlen + n_new > ix.capacity() {
            return Err(KvCacheError::CacheFull { batch: b, seqlen, new_tokens: n_new, capacity: ix.capacity() }.into());
        }
        if n_new > 0 {
            last = last.max(Some(seqlen + n_new - 1 - ix.leftpad[b]));
        }
    }
    if let Some(r) = &opts.rotary {
        r.check(ix.head_dim, last)?;
    }
    Ok(rows)
}

/// Appends `n_new` tokens per row of `k_new`/`v_new` (`(B_new, H_kv, N_new, D)` f32) into
/// caller-owned pages at `ix.seqlens`, rotating K by `opts.rotary` and rounding (or
/// quantizing) to the storage's type. The lengths are the caller's to advance (as
/// FlashAttention's `cache_seqlens` are). Every check runs first: a refusal writes nothing.
/// The index must reach `seqlen + n_new` slots ([`PageIndex::new`] with `reserve = n_new`).
pub fn append_pages(
    ix: &PageIndex<'_>,
    mut k: PagesMut<'_>,
    mut v: PagesMut<'_>,
    k_new: &[f32],
    v_new: &[f32],
    n_new: usize,
    opts: &AppendOptions<'_>,
) -> Result<()> {
    ix.check_rows("k_cache", &k.as_pages())?;
    ix.check_rows("v_cache", &v.as_pages())?;
    let rows = check_append(ix, k_new, v_new, n_new, opts)?;
    // The table entries the new slots land on (`PageIndex::new` checks them with its reserve;
    // checked again here for an index built without one).
    for i in 0..rows {
        let b = target(opts.cache_batch_idx, i);
        let mp = ix.max_pages;
        let reached = (ix.seqlens[b] + n_new).div_ceil(ix.page_size);
        check_table(&ix.block_table[b * mp..b * mp + reached], mp, ix.num_pages).map_err(|e| match e {
            KvCacheError::BadPageIndex { slot, page, num_pages, .. } => {
                KvCacheError::BadPageIndex { batch: b, slot, page, num_pages }
            }
            e => e,
        })?;
    }
    write_rows(ix, &mut k, &mut v, k_new, v_new, n_new, rows, opts);
    Ok(())
}

/// The writes of an append (checked by the caller).
#[allow(clippy::too_many_arguments)]
fn write_rows(
    ix: &PageIndex<'_>,
    k: &mut PagesMut<'_>,
    v: &mut PagesMut<'_>,
    k_new: &[f32],
    v_new: &[f32],
    n_new: usize,
    rows: usize,
    opts: &AppendOptions<'_>,
) {
    let d = ix.head_dim;
    let mut tmp = vec![0.0f32; d];
    for i in 0..rows {
        let b = target(opts.cache_batch_idx, i);
        let (start, lp) = (ix.seqlens[b], ix.leftpad[b]);
        for h in 0..ix.kv_heads {
            for t in 0..n_new {
                let src = ((i * ix.kv_heads + h) * n_new + t) * d;
                let slot = ix.row_of(b, start + t, h);
                tmp.copy_from_slice(&k_new[src..src + d]);
                if let Some(r) = &opts.rotary {
                    r.apply(&mut tmp, start + t - lp);
                }
                k.write_row(slot, &tmp);
                v.write_row(slot, &v_new[src..src + d]);
            }
        }
    }
}

/// Rotates `q` (`(B, H, N_q, D)` f32) for attention after an append: row `b`'s query `i` at
/// position `start[b] + i` when `per_position` (causal or windowed), else at `start[b]`
/// (FlashAttention's rule), `start[b]` being the first new token's position (`seqlen −
/// leftpad` before the append).
pub fn rotate_q(
    q: &mut [f32],
    heads: usize,
    seq_q: usize,
    head_dim: usize,
    r: &Rotary<'_>,
    start: &[usize],
    per_position: bool,
) {
    for (at, row) in q.chunks_mut(head_dim).enumerate() {
        let (i, b) = (at % seq_q, at / (seq_q * heads));
        r.apply(row, start[b] + if per_position { i } else { 0 });
    }
}

impl KvCache {
    /// Appends `n_new` tokens per row of `k_new`/`v_new` (`(B_new, H_kv, N_new, D)`) in place,
    /// rotating K by `opts.rotary`, and advances the lengths. Refusals write nothing.
    pub fn append(&mut self, k_new: &[f32], v_new: &[f32], n_new: usize, opts: &AppendOptions<'_>) -> Result<()> {
        let rows = check_append(&self.index(), k_new, v_new, n_new, opts)?;
        let (ix, mut k, mut v) = self.parts_mut();
        write_rows(&ix, &mut k, &mut v, k_new, v_new, n_new, rows, opts);
        for i in 0..rows {
            let b = target(opts.cache_batch_idx, i);
            self.seqlens[b] += n_new;
        }
        Ok(())
    }

    /// FlashAttention's `flash_attn_with_kvcache`: appends `k_new`/`v_new` (`N_new` =
    /// `p.seq_q` tokens per row), rotates a copy of `q` (`(B_new, H, N_q, D)`) at the new
    /// positions, and attends over the updated cache ([`KvCache::attend`]). All checks of both
    /// steps run before the append writes.
    #[allow(clippy::too_many_arguments)]
    pub fn append_attend(
        &mut self,
        p: &Problem,
        q: &[f32],
        k_new: &[f32],
        v_new: &[f32],
        opts: &AppendOptions<'_>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        let rows = check_append(&self.index(), k_new, v_new, p.seq_q, opts)?;
        let lse_len = lse.as_ref().map(|l| l.len());
        self.view().check_attend(p, q, opts.cache_batch_idx, out.len(), lse_len)?;
        if rows != p.batch {
            return Err(KvCacheError::ShapeMismatch { what: "batch of q", got: p.batch, expected: rows }.into());
        }
        let start: Vec<usize> = (0..rows)
            .map(|i| {
                let b = target(opts.cache_batch_idx, i);
                self.seqlens[b] - self.leftpad[b]
            })
            .collect();
        self.append(k_new, v_new, p.seq_q, opts)?;
        let mut qr;
        let q = match &opts.rotary {
            None => q,
            Some(r) => {
                qr = q.to_vec();
                let per_pos = p.causal || !p.window.is_unbounded();
                rotate_q(&mut qr, p.heads, p.seq_q, p.head_dim, r, &start, per_pos);
                &qr
            }
        };
        self.attend(p, q, opts.cache_batch_idx, out, lse)
    }
}
