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

    fn check(&self, head_dim: usize, last_position: Option<usize>) -> std::result::Result<(), KvCacheError> {
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

impl KvCache {
    /// Sequence of new row `i`.
    pub(crate) fn target(&self, idx: Option<&[usize]>, i: usize) -> usize {
        idx.map_or(i, |x| x[i])
    }

    /// Checks `cache_batch_idx` (or its absence) for `rows` new rows; returns `rows`.
    pub(crate) fn check_batch_idx(&self, idx: Option<&[usize]>, rows: usize) -> std::result::Result<(), KvCacheError> {
        match idx {
            None if rows != self.batch => {
                Err(KvCacheError::ShapeMismatch { what: "batch of the new rows", got: rows, expected: self.batch })
            }
            None => Ok(()),
            Some(x) => {
                if x.len() != rows {
                    return Err(KvCacheError::ShapeMismatch { what: "cache_batch_idx", got: x.len(), expected: rows });
                }
                let mut seen = vec![false; self.batch];
                for (row, &index) in x.iter().enumerate() {
                    if index >= self.batch {
                        return Err(KvCacheError::BadBatchIndex { row, index, batch: self.batch });
                    }
                    if std::mem::replace(&mut seen[index], true) {
                        return Err(KvCacheError::DuplicateBatchIndex { index });
                    }
                }
                Ok(())
            }
        }
    }

    /// Everything [`KvCache::append`] refuses, without writing.
    fn check_append(&self, k_new: &[f32], v_new: &[f32], n_new: usize, opts: &AppendOptions<'_>) -> Result<usize> {
        let row = self.kv_heads * n_new * self.head_dim;
        let rows = opts.cache_batch_idx.map_or(self.batch, |x| x.len());
        for (what, t) in [("k_new", k_new), ("v_new", v_new)] {
            if t.len() != rows * row {
                return Err(KvCacheError::ShapeMismatch { what, got: t.len(), expected: rows * row }.into());
            }
        }
        self.check_batch_idx(opts.cache_batch_idx, rows)?;
        let mut last = None;
        for i in 0..rows {
            let b = self.target(opts.cache_batch_idx, i);
            let seqlen = self.seqlens[b];
            if seqlen + n_new > self.capacity() {
                return Err(
                    KvCacheError::CacheFull { batch: b, seqlen, new_tokens: n_new, capacity: self.capacity() }.into()
                );
            }
            if n_new > 0 {
                last = last.max(Some(seqlen + n_new - 1 - self.leftpad[b]));
            }
        }
        if let Some(r) = &opts.rotary {
            r.check(self.head_dim, last)?;
        }
        Ok(rows)
    }

    /// Appends `n_new` tokens per row of `k_new`/`v_new` (`(B_new, H_kv, N_new, D)`) in place,
    /// rotating K by `opts.rotary`, and advances the lengths. Refusals write nothing.
    pub fn append(&mut self, k_new: &[f32], v_new: &[f32], n_new: usize, opts: &AppendOptions<'_>) -> Result<()> {
        let rows = self.check_append(k_new, v_new, n_new, opts)?;
        let d = self.head_dim;
        let mut tmp = vec![0.0f32; d];
        for i in 0..rows {
            let b = self.target(opts.cache_batch_idx, i);
            let (start, lp) = (self.seqlens[b], self.leftpad[b]);
            for h in 0..self.kv_heads {
                for t in 0..n_new {
                    let src = ((i * self.kv_heads + h) * n_new + t) * d;
                    let slot = self.row_of(b, start + t, h);
                    tmp.copy_from_slice(&k_new[src..src + d]);
                    if let Some(r) = &opts.rotary {
                        r.apply(&mut tmp, start + t - lp);
                    }
                    self.k.write_row(slot, &tmp);
                    self.v.write_row(slot, &v_new[src..src + d]);
                }
            }
            self.seqlens[b] = start + n_new;
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
        let rows = self.check_append(k_new, v_new, p.seq_q, opts)?;
        let lse_len = lse.as_ref().map(|l| l.len());
        self.check_attend(p, q, opts.cache_batch_idx, out.len(), lse_len)?;
        if rows != p.batch {
            return Err(KvCacheError::ShapeMismatch { what: "batch of q", got: p.batch, expected: rows }.into());
        }
        let start: Vec<usize> = (0..rows).map(|i| self.seqlens[self.target(opts.cache_batch_idx, i)]).collect();
        self.append(k_new, v_new, p.seq_q, opts)?;
        let mut qr;
        let q = match &opts.rotary {
            None => q,
            Some(r) => {
                qr = q.to_vec();
                let per_pos = p.causal || !p.window.is_unbounded();
                for (at, row) in qr.chunks_mut(p.head_dim).enumerate() {
                    let (i, b) = (at % p.seq_q, at / (p.seq_q * p.heads));
                    let lp = self.leftpad[self.target(opts.cache_batch_idx, b)];
                    r.apply(row, start[b] - lp + if per_pos { i } else { 0 });
                }
                &qr
            }
        };
        self.attend(p, q, opts.cache_batch_idx, out, lse)
    }
}
