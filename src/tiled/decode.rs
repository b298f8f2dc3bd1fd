//! Decode (split-KV, "flash-decoding") strategy: few query rows per KV head over a long KV cache.
//!
//! When N_q times the GQA group is at most [`DECODE_MAX_ROWS`], `flash-cpu` runs this instead of
//! whole-head packing. Per (batch, KV head) the rows of **all** query heads of the group are one
//! task set, so each K/V row is read once for all of them; K and V are read in place, at any
//! row stride (a contiguous (B, H_kv, N, D) cache or FlashAttention's (B, N, H_kv, D) one;
//! bf16 without AVX512_BF16 is widened in registers ([`crate::simd::kv_rows`]), f16 one block
//! of [`KB`] keys at a time into per-thread scratch). The keys are split into fixed-size chunks ([`chunk_keys`], a function of N_k only);
//! every (batch, KV head, chunk) is an independent rayon task producing a normalized partial O
//! and LSE, and the partials are folded with [`merge_partials`] in chunk order. Results are
//! therefore bitwise identical at any thread count.
//!
//! Key ranges come from one closure `(batch, row) -> [lo, hi)` ([`BatchRowRange`]): the
//! problem's causal/window band, or per-batch key lengths (a KV cache filled to different
//! lengths, FlashAttention's `seqused_k`: [`key_lengths_range`]). Inside a block, rows whose
//! clamped ranges agree form strips of up to [`RB`] rows (the kernel never masks, and a row never
//! reads a key outside its band).
//!
//! Complexity: O(B·H·allowed pairs·D) time, each K/V byte read once per call; memory
//! O(B·H_kv·chunks·rows·D) for the partials (chunks ≤ 16) plus O(rows·D + KB·D)
//! scratch per thread, nothing N_k-sized. Measured speed: the "Decode" section of `reports/README.md`.

use crate::attention::AttnArgs;
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::lse::merge_partials;
use crate::problem::{DType, Problem};
use crate::row_layout::{HeadRows, Operand};
use crate::simd::Isa;
use crate::simd::decode::{self as kernel, Ahead, Block, DecodeState, KB, KvBlock, RB, Strip};
use crate::simd::flash::{finish_rows, padded_dim};
use crate::tensor::TensorRef;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Most query rows per KV head (N_q · group) for which `flash-cpu` picks this strategy.
pub const DECODE_MAX_ROWS: usize = 16;

/// Row `i` of batch `b`: allowed keys `[lo, hi)` in absolute key indices.
pub type BatchRowRange<'a> = dyn Fn(usize, usize) -> (usize, usize) + Sync + 'a;

/// Whether `flash-cpu` runs `p` with the decode strategy.
/// Modifiers: the decode kernel has no score-modifier step, so only `seqused_k` and the
/// diagonal shift (which only narrow or move each row's key range, through
/// [`Problem::key_range_at`]) take this path;
/// any other modifier runs on whole-head waves.
pub fn decode_applies(p: &Problem) -> bool {
    use crate::modifiers::Modifier;
    // A diagonal shift only moves each row's band, which `band_with_len` reads from `p`.
    let modifiers_ok = p.mods.active().iter().all(|m| matches!(m, Modifier::SequsedK | Modifier::DiagShift));
    modifiers_ok && p.seq_q.saturating_mul(p.group_size()) <= DECODE_MAX_ROWS
}

/// Keys per chunk: N_k / 16 rounded up to a multiple of 256 (at least 256), so at most 16
/// chunks per (batch, KV head). A function of N_k only, so the split (hence the rounding) never
/// depends on the thread count. 16 beat 8, 32 and 64 chunks at N_k = 32768 for f32 and bf16
/// (measured side by side): each task starts its K/V streams cold, so fewer, longer ones read
/// memory better, and B·H_kv·16 tasks still spread over the threads.
pub fn chunk_keys(nk: usize) -> usize {
    nk.div_ceil(16).div_ceil(256).max(1) * 256
}

/// The band of row `i` of a batch whose cache holds `len` keys: `p`'s causal/window rule with
/// N_k = `len` (bottom-right aligned to the batch's own length, as FlashAttention's
/// `seqused_k`).
pub fn band_with_len(p: &Problem, len: usize, i: usize) -> (usize, usize) {
    if len == 0 {
        return (0, 0);
    }
    Problem { seq_k: len, ..p.clone() }.key_range(i)
}

/// A [`BatchRowRange`] for per-batch key lengths; `InvalidArgument` (naming the value) when
/// there is not one length per batch or a length exceeds N_k.
pub fn key_lengths_range<'a>(p: &'a Problem, lens: &'a [usize]) -> Result<Box<BatchRowRange<'a>>> {
    if lens.len() != p.batch {
        return Err(AttnError::invalid(format!("{} key lengths given for batch {}", lens.len(), p.batch)));
    }
    if let Some((b, &l)) = lens.iter().enumerate().find(|&(_, &l)| l > p.seq_k) {
        return Err(AttnError::invalid(format!("key length {l} of batch {b} exceeds seq_k {}", p.seq_k)));
    }
    Ok(Box::new(move |b, i| band_with_len(p, lens[b], i)))
}

/// Partials held at once: per (batch, KV head, chunk) `rows × (D + 1)` f32, plus one thread's
/// scratch per pool thread (sized for every KV head's state rows).
pub fn working_bytes(p: &Problem) -> Option<u64> {
    let rows = (p.seq_q * p.group_size()) as u64;
    let d = p.head_dim as u64;
    let chunks = p.seq_k.div_ceil(chunk_keys(p.seq_k)) as u64;
    let parts = (p.batch as u64 * p.kv_heads as u64).checked_mul(chunks)?.checked_mul(rows * (d + 1) * 4)?;
    let dp = padded_dim(p.head_dim).div_ceil(32) as u64 * 32;
    // A task may hold the state rows of every KV head (interleaved K/V layouts).
    let hr = rows * p.kv_heads as u64;
    let scratch = (hr * (2 * dp + 3) + (RB * KB) as u64 + 2 * KB as u64 * d) * 4 + hr * dp * 2;
    parts.checked_add(scratch.checked_mul(rayon::current_num_threads().max(1) as u64)?)
}

/// Per-thread scratch, reused across tasks.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    qh: Vec<u16>,
    acc: Vec<f32>,
    acc2: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    s: Vec<f32>,
    kw: Vec<f32>,
    vw: Vec<f32>,
    ranges: Vec<(usize, usize)>,
    strips: Vec<Strip>,
}

/// Strips of a block `[k0, k1)`: runs of consecutive rows (i-major order) with the same clamped
/// range, cut at [`RB`] rows; rows that see no key of the block are left out.
pub(crate) fn block_strips(ranges: &[(usize, usize)], k0: usize, k1: usize, strips: &mut Vec<Strip>) {
    strips.clear();
    let clamp = |&(lo, hi): &(usize, usize)| {
        let (a, b) = (lo.clamp(k0, k1) - k0, hi.clamp(k0, k1) - k0);
        (a, b.max(a))
    };
    let mut r = 0;
    while r < ranges.len() {
        let (lo, hi) = clamp(&ranges[r]);
        let mut e = r + 1;
        while e < ranges.len() && e - r < RB && clamp(&ranges[e]) == (lo, hi) {
            e += 1;
        }
        if lo < hi {
            strips.push(Strip { row0: r, rows: e - r, lo, hi });
        }
        r = e;
    }
}

/// Calls `f(strips, b0, b1)` for each block `[b0, b1)` of [`KB`] keys of `[lo, hi)`.
pub(crate) fn for_blocks(
    ranges: &[(usize, usize)],
    (lo, hi): (usize, usize),
    strips: &mut Vec<Strip>,
    mut f: impl FnMut(&[Strip], usize, usize),
) {
    for b0 in (lo..hi).step_by(KB) {
        let b1 = (b0 + KB).min(hi);
        block_strips(ranges, b0, b1, strips);
        f(strips, b0, b1);
    }
}

/// Which kernel a task runs.
#[derive(Clone, Copy)]
enum Kernel {
    F32,
    #[cfg(target_arch = "x86_64")]
    Bf16(crate::simd::bf16::Avx512Bf16),
}

/// Runs the decode strategy for `args` with key ranges from `range`, on `isa` (bf16 inputs on
/// `vdpbf16ps` when `isa` is [`Isa::Avx512Bf16`]).
pub fn run(
    name: &str,
    isa: Isa,
    range: &BatchRowRange<'_>,
    args: &AttnArgs<'_>,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let p = args.problem();
    check_budget(name, "decode partials", working_bytes(p))?;
    let (nq, nk, d, g) = (p.seq_q, p.seq_k, p.head_dim, p.group_size());
    let rows = nq * g;
    let chunk = chunk_keys(nk);
    let nchunks = nk.div_ceil(chunk);
    let kernel = match (isa, p.dtype) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Bf16, DType::BF16) => crate::simd::bf16::Avx512Bf16::new().map_or(Kernel::F32, Kernel::Bf16),
        _ => Kernel::F32,
    };

    // When the KV heads' rows interleave in memory (FlashAttention's (B, N, H_kv, D) cache),
    // one task runs every KV head of a (batch, chunk), block by block: a block of KB keys then
    // reads one contiguous run of memory (all heads' rows) instead of H_kv runs of short rows
    // at a wide stride (one head after another over the chunk was 1.3–1.5× slower than the
    // contiguous cache at N_k ≥ 16K, f32, measured side by side). Otherwise one task per
    // (batch, KV head, chunk). Each head keeps its own state and sees the same blocks in the
    // same order either way, so results are identical.
    let heads_per_task = if interleaved(args) { p.kv_heads } else { 1 };
    let part_at = |b: usize, kvh: usize, c: usize| match heads_per_task {
        1 => (b * p.kv_heads + kvh) * nchunks + c,
        _ => (b * nchunks + c) * p.kv_heads + kvh,
    };
    let units = p.batch * p.kv_heads * nchunks;
    let mut part_o = vec![0.0f32; units * rows * d];
    let mut part_l = vec![0.0f32; units * rows];
    let (per_o, per_l) = (heads_per_task * rows * d, heads_per_task * rows);
    let task = |scr: &mut Scratch, (t, (po, pl)): (usize, (&mut [f32], &mut [f32]))| {
        let u = t * heads_per_task;
        let (b, kvh0, c) = match heads_per_task {
            1 => (u / nchunks / p.kv_heads, u / nchunks % p.kv_heads, u % nchunks),
            _ => (u / p.kv_heads / nchunks, 0, u / p.kv_heads % nchunks),
        };
        let (k0, k1) = (c * chunk, ((c + 1) * chunk).min(nk));
        let task = Task { p, args, kernel, isa, b, kvh0, heads: heads_per_task, rows, k0, k1 };
        task.run(range, scr, po, pl);
    };
    let serial = serial_work(p);
    if serial {
        let mut scr = Scratch::default();
        part_o.chunks_mut(per_o).zip(part_l.chunks_mut(per_l)).enumerate().for_each(|x| task(&mut scr, x));
    } else {
        part_o
            .par_chunks_mut(per_o)
            .zip(part_l.par_chunks_mut(per_l))
            .enumerate()
            .for_each_init(Scratch::default, task);
    }

    // Fold the chunks of each (batch, KV head) in chunk order, then un-permute rows (i-major
    // in the partials, head-major in the output).
    let mut lse_tmp;
    let lse = match lse {
        Some(l) => l,
        None => {
            lse_tmp = vec![0.0f32; p.lse_len()];
            &mut lse_tmp
        }
    };
    let (part_o, part_l) = (&part_o, &part_l);
    let fold = |(bk, (o, l)): (usize, (&mut [f32], &mut [f32]))| -> Result<()> {
        let at = |c: usize| part_at(bk / p.kv_heads, bk % p.kv_heads, c) * rows;
        let mut mo = part_o[at(0) * d..(at(0) + rows) * d].to_vec();
        let mut ml = part_l[at(0)..at(0) + rows].to_vec();
        for c in 1..nchunks {
            merge_partials(&mut mo, &mut ml, &part_o[at(c) * d..(at(c) + rows) * d], &part_l[at(c)..at(c) + rows], d)?;
        }
        for r in 0..rows {
            let (i, hh) = (r / g, r % g);
            let dst = hh * nq + i;
            o[dst * d..(dst + 1) * d].copy_from_slice(&mo[r * d..(r + 1) * d]);
            l[dst] = ml[r];
        }
        Ok(())
    };
    if serial {
        out.chunks_mut(rows * d).zip(lse.chunks_mut(rows)).enumerate().try_for_each(fold)
    } else {
        out.par_chunks_mut(rows * d).zip(lse.par_chunks_mut(rows)).enumerate().try_for_each(fold)
    }
}

/// Most multiply-adds of QKᵀ (B·H·N_q·N_k·D) that [`run`] does on the calling thread: handing
/// work to the rayon pool from outside it (the Python binding's thread) costs a futex wake and
/// wait per parallel loop, more than such a call's whole arithmetic (at B=1, H=8, N=16, D=64,
/// 2¹⁷ multiply-adds; the Python overhead figures are in the README's FlashAttention section). Either way every
/// (batch, KV head, chunk) partial is computed by the same code, so results are identical.
pub const DECODE_SERIAL_MAX_MACS: u64 = 1 << 18;

/// Whether [`run`] keeps `p` on the calling thread ([`DECODE_SERIAL_MAX_MACS`]).
fn serial_work(p: &Problem) -> bool {
    let macs = [p.heads, p.seq_q, p.seq_k, p.head_dim].iter().fold(p.batch as u64, |a, &x| a.saturating_mul(x as u64));
    macs <= DECODE_SERIAL_MAX_MACS
}

/// For rows widened block by block (f16, bf16 on the f32 kernel): asks the cache for the rows
/// that come [`kernel::PREFETCH_BYTES`] of row data after block `[b0, b1)` (up to `hi`), as the
/// in-place path's [`Ahead`] does.
fn prefetch_ahead(rows: &[HeadRows<'_>], b0: usize, b1: usize, d: usize, hi: usize) {
    for r in rows {
        let (ptr, size) = match r.src {
            TensorRef::F32(s) => (s.as_ptr() as *const u8, 4),
            TensorRef::F16(s) => (s.as_ptr() as *const u8, 2),
            TensorRef::BF16(s) => (s.as_ptr() as *const u8, 2),
        };
        let ahead = kernel::PREFETCH_BYTES.div_ceil(d * size);
        for j in (b0 + ahead).min(hi)..(b1 + ahead).min(hi) {
            let row = ptr.wrapping_add((r.base + j * r.stride) * size);
            (0..d * size).step_by(64).for_each(|off| kernel::prefetch_line(row.wrapping_add(off)));
        }
    }
}

/// Whether K's KV heads interleave row by row (head stride below row stride), as in a
/// (B, N, H_kv, D) cache.
fn interleaved(args: &AttnArgs<'_>) -> bool {
    args.layouts().k.is_some_and(|l| args.problem().kv_heads > 1 && l.head < l.row)
}

/// Every head's state rows of one task, back to back: `q` (`qn` elements a row), `acc` (`an`),
/// `m`, `l`; `s` the score scratch they share.
struct Heads<'s, Q> {
    d: usize,
    rows: usize,
    scale_log2: f32,
    q: (&'s [Q], usize),
    acc: (&'s mut [f32], usize),
    m: &'s mut [f32],
    l: &'s mut [f32],
    s: &'s mut [f32],
}

impl<Q> Heads<'_, Q> {
    /// The kernel state of head `h` (no prefetch set).
    fn state(&mut self, h: usize) -> DecodeState<'_, Q> {
        let (r0, r1) = (h * self.rows, (h + 1) * self.rows);
        let ((q, qn), (acc, an)) = (self.q, (&mut *self.acc.0, self.acc.1));
        DecodeState {
            d: self.d,
            q: &q[r0 * qn..r1 * qn],
            scale_log2: self.scale_log2,
            acc: &mut acc[r0 * an..r1 * an],
            m: &mut self.m[r0..r1],
            l: &mut self.l[r0..r1],
            s: self.s,
            ahead: Ahead::NONE,
            score_mod: None,
        }
    }
}

/// Rows ahead of the block start that a task over interleaved KV heads prefetches.
const INTERLEAVED_AHEAD_ROWS: usize = 2;

/// One (batch, chunk) task over KV heads `kvh0..kvh0 + heads`: each head keeps its own
/// online-softmax state, and every block of [`KB`] keys runs all the heads in turn.
struct Task<'a> {
    p: &'a Problem,
    args: &'a AttnArgs<'a>,
    kernel: Kernel,
    isa: Isa,
    b: usize,
    kvh0: usize,
    heads: usize,
    rows: usize,
    k0: usize,
    k1: usize,
}

impl Task<'_> {
    /// What the kernel prefetches while it computes the block starting at key `b0`: this
    /// (batch, KV head)'s K and V rows (`kr`, `vr` address them in `k`, `v`) ahead of it, up
    /// to `hi`.
    fn ahead<T>(&self, (k, kr): (&[T], HeadRows<'_>), (v, vr): (&[T], HeadRows<'_>), b0: usize, hi: usize) -> Ahead {
        let kv = KvBlock { k: &k[kr.base..], ks: kr.stride, v: &v[vr.base..], vs: vr.stride, n: 0 };
        let d = self.p.head_dim;
        // Interleaved heads: the rows a few keys on are asked for just before this head needs
        // them; the other heads' prefetches of the same rows have already covered the memory
        // in between. Further (8 rows, as for adjacent rows) measured slightly slower, within
        // the shared machine's noise (strided ÷ contiguous means 1.07–1.09 at 1–2 rows,
        // 1.10–1.20 at 8, three alternated f32 sweeps each).
        let rows_ahead = if self.heads > 1 { INTERLEAVED_AHEAD_ROWS } else { kernel::ahead_rows::<T>(d) };
        Ahead::strided(kv, d, b0 + rows_ahead, hi)
    }

    /// Block `[b0, b1)` of one head's K and V rows, in place.
    fn block<'t, T>(
        &self,
        (k, kr): (&'t [T], HeadRows<'_>),
        (v, vr): (&'t [T], HeadRows<'_>),
        (b0, b1): (usize, usize),
    ) -> KvBlock<'t, T> {
        KvBlock::rows(k, kr.base, kr.stride, v, vr.base, vr.stride, self.p.head_dim, (b0, b1))
    }

    /// K's and V's rows of the task's head `h`.
    fn kv_rows(&self, h: usize) -> (HeadRows<'_>, HeadRows<'_>) {
        let kvh = self.kvh0 + h;
        (self.args.head_rows(Operand::K, self.b, kvh), self.args.head_rows(Operand::V, self.b, kvh))
    }

    /// Element offset of state row `r` (i-major: query position r / g of group head r % g) of
    /// the task's head `h` in Q.
    fn q_at(&self, h: usize, r: usize) -> usize {
        let g = self.p.group_size();
        let q = self.args.head_rows(Operand::Q, self.b, (self.kvh0 + h) * g + r % g);
        q.base + (r / g) * q.stride
    }

    /// Writes the partials of every head: `po` holds `heads × rows × D`, `pl` `heads × rows`.
    fn run(&self, range: &BatchRowRange<'_>, scr: &mut Scratch, po: &mut [f32], pl: &mut [f32]) {
        let (p, d, g) = (self.p, self.p.head_dim, self.p.group_size());
        // Rows in i-major order (r = i·g + hh): rows of one query position share a band, and
        // the bands do not depend on the head.
        scr.ranges.clear();
        let (mut lo, mut hi) = (self.k1, self.k0);
        for r in 0..self.rows {
            let (a, b) = range(self.b, r / g);
            scr.ranges.push((a, b));
            if a.max(self.k0) < b.min(self.k1) {
                lo = lo.min(a.max(self.k0));
                hi = hi.max(b.min(self.k1));
            }
        }
        if lo >= hi {
            po.fill(0.0);
            pl.fill(f32::NEG_INFINITY);
            return;
        }
        let (rows, nh, dp) = (self.rows, self.heads, padded_dim(d));
        scr.m.clear();
        scr.m.resize(nh * rows, f32::NEG_INFINITY);
        scr.l.clear();
        scr.l.resize(nh * rows, 0.0);
        scr.s.resize(RB * KB, 0.0);
        match self.kernel {
            Kernel::F32 => {
                scr.q.resize(nh * rows * d, 0.0);
                for (x, q) in scr.q.chunks_mut(d).enumerate() {
                    self.args.q().read_f32(self.q_at(x / rows, x % rows), q);
                }
                scr.acc.clear();
                scr.acc.resize(nh * rows * dp, 0.0);
                let mut heads = Heads {
                    d,
                    rows,
                    scale_log2: p.scale * std::f32::consts::LOG2_E,
                    q: (&scr.q, d),
                    acc: (&mut scr.acc, dp),
                    m: &mut scr.m,
                    l: &mut scr.l,
                    s: &mut scr.s,
                };
                let (kw, vw) = (&mut scr.kw, &mut scr.vw);
                for_blocks(&scr.ranges, (lo, hi), &mut scr.strips, |strips, b0, b1| {
                    for h in 0..nh {
                        let (kr, vr) = self.kv_rows(h);
                        let mut st = heads.state(h);
                        let kv = match (self.args.k(), self.args.v()) {
                            (TensorRef::F32(k), TensorRef::F32(v)) => {
                                st.ahead = self.ahead((k, kr), (v, vr), b0, hi);
                                Block::F32(self.block((k, kr), (v, vr), (b0, b1)))
                            }
                            // Widened in registers, read where the rows lie (any stride).
                            (TensorRef::BF16(k), TensorRef::BF16(v)) => {
                                prefetch_ahead(&[kr, vr], b0, b1, d, hi);
                                Block::Bf16(self.block(
                                    (k.reinterpret_cast(), kr),
                                    (v.reinterpret_cast(), vr),
                                    (b0, b1),
                                ))
                            }
                            _ => {
                                prefetch_ahead(&[kr, vr], b0, b1, d, hi);
                                kw.resize((b1 - b0) * d, 0.0);
                                vw.resize((b1 - b0) * d, 0.0);
                                kr.read_rows(b0, d, kw);
                                vr.read_rows(b0, d, vw);
                                Block::F32(KvBlock::contiguous(kw, vw, d))
                            }
                        };
                        kernel::run_block(self.isa, &mut st, kv, strips);
                    }
                });
                for (h, (o, pl)) in po.chunks_mut(rows * d).zip(pl.chunks_mut(rows)).enumerate() {
                    let (a, z) = (h * rows, (h + 1) * rows);
                    finish_rows(&scr.acc[a * dp..z * dp], &scr.m[a..z], &scr.l[a..z], d, o, Some(pl));
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16(t) => self.run_bf16(t, scr, (lo, hi), po, pl),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn run_bf16(
        &self,
        t: crate::simd::bf16::Avx512Bf16,
        scr: &mut Scratch,
        (lo, hi): (usize, usize),
        po: &mut [f32],
        pl: &mut [f32],
    ) {
        use crate::simd::bf16::{Bf16State, padded_dim32, process};
        let (TensorRef::BF16(q), TensorRef::BF16(k), TensorRef::BF16(v)) =
            (self.args.q(), self.args.k(), self.args.v())
        else {
            unreachable!("the bf16 kernel is chosen for bf16 inputs only")
        };
        let (d, d32, rows, nh) = (self.p.head_dim, padded_dim32(self.p.head_dim), self.rows, self.heads);
        scr.qh.clear();
        scr.qh.resize(nh * rows * d32, 0);
        for (x, qh) in scr.qh.chunks_mut(d32).enumerate() {
            let at = self.q_at(x / rows, x % rows);
            for (a, b) in qh[..d].iter_mut().zip(&q[at..at + d]) {
                *a = b.to_bits();
            }
        }
        let bits = |s: &[half::bf16]| -> &[u16] {
            // SAFETY: `half::bf16` is `#[repr(transparent)]` over u16, so the slice is a valid
            // `[u16]` of the same length and lifetime.
            unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u16, s.len()) }
        };
        let (k, v) = (bits(k), bits(v));
        scr.acc2.clear();
        scr.acc2.resize(nh * rows * d32, 0.0);
        let mut heads = Heads {
            d,
            rows,
            scale_log2: self.p.scale * std::f32::consts::LOG2_E,
            q: (&scr.qh, d32),
            acc: (&mut scr.acc2, d32),
            m: &mut scr.m,
            l: &mut scr.l,
            s: &mut scr.s,
        };
        for_blocks(&scr.ranges, (lo, hi), &mut scr.strips, |strips, b0, b1| {
            for h in 0..nh {
                let (kr, vr) = self.kv_rows(h);
                let mut st: Bf16State<'_> = heads.state(h);
                st.ahead = self.ahead((k, kr), (v, vr), b0, hi);
                process(t, &mut st, self.block((k, kr), (v, vr), (b0, b1)), strips);
            }
        });
        let dp = padded_dim(d);
        for (h, (o, pl)) in po.chunks_mut(rows * d).zip(pl.chunks_mut(rows)).enumerate() {
            let st = heads.state(h);
            st.finish_into(&mut scr.acc);
            finish_rows(&scr.acc[..rows * dp], st.m, st.l, d, o, Some(pl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_depend_on_nk_only_and_stay_few() {
        assert_eq!(chunk_keys(1), 256);
        assert_eq!(chunk_keys(32768), 2048);
        for nk in [1usize, 255, 1000, 100_000, 262_144, 1 << 24] {
            assert!(nk.div_ceil(chunk_keys(nk)) <= 16, "{nk}");
        }
    }

    #[test]
    fn strips_group_equal_ranges_and_skip_empty_rows() {
        let ranges = [(0, 10), (0, 10), (0, 10), (0, 10), (0, 10), (0, 12), (20, 30)];
        let mut s = Vec::new();
        block_strips(&ranges, 0, 16, &mut s);
        let want = [
            Strip { row0: 0, rows: 4, lo: 0, hi: 10 },
            Strip { row0: 4, rows: 1, lo: 0, hi: 10 },
            Strip { row0: 5, rows: 1, lo: 0, hi: 12 },
        ];
        assert_eq!(s, want);
    }
}
