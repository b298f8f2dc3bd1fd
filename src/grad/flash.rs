//! FlashAttention-2's backward on CPU tiles: the backward of `flash-cpu`, `local` and
//! `local-block`.
//!
//! Algorithm: D = rowsum(dO∘O) once ([`super::delta_rows`]). The keys of each (batch, KV head)
//! are cut into blocks of `BC`; a task owns a fixed subset of those blocks (round-robin, so a
//! causal band's work is balanced) and, per key block, keeps dK and dV in f32 while it visits
//! every query head of the KV group and every block of `BR` query rows whose band reaches the
//! keys: S = scale·Q·Kᵀ, P = exp(S' − LSE) recomputed from the saved LSE (S' the modified score,
//! [`super::rowstep`]), dP = dO·Vᵀ, dS = P∘(dP − D), then dV += Pᵀ·dO, dK += scale·dSᵀ·Q and
//! dQ += scale·dS·K (the five GEMMs, serial inside a task). Row blocks that the band or varlen
//! layout leave empty are skipped; P is never stored beyond one BR×BC tile.
//!
//! GEMMs ([`TileKernel`]): the flash tiling runs the register-blocked tile kernel of
//! [`crate::simd::bwd_tile`] (the forward's 6×16 AVX2 microkernel shape) with Kᵀ and Vᵀ packed
//! once per key block and Q, dO, K, Pᵀ, dSᵀ read in place through strides; the tiles' row
//! strides are odd multiples of 64 bytes (see [`odd_chunks`]). That replaced five `gemm` crate
//! calls per tile, which repacked the same operands on every call (measured on this 2-core AVX2
//! machine, old and new binaries alternated: see the README's backward speed note). The
//! materialized tiling (`sdpa`) keeps the `gemm` crate, whose cache blocking its N_q×N_k
//! products need.
//! Complexity: O(pairs·D) time (2.5× the forward's FLOPs), O(N·D) extra memory (at most three
//! extra dQ-sized buffers, none when B·H_kv ≥ 8).
//!
//! Determinism: tasks are (batch, KV head, chunk) with the chunk count a function of the problem
//! only; a task accumulates in a fixed order, chunk 0 writes dQ in place and every other chunk
//! into its own dQ buffer, and the buffers are summed in chunk order. No atomics, so results are
//! bitwise identical at any thread count (tests/gradients.rs checks 1, 2 and 8 threads).
//!
//! Non-finite inputs: a tile whose Q, dO, K or V rows hold a NaN or ±∞ takes a scalar path that
//! skips masked pairs instead of multiplying them by zero, so the NaN stays where it can reach.
//!
//! Caveats: bf16/f16 inputs are widened to f32 per tile (no `vdpbf16ps` path yet), so the
//! backward runs at the f32 rate for every dtype; the tile kernel is AVX2-wide, so AVX-512 paths keep
//! the `gemm` crate's products ([`Tiling::flash`]; no AVX-512 tile kernel is written); diagonal tiles of a causal band compute their masked
//! half; the bias gradient is a second pass ([`super::materialized::dbias_pass`]).

use super::rowstep::{Row, StepMods, allowed, row_step};
use super::{GradsMut, Prepared, Saved};
use crate::attention::AttnArgs;
use crate::error::Result;
use crate::linalg::{MatRef, Par, sgemm};
use crate::problem::Problem;
use crate::simd::Isa;
use crate::simd::bwd_tile::{COLS, TileGemm};
use crate::tensor::TensorRef;
use crate::tiled::RowRange;
use rayon::prelude::*;

/// Query rows per tile of the flash tiling.
const BR: usize = 128;
/// Keys per tile of the flash tiling.
const BC: usize = 128;
/// Tasks the chunking aims for (B·H_kv·chunks ≥ this when the keys allow), fixed so results do
/// not depend on the thread count. Every chunk after the first costs one more dQ-sized buffer, so
/// the count is a trade: 8 tasks keep 8 threads busy and leave the common B·H_kv ≥ 8 shapes with
/// no extra buffer at all.
const TARGET_TASKS: usize = 8;
/// The `gemm` crate's own packing buffers, per thread: tests/backward_memory.rs measured the
/// backward's peak at ~1.1 MiB per thread above the tiles; 2 MiB leaves room.
const GEMM_WORKSPACE: u64 = 2 << 20;
/// At most this many chunks (extra memory ≤ 3 dQ-sized buffers, even for MQA at batch 1).
const MAX_CHUNKS: usize = 4;

/// `n` rounded up to an odd number of column chunks: a row stride of 2ᵏ·64 bytes maps the
/// rows of a tile column onto few L1 sets (with D = 128, the 128 rows of a B chunk fell on 8
/// sets of an 8-way cache, and the backward ran 8–17% slower than on the `gemm` crate in two
/// alternated pairs); an odd multiple of 64 bytes spreads them over all sets.
fn odd_chunks(n: usize) -> usize {
    let chunks = n.div_ceil(COLS);
    (chunks | 1) * COLS
}

/// Tile shape and key chunking of one call: a function of the problem only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Query rows per tile.
    pub br: usize,
    /// Keys per tile.
    pub bc: usize,
    /// Key chunks per (batch, KV head): tasks, each with its own dQ buffer after the first.
    pub chunks: usize,
    /// Who multiplies the tiles.
    pub kernel: TileKernel,
}

/// The GEMM behind a tiling's five products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKernel {
    /// The `gemm` crate (packs its operands per call): the materialized backward's N_q×N_k
    /// products, large enough for its cache blocking to matter.
    Crate,
    /// The register-blocked tile kernel of [`crate::simd::bwd_tile`], Kᵀ and Vᵀ packed once per
    /// key block: the flash tiling's 128×128×D products, where per-call packing would cost.
    Simd,
}

impl Tiling {
    /// FlashAttention-2's tiling: BR×BC tiles, chunks up to [`TARGET_TASKS`] tasks. The tile
    /// kernel is 256-bit wide, so the AVX-512 paths keep the `gemm` crate (512-bit there, and
    /// the path measured on AVX-512 machines before the tile kernel existed).
    pub fn flash(p: &Problem, isa: Isa) -> Self {
        let kblocks = p.seq_k.div_ceil(BC).max(1);
        let chunks = TARGET_TASKS.div_ceil((p.batch * p.kv_heads).max(1)).clamp(1, kblocks.min(MAX_CHUNKS));
        let kernel = if matches!(isa, Isa::Avx512 | Isa::Avx512Bf16) { TileKernel::Crate } else { TileKernel::Simd };
        Tiling { br: BR, bc: BC, chunks, kernel }
    }

    /// The textbook computation: one N_q×N_k tile per head (`sdpa`'s materialized backward).
    pub fn materialized(p: &Problem) -> Self {
        Tiling { br: p.seq_q.max(1), bc: p.seq_k.max(1), chunks: 1, kernel: TileKernel::Crate }
    }

    /// Columns the kernel computes of the D-wide products: D padded to whole column chunks
    /// for the SIMD kernel, D for the crate.
    fn cols(&self, d: usize) -> usize {
        match self.kernel {
            TileKernel::Crate => d,
            TileKernel::Simd => d.next_multiple_of(COLS),
        }
    }

    /// Row stride of the D-wide tiles (Q, K, V, dO, dK, dV, dQ).
    fn row_len(&self, d: usize) -> usize {
        match self.kernel {
            TileKernel::Crate => d,
            TileKernel::Simd => odd_chunks(d),
        }
    }

    /// Row stride of the S and dP tiles (and the width of the packed Kᵀ, Vᵀ).
    fn score_ld(&self) -> usize {
        match self.kernel {
            TileKernel::Crate => self.bc,
            TileKernel::Simd => odd_chunks(self.bc),
        }
    }

    /// Working bytes beyond the gradients: the extra dQ buffers, D, the row ranges, the
    /// finiteness flags and one task's tiles per thread.
    pub fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let d = p.head_dim as u64;
        let (br, bc) = (self.br as u64, self.bc as u64);
        let extra_dq = (self.chunks as u64 - 1).checked_mul(p.out_len() as u64)?.checked_mul(4)?;
        let rows = (p.lse_len() as u64).checked_mul(4 + 1)?;
        let ranges = (p.batch as u64).checked_mul(p.seq_q as u64)?.checked_mul(16)?;
        let keys = p.kv_len() as u64 / d.max(1);
        let (dp, lds) = (self.row_len(p.head_dim) as u64, self.score_ld() as u64);
        // The `gemm` crate's packing buffers. The SIMD tile kernel allocates none, but without
        // this allowance tests/backward_memory.rs measured a peak 21 KB above the declared
        // bytes at N = 8192 (small per-call allocations), so it keeps the same slack.
        let workspace = GEMM_WORKSPACE;
        // K, V, dK, dV; Q, dO, dQ (BR rows); Kᵀ, Vᵀ (SIMD kernel only); S, dP; the chain.
        let packed = if self.kernel == TileKernel::Simd { 2 * d * lds } else { 0 };
        let tiles = (4 * bc + 3 * br)
            .checked_mul(dp)?
            .checked_add(packed)?
            .checked_add(br.checked_mul(lds)?.checked_mul(2)?)?
            .checked_add(bc)?;
        let per_thread =
            tiles.checked_mul(4)?.checked_add(workspace)?.checked_mul(rayon::current_num_threads() as u64)?;
        extra_dq.checked_add(rows)?.checked_add(ranges)?.checked_add(keys)?.checked_add(per_thread)
    }
}

/// Per-row / per-key finiteness of the inputs a tile multiplies.
struct Finite {
    /// (B·H·N_q): q row and dO row both finite
    rows: Vec<bool>,
    /// (B·H_kv·N_k): k row and v row both finite
    keys: Vec<bool>,
}

impl Finite {
    fn new(args: &AttnArgs<'_>, d_out: &[f32]) -> Self {
        let d = args.problem().head_dim;
        // Row by row through a small buffer: no f32 copy of a half-precision tensor.
        let finite_rows = |t: crate::tensor::TensorRef<'_>| -> Vec<bool> {
            (0..t.len() / d)
                .into_par_iter()
                .map_init(
                    || vec![0.0f32; d],
                    |buf, r| {
                        t.read_f32(r * d, buf);
                        buf.iter().all(|v| v.is_finite())
                    },
                )
                .collect()
        };
        let (q, k, v) = (finite_rows(args.q()), finite_rows(args.k()), finite_rows(args.v()));
        let rows = q.iter().zip(d_out.chunks(d)).map(|(a, g)| *a && g.iter().all(|x| x.is_finite())).collect();
        let keys = k.iter().zip(&v).map(|(a, b)| *a && *b).collect();
        Finite { rows, keys }
    }
}

/// A key block's index with its dK and dV destinations.
type KeyBlock<'a> = (usize, &'a mut [f32], &'a mut [f32]);

/// One task: batch `b`, KV head `g`, and its key blocks with their dK/dV destinations.
struct Task<'a> {
    b: usize,
    g: usize,
    blocks: Vec<KeyBlock<'a>>,
    /// dQ rows of the group's query heads (G·N_q·D), in place or a chunk's own buffer.
    dq: &'a mut [f32],
}

/// Shared read-only state of one call.
struct Ctx<'a> {
    args: &'a AttnArgs<'a>,
    saved: &'a Saved<'a>,
    prep: &'a Prepared,
    ranges: Vec<(usize, usize)>,
    finite: Finite,
    mods: StepMods<'a>,
    tiling: Tiling,
    isa: Isa,
}

/// Runs the backward into `grads` (dQ, dK, dV, dσ; the bias gradient when requested).
pub fn run(
    isa: Isa,
    range: &RowRange<'_>,
    tiling: Tiling,
    args: &AttnArgs<'_>,
    saved: &Saved<'_>,
    grads: &mut GradsMut<'_>,
) -> Result<()> {
    let p = args.problem();
    let d = p.head_dim;
    let prep = Prepared::new(args, saved);
    let ranges: Vec<(usize, usize)> = (0..p.batch * p.seq_q).map(|r| range(r / p.seq_q, r % p.seq_q)).collect();
    let finite = Finite::new(args, saved.d_out);
    let ctx = Ctx { args, saved, prep: &prep, ranges, finite, mods: StepMods::new(args, isa), tiling, isa };
    let (nc, bc) = (tiling.chunks, tiling.bc);
    let group = p.group_size();
    let mut extra: Vec<Vec<f32>> = (1..nc).map(|_| vec![0.0f32; p.out_len()]).collect();
    grads.dq.fill(0.0);
    let mut tasks: Vec<Task<'_>> = Vec::with_capacity(p.batch * p.kv_heads * nc);
    {
        let mut dq_slices: Vec<std::slice::ChunksMut<'_, f32>> = std::iter::once(&mut *grads.dq)
            .chain(extra.iter_mut().map(|v| v.as_mut_slice()))
            .map(|buf| buf.chunks_mut(group * p.seq_q * d))
            .collect();
        let kv = grads.dk.chunks_mut(p.seq_k * d).zip(grads.dv.chunks_mut(p.seq_k * d));
        for (bg, (dk, dv)) in kv.enumerate() {
            let mut per_chunk: Vec<Vec<KeyBlock<'_>>> = (0..nc).map(|_| Vec::new()).collect();
            for (kb, (k_blk, v_blk)) in dk.chunks_mut(bc * d).zip(dv.chunks_mut(bc * d)).enumerate() {
                per_chunk[kb % nc].push((kb, k_blk, v_blk));
            }
            for (c, blocks) in per_chunk.into_iter().enumerate() {
                let dq = dq_slices[c].next().unwrap_or_default();
                tasks.push(Task { b: bg / p.kv_heads, g: bg % p.kv_heads, blocks, dq });
            }
        }
    }
    tasks.into_par_iter().for_each(|t| run_task(&ctx, t));
    for buf in &extra {
        grads.dq.par_chunks_mut(4096).zip(buf.par_chunks(4096)).for_each(|(a, b)| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        });
    }
    if let Some(ds) = grads.dsinks.as_deref_mut() {
        super::sink_grads(p, saved.lse, &prep.delta, ds);
    }
    if let Some(db) = grads.dbias.as_deref_mut() {
        super::materialized::dbias_pass(isa, &ctx.ranges, args, saved, &prep, db)?;
    }
    Ok(())
}

/// Per-task tiles. D-wide tiles have row stride `row_len(D)` (zero padding columns), S and dP
/// row stride `score_ld()`; Kᵀ and Vᵀ are D × `score_ld()` (zero padding keys).
struct Tiles {
    k: Vec<f32>,
    v: Vec<f32>,
    kt: Vec<f32>,
    vt: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    q: Vec<f32>,
    /// dO rows when D is padded (else dO is read in place).
    dout: Vec<f32>,
    /// One tile's dQ when D is padded (else dQ accumulates in place).
    dq: Vec<f32>,
    s: Vec<f32>,
    dp: Vec<f32>,
    chain: Vec<f32>,
}

/// Reads `rows` rows of D elements from `src` (row 0 at element `start`) into `dst` with row
/// stride `ld` ≥ D; padding columns are left as they are (zero).
fn read_rows(src: TensorRef<'_>, start: usize, rows: usize, d: usize, ld: usize, dst: &mut [f32]) {
    if ld == d {
        src.read_f32(start, &mut dst[..rows * d]);
    } else {
        for r in 0..rows {
            src.read_f32(start + r * d, &mut dst[r * ld..r * ld + d]);
        }
    }
}

/// `dst` (D × `ld`) = the transpose of `src`'s first `nk` rows (row stride `dp`), keys
/// `nk..ld` zero.
fn transpose_into(src: &[f32], nk: usize, d: usize, dp: usize, ld: usize, dst: &mut [f32]) {
    for x in 0..d {
        let row = &mut dst[x * ld..(x + 1) * ld];
        for (c, y) in row[..nk].iter_mut().enumerate() {
            *y = src[c * dp + x];
        }
        row[nk..].fill(0.0);
    }
}

fn run_task(ctx: &Ctx<'_>, task: Task<'_>) {
    let p = ctx.args.problem();
    let d = p.head_dim;
    let group = p.group_size();
    let (br, bc) = (ctx.tiling.br, ctx.tiling.bc);
    let (dp, lds) = (ctx.tiling.row_len(d), ctx.tiling.score_ld());
    let simd = ctx.tiling.kernel == TileKernel::Simd;
    let padded = if dp != d { br * dp } else { 0 };
    let packed = if simd { d * lds } else { 0 };
    let mut t = Tiles {
        k: vec![0.0; bc * dp],
        v: vec![0.0; bc * dp],
        kt: vec![0.0; packed],
        vt: vec![0.0; packed],
        dk: vec![0.0; bc * dp],
        dv: vec![0.0; bc * dp],
        q: vec![0.0; br * dp],
        dout: vec![0.0; padded],
        dq: vec![0.0; padded],
        s: vec![0.0; br * lds],
        dp: vec![0.0; br * lds],
        chain: vec![0.0; bc],
    };
    let (b, g) = (task.b, task.g);
    let kv_row0 = (b * p.kv_heads + g) * p.seq_k;
    for (kb, dk_out, dv_out) in task.blocks {
        let j0 = kb * bc;
        let nk = dk_out.len() / d;
        read_rows(ctx.args.k(), kv_row0 * d + j0 * d, nk, d, dp, &mut t.k);
        read_rows(ctx.args.v(), kv_row0 * d + j0 * d, nk, d, dp, &mut t.v);
        if simd {
            // Packed once per key block, reused by every query head and row block.
            transpose_into(&t.k, nk, d, dp, lds, &mut t.kt);
            transpose_into(&t.v, nk, d, dp, lds, &mut t.vt);
        }
        t.dk[..nk * dp].fill(0.0);
        t.dv[..nk * dp].fill(0.0);
        let keys_ok = ctx.finite.keys[kv_row0 + j0..kv_row0 + j0 + nk].iter().all(|x| *x);
        for hg in 0..group {
            let h = g * group + hg;
            let dq_head = &mut task.dq[hg * p.seq_q * d..(hg + 1) * p.seq_q * d];
            for i0 in (0..p.seq_q).step_by(br) {
                let nr = br.min(p.seq_q - i0);
                let rr = &ctx.ranges[b * p.seq_q + i0..b * p.seq_q + i0 + nr];
                if !rr.iter().any(|&(lo, hi)| lo < hi && lo < j0 + nk && hi > j0) {
                    continue;
                }
                let dq_rows = &mut dq_head[i0 * d..(i0 + nr) * d];
                tile(ctx, &mut t, (b, h, i0, nr), (j0, nk), keys_ok, dq_rows);
            }
        }
        for c in 0..nk {
            dk_out[c * d..(c + 1) * d].copy_from_slice(&t.dk[c * dp..c * dp + d]);
            dv_out[c * d..(c + 1) * d].copy_from_slice(&t.dv[c * dp..c * dp + d]);
        }
    }
}

/// A row-major view with row stride `ld`.
fn strided(data: &[f32], rows: usize, cols: usize, ld: usize) -> MatRef<'_> {
    MatRef { data, rows, cols, row_stride: ld, col_stride: 1 }
}

/// One BR×BC tile: recompute P, form dS, accumulate dV, dK (tiles) and dQ (in place).
fn tile(
    ctx: &Ctx<'_>,
    t: &mut Tiles,
    (b, h, i0, nr): (usize, usize, usize, usize),
    (j0, nk): (usize, usize),
    keys_ok: bool,
    dq_rows: &mut [f32],
) {
    let p = ctx.args.problem();
    let d = p.head_dim;
    let (dp, lds) = (ctx.tiling.row_len(d), ctx.tiling.score_ld());
    let row0 = (b * p.heads + h) * p.seq_q + i0;
    read_rows(ctx.args.q(), row0 * d, nr, d, dp, &mut t.q);
    let dout = &ctx.saved.d_out[row0 * d..(row0 + nr) * d];
    if dp != d {
        for r in 0..nr {
            t.dout[r * dp..r * dp + d].copy_from_slice(&dout[r * d..(r + 1) * d]);
        }
    }
    let do_tile: &[f32] = if dp != d { &t.dout } else { dout };
    let simd = ctx.tiling.kernel == TileKernel::Simd;
    // The shapes are consistent by construction; a GEMM shape error cannot happen here.
    if simd {
        let nkp = nk.next_multiple_of(COLS);
        let scores = |a: &[f32], bt: &[f32], c: &mut [f32], alpha: f32| {
            let (a_rs, a_cs) = (dp, 1);
            let (b, ldb, ldc, accumulate) = (bt, lds, lds, false);
            ctx.isa.tile_gemm(&mut TileGemm { m: nr, n: nkp, k: d, a, a_rs, a_cs, b, ldb, c, ldc, alpha, accumulate });
        };
        scores(&t.q, &t.kt, &mut t.s, p.scale);
        scores(do_tile, &t.vt, &mut t.dp, 1.0);
    } else {
        let (q, kt) = (strided(&t.q, nr, d, dp), MatRef::transposed(&t.k[..nk * d], nk, d));
        let (do_m, vt) = (MatRef::row_major(dout, nr, d), MatRef::transposed(&t.v[..nk * d], nk, d));
        let _ = sgemm(q, kt, &mut t.s, lds, p.scale, 0.0, Par::Serial);
        let _ = sgemm(do_m, vt, &mut t.dp, lds, 1.0, 0.0, Par::Serial);
    }
    for r in 0..nr {
        let row = Row {
            b,
            h,
            i: i0 + r,
            lse: ctx.saved.lse[row0 + r],
            delta: ctx.prep.delta[row0 + r],
            range: ctx.ranges[b * p.seq_q + i0 + r],
        };
        let (s, dpr) = (&mut t.s[r * lds..r * lds + nk], &mut t.dp[r * lds..r * lds + nk]);
        row_step(&ctx.mods, &row, j0, s, dpr, &mut t.chain[..nk], false);
    }
    let rows_ok = ctx.finite.rows[row0..row0 + nr].iter().all(|x| *x);
    if !(keys_ok && rows_ok) {
        scalar_accumulate(ctx, t, (b, h, i0, nr), (j0, nk), dout, dq_rows);
    } else if simd {
        accumulate_simd(ctx, t, (nr, nk), dout, dq_rows);
    } else {
        let pm = MatRef { data: &t.s[..], rows: nk, cols: nr, row_stride: 1, col_stride: lds };
        let dsm_t = MatRef { data: &t.dp[..], rows: nk, cols: nr, row_stride: 1, col_stride: lds };
        let dsm = MatRef { data: &t.dp[..], rows: nr, cols: nk, row_stride: lds, col_stride: 1 };
        let do_m = MatRef::row_major(dout, nr, d);
        let _ = sgemm(pm, do_m, &mut t.dv[..nk * d], d, 1.0, 1.0, Par::Serial);
        let _ =
            sgemm(dsm_t, MatRef::row_major(&t.q[..nr * d], nr, d), &mut t.dk[..nk * d], d, p.scale, 1.0, Par::Serial);
        let _ = sgemm(dsm, MatRef::row_major(&t.k[..nk * d], nk, d), dq_rows, d, p.scale, 1.0, Par::Serial);
    }
}

/// The finite tile on the SIMD kernel: dV += Pᵀ·dO, dK += scale·dSᵀ·Q (Pᵀ and dSᵀ read in
/// place through strides), dQ += scale·dS·K (in place when D needs no padding).
fn accumulate_simd(ctx: &Ctx<'_>, t: &mut Tiles, (nr, nk): (usize, usize), dout: &[f32], dq_rows: &mut [f32]) {
    let p = ctx.args.problem();
    let d = p.head_dim;
    let (n, dp, lds) = (ctx.tiling.cols(d), ctx.tiling.row_len(d), ctx.tiling.score_ld());
    let (scale, accumulate) = (p.scale, true);
    let do_tile: &[f32] = if dp != d { &t.dout } else { dout };
    let (a_rs, a_cs, ldb, ldc) = (1, lds, dp, dp);
    let key_major = |a, b, c, alpha| TileGemm { m: nk, n, k: nr, a, a_rs, a_cs, b, ldb, c, ldc, alpha, accumulate };
    ctx.isa.tile_gemm(&mut key_major(&t.s, do_tile, &mut t.dv, 1.0));
    ctx.isa.tile_gemm(&mut key_major(&t.dp, &t.q, &mut t.dk, scale));
    let (a, b, a_rs, a_cs, alpha) = (&t.dp[..], &t.k[..], lds, 1, scale);
    if n == d {
        // In place: C is touched once per 16 columns × k FMAs, its stride does not matter.
        let (c, ldc) = (dq_rows, d);
        ctx.isa.tile_gemm(&mut TileGemm { m: nr, n, k: nk, a, a_rs, a_cs, b, ldb, c, ldc, alpha, accumulate });
    } else {
        let (c, accumulate) = (&mut t.dq[..], false);
        ctx.isa.tile_gemm(&mut TileGemm { m: nr, n, k: nk, a, a_rs, a_cs, b, ldb, c, ldc, alpha, accumulate });
        for (dst, src) in dq_rows.chunks_exact_mut(d).zip(t.dq.chunks_exact(dp)) {
            dst.iter_mut().zip(src).for_each(|(x, y)| *x += y);
        }
    }
}

/// The non-finite tile: the three accumulations over allowed pairs only.
fn scalar_accumulate(
    ctx: &Ctx<'_>,
    t: &mut Tiles,
    (b, h, i0, nr): (usize, usize, usize, usize),
    (j0, nk): (usize, usize),
    dout: &[f32],
    dq_rows: &mut [f32],
) {
    let p = ctx.args.problem();
    let d = p.head_dim;
    let (dp, lds) = (ctx.tiling.row_len(d), ctx.tiling.score_ld());
    let sc = p.scale;
    for r in 0..nr {
        let row = Row { b, h, i: i0 + r, lse: 0.0, delta: 0.0, range: ctx.ranges[b * p.seq_q + i0 + r] };
        for c in 0..nk {
            if !allowed(&ctx.mods, &row, j0 + c) {
                continue;
            }
            let (pij, ds) = (t.s[r * lds + c], t.dp[r * lds + c] * sc);
            for x in 0..d {
                t.dv[c * dp + x] += pij * dout[r * d + x];
                t.dk[c * dp + x] += ds * t.q[r * dp + x];
                dq_rows[r * d + x] += ds * t.k[c * dp + x];
            }
        }
    }
}
