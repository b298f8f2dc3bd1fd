//! Attention of new queries over a [`KvCache`]: decode (few query rows) and chunked prefill
//! (N_q new tokens, causal bottom-right aligned to each sequence's length), f32 / bf16 / int8,
//! contiguous or paged, GQA/MQA, windows, ALiBi, softcap and sinks.
//!
//! Algorithm: split-KV decode ([`crate::tiled::decode`]'s). Per (query batch row, row tile,
//! key chunk) one rayon task runs the online softmax of the tile's rows (all query heads of
//! each KV group, i-major) over the chunk, for every KV head; partials fold with
//! [`merge_partials`] in chunk order, then sinks join through [`crate::lse::add_sinks`]. Per
//! block of [`KB`] keys the task resolves the block table once (the storage row of each token)
//! and runs the decode kernel ([`crate::simd::decode`]) head by head on the pages **in place**:
//! f32 rows as they are, bf16 widened and int8 dequantized in registers
//! ([`crate::simd::kv_rows`]); only f16 rows are staged into per-thread f32 scratch. Softcap and
//! ALiBi enter through the kernel's score hook. The rows [`PREFETCH_AHEAD`] bytes on are asked
//! for token by token, all heads of a token together, in the order NHD pages hold them, and the
//! kernel asks for each head's rows [`kernel::SOURCE_AHEAD_ROWS`] keys on while it scores. Row `i`
//! of sequence `b` (valid keys
//! `[leftpad, seqlen)`, `len` of them) sees the logical keys of the problem's causal/window
//! band with `N_k = len`.
//!
//! The split (row tiles of [`ROW_TILE`] rows, chunks from the longest sequence) depends on the
//! shapes and lengths only, so results are bitwise identical at any thread count.
//!
//! Complexity: O(B·H·allowed pairs·D) time; each cached byte of a task's range is read once
//! per row tile. Memory: partials `units × tile rows × (D + 1)` f32 plus per-thread scratch.
//! Used when N_q·group ≤ [`crate::tiled::DECODE_MAX_ROWS`]; more query rows (chunked
//! prefill) run on the tiled GEMM-shaped kernel instead ([`super::prefill`]).

use super::append::{check_batch_idx, target};
use super::pages::Pages;
use super::quant;
use super::{KvCache, KvCacheError, PagedKv};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::lse::{add_sinks, merge_partials};
use crate::modifiers::Modifier;
use crate::problem::Problem;
use crate::simd::decode::{self as kernel, Ahead, Block, DecodeState, Int8Slots, KB, KvBlock, ScoreHook, Slots, Strip};
use crate::simd::flash::{finish_rows, padded_dim};
use crate::simd::score_mod::{RowMod, ScoreOnly, modify_slice};
use crate::simd::{Isa, scalar::Portable};
use crate::tiled::decode::{chunk_keys, for_blocks};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::cell::Cell;

/// Most query rows (positions × group) per task: bounds the accumulators of chunked prefill.
pub const ROW_TILE: usize = 64;

/// Bytes of K and V (all heads) asked for ahead of the block being computed. 8, 16, 32 and
/// 64 KiB were within noise of each other for f32, bf16 and int8 at 32K keys on the 2-vCPU
/// EPYC; none (hardware prefetch only) was 1.1-1.4x slower for int8.
const PREFETCH_AHEAD: usize = 16384;

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
    slots: Vec<usize>,
    offs: Vec<usize>,
    steps: Vec<f32>,
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
    /// Attention of `q` over the cache: [`PagedKv::attend`] on [`KvCache::view`].
    pub fn attend(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        self.view().attend(p, q, idx, out, lse)
    }
}

impl PagedKv<'_> {
    /// Everything [`PagedKv::attend`] refuses: problem/cache mismatch, tensor lengths,
    /// unsupported modifiers, `cache_batch_idx`.
    pub fn check_attend(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        out_len: usize,
        lse_len: Option<usize>,
    ) -> Result<()> {
        let ix = &self.index;
        Problem { seq_k: ix.capacity(), ..p.clone() }.validate()?;
        if p.kv_heads != ix.kv_heads || p.head_dim != ix.head_dim {
            return Err(AttnError::shape(format!(
                "problem has kv_heads={} head_dim={}, the cache kv_heads={} head_dim={}",
                p.kv_heads, p.head_dim, ix.kv_heads, ix.head_dim
            )));
        }
        let reasons = p.mods.refusals_except("kvcache", "not for a KV cache", &IMPLEMENTED);
        if !reasons.is_empty() {
            return Err(AttnError::Unsupported { backend: "kvcache".into(), reasons });
        }
        for (what, got, expected) in [
            ("q", q.len(), p.q_len()),
            ("out", out_len, p.out_len()),
            ("lse", lse_len.unwrap_or(p.lse_len()), p.lse_len()),
        ] {
            if got != expected {
                return Err(KvCacheError::ShapeMismatch { what, got, expected }.into());
            }
        }
        check_batch_idx(idx, p.batch, ix.batch())?;
        Ok(())
    }

    /// Attention of `q` (`(B_q, H, N_q, D)` f32, already rotated) over the cache: query batch
    /// row `i` reads sequence `cache_batch_idx[i]` (identity when absent). `p` gives H,
    /// N_q, scale, causal, window and the ALiBi/softcap/sinks modifiers (its `seq_k` is
    /// ignored: each sequence's length is its own). Writes `out` (`(B_q, H, N_q, D)`) and, when
    /// given, `lse` (`(B_q, H, N_q)`, natural log). The pages are read where they lie.
    pub fn attend(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        self.check_attend(p, q, idx, out.len(), lse.as_ref().map(|l| l.len()))?;
        if p.seq_q * p.group_size() > super::prefill::DECODE_MAX_ROWS {
            return self.prefill(p, q, idx, out, lse);
        }
        let (nq, d, g) = (p.seq_q, p.head_dim, p.group_size());
        let rows = nq * g;
        let tile = if rows <= ROW_TILE { rows } else { (ROW_TILE / g).max(1) * g };
        let tiles = rows.div_ceil(tile);
        let maxlen = (0..p.batch).map(|i| self.index.len_of(target(idx, i))).max().unwrap_or(0).max(1);
        // Prefill tasks already multiply by the row tiles: longer chunks keep the partials small.
        let chunk = if tiles > 1 { chunk_keys(maxlen).max(8192) } else { chunk_keys(maxlen) };
        let sp = Split { rows, tile, tiles, chunk, chunks: maxlen.div_ceil(chunk) };
        let hkv = p.kv_heads;
        let units = p.batch * tiles * sp.chunks;
        let part_bytes = (units as u64).checked_mul(hkv as u64 * tile as u64 * (d as u64 + 1) * 4);
        check_budget("kvcache", "attention partials", part_bytes)?;
        // The process-wide choice (`ATTNKIT_SIMD` honoured, as in flash-cpu); an override this CPU
        // lacks is refused, not silently replaced.
        let isa = Isa::selected().map_err(|reason| AttnError::Unavailable { backend: "kvcache".into(), reason })?;

        // Partial of (query row bq, tile t, chunk c, KV head h): rows at `at(bq, t, c, h)`.
        let at = |bq: usize, t: usize, c: usize, h: usize| (((bq * tiles + t) * sp.chunks + c) * hkv + h) * tile;
        let mut part_o = vec![0.0f32; units * hkv * tile * d];
        let mut part_l = vec![0.0f32; units * hkv * tile];
        part_o.par_chunks_mut(hkv * tile * d).zip(part_l.par_chunks_mut(hkv * tile)).enumerate().for_each_init(
            Scratch::default,
            |scr, (u, (po, pl))| {
                let (c, t, bq) = (u % sp.chunks, (u / sp.chunks) % sp.tiles, u / (sp.chunks * sp.tiles));
                self.task(p, q, idx, isa, &sp, (bq, t, c), scr, po, pl);
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
            let (bq, h) = (bk / hkv, bk % hkv);
            for t in 0..tiles {
                let a0 = at(bq, t, 0, h);
                let mut mo = part_o[a0 * d..(a0 + tile) * d].to_vec();
                let mut ml = part_l[a0..a0 + tile].to_vec();
                for c in 1..sp.chunks {
                    let a = at(bq, t, c, h);
                    merge_partials(&mut mo, &mut ml, &part_o[a * d..(a + tile) * d], &part_l[a..a + tile], d)?;
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

    /// One (query row `bq`, row tile, chunk) task over every KV head: each block stages the
    /// block's tokens for all heads (consecutive in NHD pages, so the reads stream), then runs
    /// the kernel head by head. `po`/`pl` hold `H_kv × tile` rows.
    #[allow(clippy::too_many_arguments)]
    fn task(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        isa: Isa,
        sp: &Split,
        (bq, t, c): (usize, usize, usize),
        scr: &mut Scratch,
        po: &mut [f32],
        pl: &mut [f32],
    ) {
        let (nq, d, g, hkv) = (p.seq_q, p.head_dim, p.group_size(), p.kv_heads);
        let ix = &self.index;
        let b = target(idx, bq);
        let (len, lp) = (ix.len_of(b), ix.leftpad[b]);
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
        let dp = padded_dim(d);
        scr.q.resize(hkv * n * d, 0.0);
        for h in 0..hkv {
            for r in 0..n {
                let (i, hh) = ((row0 + r) / g, (row0 + r) % g);
                let at = ((bq * p.heads + h * g + hh) * nq + i) * d;
                scr.q[(h * n + r) * d..(h * n + r + 1) * d].copy_from_slice(&q[at..at + d]);
            }
        }
        let m = &p.mods;
        let so = ScoreOnly { scale: p.scale, softcap: m.softcap, alibi: m.alibi_slopes.is_some() };
        let (block0, head) = (Cell::new(0usize), Cell::new(0usize));
        let offset = len as f32 - nq as f32;
        let hook = |r: usize, lo: usize, xs: &mut [f32]| {
            let (i, hh) = ((row0 + r) / g, (row0 + r) % g);
            let slope = p.alibi_slope(bq, i, head.get() * g + hh);
            let diag = i as f32 + offset - (block0.get() + lo) as f32;
            modify_slice(Portable, &so, RowMod { slope, diag }, xs);
        };
        let modified = so.softcap.is_some() || so.alibi;
        let log2e = std::f32::consts::LOG2_E;
        scr.acc.clear();
        scr.acc.resize(hkv * n * dp, 0.0);
        scr.m.clear();
        scr.m.resize(hkv * n, f32::NEG_INFINITY);
        scr.l.clear();
        scr.l.resize(hkv * n, 0.0);
        scr.s.resize(kernel::RB * KB, 0.0);
        let staged = matches!(self.k, Pages::F16(_));
        if staged {
            scr.kw.resize(hkv * KB * d, 0.0);
            scr.vw.resize(hkv * KB * d, 0.0);
        }
        let (kw, vw) = (&mut scr.kw, &mut scr.vw);
        let (qs, acc, ms, ls, s) = (&scr.q, &mut scr.acc, &mut scr.m, &mut scr.l, &mut scr.s);
        // Tokens prefetched ahead of the block: about PREFETCH_AHEAD bytes of K and V.
        let ahead = PREFETCH_AHEAD.div_ceil(2 * hkv * self.row_bytes()).max(1);
        let (slots, offs, steps) = (&mut scr.slots, &mut scr.offs, &mut scr.steps);
        for_blocks(&scr.ranges, (lo, hi), &mut scr.strips, |strips, b0, b1| {
            // Storage rows (head 0) of the block's keys and of the rows the kernel prefetches
            // past it; head h's row is `slot + h`, at element `slot·d + h·d`.
            let keys = b1 - b0;
            slots.clear();
            slots.extend((b0..(b1 + kernel::SOURCE_AHEAD_ROWS).min(hi)).map(|j| ix.row_of(b, lp + j, 0)));
            offs.clear();
            offs.extend(slots.iter().map(|&t| t * d));
            if staged {
                for (j, &row) in slots[..keys].iter().enumerate() {
                    for h in 0..hkv {
                        let at = (h * KB + j) * d;
                        self.k.read_row(row + h, &mut kw[at..at + d]);
                        self.v.read_row(row + h, &mut vw[at..at + d]);
                    }
                }
            }
            block0.set(b0);
            let nb = keys * d;
            // Rows `ahead` tokens on, asked for in the order they lie (token-major, all heads);
            // the kernel also asks for each head's rows a few keys on as it scores (the two
            // together beat either alone in alternated runs, most for paged 16 f32 and int8).
            for j in (b0 + ahead).min(hi)..(b1 + ahead).min(hi) {
                let row = ix.row_of(b, lp + j, 0);
                for h in 0..hkv {
                    self.k.prefetch_row(row + h, d);
                    self.v.prefetch_row(row + h, d);
                }
            }
            for h in 0..hkv {
                head.set(h);
                let mut st = DecodeState {
                    d,
                    q: &qs[h * n * d..(h + 1) * n * d],
                    scale_log2: if modified { log2e } else { p.scale * log2e },
                    acc: &mut acc[h * n * dp..(h + 1) * n * dp],
                    m: &mut ms[h * n..(h + 1) * n],
                    l: &mut ls[h * n..(h + 1) * n],
                    s,
                    ahead: Ahead::NONE,
                    score_mod: if modified { Some(&hook as &ScoreHook<'_>) } else { None },
                };
                let kb = h * KB * d;
                let block = in_place((self.k, self.v), (&slots[..keys], offs), h, d, steps)
                    .unwrap_or_else(|| Block::F32(KvBlock::contiguous(&kw[kb..kb + nb], &vw[kb..kb + nb], d)));
                kernel::run_block(isa, &mut st, block, strips);
            }
        });
        let tile = sp.tile;
        for h in 0..hkv {
            let (a, z) = (h * n, (h + 1) * n);
            let (o, l) = (&mut po[h * tile * d..(h * tile + n) * d], &mut pl[h * tile..h * tile + n]);
            finish_rows(&acc[a * dp..z * dp], &ms[a..z], &ls[a..z], d, o, Some(l));
        }
    }
}

/// Head `h`'s rows `slots[j] + h` (at element offsets `offs[j] + h·d`; `offs` may run past the
/// block's `slots.len()` keys, to rows the kernel only prefetches) of `k` and `v` as the
/// kernel reads them in place: f32, bf16 widened and int8 dequantized in registers (its steps
/// widened into `steps` first, K's then V's); `None` for f16, which is staged as f32.
fn in_place<'a>(
    (k, v): (Pages<'a>, Pages<'a>),
    (slots, offs): (&[usize], &'a [usize]),
    h: usize,
    d: usize,
    steps: &'a mut Vec<f32>,
) -> Option<Block<'a>> {
    let rows = (offs, slots.len());
    Some(match (k, v) {
        (Pages::F32(k), Pages::F32(v)) => Block::SlotsF32(Slots::new(k, rows, h, d), Slots::new(v, rows, h, d)),
        (Pages::BF16(k), Pages::BF16(v)) => {
            Block::SlotsBf16(Slots::new(k.reinterpret_cast(), rows, h, d), Slots::new(v.reinterpret_cast(), rows, h, d))
        }
        (Pages::Int8 { q: kq, scale: ks }, Pages::Int8 { q: vq, scale: vs }) => {
            let nb = quant::scales_per_row(d);
            let n = slots.len() * nb;
            steps.resize(2 * n, 0.0);
            let (ks, vs): (&[u16], &[u16]) = (ks.reinterpret_cast(), vs.reinterpret_cast());
            let widen = |x: u16| f32::from_bits(u32::from(x) << 16);
            for (j, &t) in slots.iter().enumerate() {
                let at = (t + h) * nb;
                for (i, (&a, &b)) in ks[at..at + nb].iter().zip(&vs[at..at + nb]).enumerate() {
                    steps[j * nb + i] = widen(a);
                    steps[n + j * nb + i] = widen(b);
                }
            }
            let (sk, sv) = steps.split_at(n);
            Block::Int8(Int8Slots::new(kq, rows, h, d, sk), Int8Slots::new(vq, rows, h, d, sv))
        }
        _ => return None,
    })
}
