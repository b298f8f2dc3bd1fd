//! Attention of new queries over a [`KvCache`]: decode (few query rows) and chunked prefill
//! (N_q new tokens, causal bottom-right aligned to each sequence's length), f32 / bf16 / int8,
//! contiguous or paged, GQA/MQA, windows, ALiBi, softcap and sinks.
//!
//! Algorithm: split-KV decode ([`crate::tiled::decode`]'s). Per (query batch row, KV head, row
//! tile, key chunk) one rayon task runs the online softmax of the tile's rows (all query heads
//! of the group, i-major) over the chunk; partials fold with [`merge_partials`] in chunk order,
//! then sinks join through [`crate::lse::add_sinks`]. Per block of [`KB`] keys the task stages
//! the block's K and V rows of its KV head from their pages into per-thread f32 scratch
//! (widening bf16, dequantizing int8; 2·32·D floats, L1-resident) and runs the f32 decode
//! kernel ([`crate::simd::decode`]) on it; softcap and ALiBi enter through the kernel's score
//! hook. Row `i` of sequence `b` (valid keys `[leftpad, seqlen)`, `len` of them) sees the
//! logical keys of the problem's causal/window band with `N_k = len`.
//!
//! The split (row tiles of [`ROW_TILE`] rows, chunks from the longest sequence) depends on the
//! shapes and lengths only, so results are bitwise identical at any thread count.
//!
//! Complexity: O(B·H·allowed pairs·D) time; each cached byte of a task's range is read once
//! per row tile. Memory: partials `units × tile rows × (D + 1)` f32 plus per-thread scratch.
//! Caveat: chunked prefill runs on this GEMV-shaped kernel, not on the tiled GEMM-shaped one,
//! so it is far from the GEMM ceiling for long N_q.

use super::{KvCache, KvCacheError};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::lse::{add_sinks, merge_partials};
use crate::modifiers::Modifier;
use crate::problem::Problem;
use crate::simd::decode::{self as kernel, Ahead, DecodeState, KB, ScoreHook, Strip};
use crate::simd::flash::{finish_rows, padded_dim};
use crate::simd::score_mod::{RowMod, ScoreOnly, modify_slice};
use crate::simd::{Isa, scalar::Portable};
use crate::tiled::decode::{chunk_keys, for_blocks};
use rayon::prelude::*;
use std::cell::Cell;

/// Most query rows (positions × group) per task: bounds the accumulators of chunked prefill.
pub const ROW_TILE: usize = 64;

/// Modifiers attention over the cache implements (bands come from causal/window).
const IMPLEMENTED: [Modifier; 3] = [Modifier::Alibi, Modifier::Softcap, Modifier::Sinks];

/// Per-thread scratch, reused across tasks.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    s: Vec<f32>,
    kw: Vec<f32>,
    vw: Vec<f32>,
    ranges: Vec<(usize, usize)>,
    strips: Vec<Strip>,
}

/// The split of one call.
struct Split {
    rows: usize,
    tile: usize,
    tiles: usize,
    chunk: usize,
    chunks: usize,
}

impl KvCache {
    /// Everything [`KvCache::attend`] refuses: problem/cache mismatch, tensor lengths,
    /// unsupported modifiers, `cache_batch_idx`.
    pub(crate) fn check_attend(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        out_len: usize,
        lse_len: Option<usize>,
        _pending: usize,
    ) -> Result<()> {
        Problem { seq_k: self.capacity(), ..p.clone() }.validate()?;
        if p.kv_heads != self.kv_heads || p.head_dim != self.head_dim {
            return Err(AttnError::shape(format!(
                "problem has kv_heads={} head_dim={}, the cache kv_heads={} head_dim={}",
                p.kv_heads, p.head_dim, self.kv_heads, self.head_dim
            )));
        }
        let reasons = p.mods.refusals_except("kvcache", "not for a KV cache", &IMPLEMENTED);
        if !reasons.is_empty() {
            return Err(AttnError::Unsupported { backend: "kvcache".into(), reasons });
        }
        for (what, got, expected) in
            [("q", q.len(), p.q_len()), ("out", out_len, p.out_len()), ("lse", lse_len.unwrap_or(p.lse_len()), p.lse_len())]
        {
            if got != expected {
                return Err(KvCacheError::ShapeMismatch { what, got, expected }.into());
            }
        }
        self.check_batch_idx(idx, p.batch)?;
        Ok(())
    }

    /// Attention of `q` (`(B_q, H, N_q, D)` f32, already rotated) over the cache: query batch
    /// row `i` reads sequence `cache_batch_idx[i]` (identity when absent). `p` gives H,
    /// N_q, scale, causal, window and the ALiBi/softcap/sinks modifiers (its `seq_k` is
    /// ignored: each sequence's length is its own). Writes `out` (`(B_q, H, N_q, D)`) and, when
    /// given, `lse` (`(B_q, H, N_q)`, natural log).
    pub fn attend(&self, p: &Problem, q: &[f32], idx: Option<&[usize]>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        self.check_attend(p, q, idx, out.len(), lse.as_ref().map(|l| l.len()), 0)?;
        let (nq, d, g) = (p.seq_q, p.head_dim, p.group_size());
        let rows = nq * g;
        let tile = if rows <= ROW_TILE { rows } else { (ROW_TILE / g).max(1) * g };
        let tiles = rows.div_ceil(tile);
        let maxlen = (0..p.batch).map(|i| self.len_of(self.target(idx, i))).max().unwrap_or(0).max(1);
        // Prefill tasks already multiply by the row tiles: longer chunks keep the partials small.
        let chunk = if tiles > 1 { chunk_keys(maxlen).max(8192) } else { chunk_keys(maxlen) };
        let sp = Split { rows, tile, tiles, chunk, chunks: maxlen.div_ceil(chunk) };
        let units = p.batch * p.kv_heads * tiles * sp.chunks;
        let part_bytes = (units as u64).checked_mul(tile as u64 * (d as u64 + 1) * 4);
        check_budget("kvcache", "attention partials", part_bytes)?;
        let isa = Isa::best();

        let mut part_o = vec![0.0f32; units * tile * d];
        let mut part_l = vec![0.0f32; units * tile];
        part_o.par_chunks_mut(tile * d).zip(part_l.par_chunks_mut(tile)).enumerate().for_each_init(
            Scratch::default,
            |scr, (u, (po, pl))| {
                let c = u % sp.chunks;
                let t = (u / sp.chunks) % sp.tiles;
                let bk = u / (sp.chunks * sp.tiles);
                self.task(p, q, idx, isa, &sp, (bk / p.kv_heads, bk % p.kv_heads, t, c), scr, po, pl);
            },
        );

        let mut lse_tmp;
        let lse = match lse {
            Some(l) => l,
            None => {
                lse_tmp = vec![0.0f32; p.lse_len()];
                &mut lse_tmp
            }
        };
        let (part_o, part_l) = (&part_o, &part_l);
        out.par_chunks_mut(rows * d).zip(lse.par_chunks_mut(rows)).enumerate().try_for_each(|(bk, (o, l))| {
            for t in 0..tiles {
                let at = |c: usize| ((bk * tiles + t) * sp.chunks + c) * tile;
                let mut mo = part_o[at(0) * d..(at(0) + tile) * d].to_vec();
                let mut ml = part_l[at(0)..at(0) + tile].to_vec();
                for c in 1..sp.chunks {
                    merge_partials(&mut mo, &mut ml, &part_o[at(c) * d..(at(c) + tile) * d], &part_l[at(c)..at(c) + tile], d)?;
                }
                for r in 0..tile.min(rows - t * tile) {
                    let gr = t * tile + r;
                    let dst = (gr % g) * nq + gr / g;
                    o[dst * d..(dst + 1) * d].copy_from_slice(&mo[r * d..(r + 1) * d]);
                    l[dst] = ml[r];
                }
            }
            Ok::<(), AttnError>(())
        })?;
        add_sinks(p, out, lse);
        Ok(())
    }

    /// Valid keys of sequence `b`.
    fn len_of(&self, b: usize) -> usize {
        self.seqlens()[b] - self.leftpad()[b]
    }

    /// One (query row `bq`, KV head, row tile, chunk) task.
    #[allow(clippy::too_many_arguments)]
    fn task(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        isa: Isa,
        sp: &Split,
        (bq, kvh, t, c): (usize, usize, usize, usize),
        scr: &mut Scratch,
        po: &mut [f32],
        pl: &mut [f32],
    ) {
        let (nq, d, g) = (p.seq_q, p.head_dim, p.group_size());
        let b = self.target(idx, bq);
        let (len, lp) = (self.len_of(b), self.leftpad()[b]);
        let row0 = t * sp.tile;
        let n = sp.tile.min(sp.rows - row0);
        let (k0, k1) = (c * sp.chunk, ((c + 1) * sp.chunk).min(len));
        scr.ranges.clear();
        let (mut lo, mut hi) = (k1, k0);
        for r in 0..n {
            let (a, z) = if len == 0 { (0, 0) } else { p.band((row0 + r) / g, nq, len) };
            scr.ranges.push((a, z));
            if a.max(k0) < z.min(k1) {
                lo = lo.min(a.max(k0));
                hi = hi.max(z.min(k1));
            }
        }
        po.fill(0.0);
        pl.fill(f32::NEG_INFINITY);
        if lo >= hi {
            return;
        }
        scr.q.resize(n * d, 0.0);
        for r in 0..n {
            let (i, hh) = ((row0 + r) / g, (row0 + r) % g);
            let at = ((bq * p.heads + kvh * g + hh) * nq + i) * d;
            scr.q[r * d..(r + 1) * d].copy_from_slice(&q[at..at + d]);
        }
        let m = &p.mods;
        let so = ScoreOnly { scale: p.scale, softcap: m.softcap, alibi: m.alibi_slopes.is_some() };
        let block0 = Cell::new(0usize);
        let offset = len as f32 - nq as f32;
        let hook = |r: usize, lo: usize, xs: &mut [f32]| {
            let (i, hh) = ((row0 + r) / g, (row0 + r) % g);
            let slope = p.alibi_slope(bq, i, kvh * g + hh);
            let diag = i as f32 + offset - (block0.get() + lo) as f32;
            modify_slice(Portable, &so, RowMod { slope, diag }, xs);
        };
        let modified = so.softcap.is_some() || so.alibi;
        let log2e = std::f32::consts::LOG2_E;
        scr.acc.resize(n * padded_dim(d), 0.0);
        scr.m.resize(n, 0.0);
        scr.l.resize(n, 0.0);
        scr.s.resize(kernel::RB * KB, 0.0);
        scr.kw.resize(KB * d, 0.0);
        scr.vw.resize(KB * d, 0.0);
        let mut st = DecodeState {
            d,
            q: &scr.q,
            scale_log2: if modified { log2e } else { p.scale * log2e },
            acc: &mut scr.acc,
            m: &mut scr.m,
            l: &mut scr.l,
            s: &mut scr.s,
            ahead: Ahead::NONE,
            score_mod: if modified { Some(&hook as &ScoreHook<'_>) } else { None },
        };
        st.reset();
        let (kw, vw) = (&mut scr.kw, &mut scr.vw);
        for_blocks(&scr.ranges, (lo, hi), &mut scr.strips, |strips, b0, b1| {
            for j in b0..b1 {
                let row = self.row_of(b, lp + j, kvh);
                let at = (j - b0) * d;
                self.k.read_row(row, &mut kw[at..at + d]);
                self.v.read_row(row, &mut vw[at..at + d]);
            }
            block0.set(b0);
            let nb = (b1 - b0) * d;
            kernel::run(isa, &mut st, &kw[..nb], &vw[..nb], strips);
        });
        finish_rows(&scr.acc, &scr.m, &scr.l, d, &mut po[..n * d], Some(&mut pl[..n]));
    }
}
