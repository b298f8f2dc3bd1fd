//! One query block on packed K/V: the step both packing strategies share. Loads Q, builds each
//! row's key range relative to the packed panels, runs the ISA kernel (scores, online softmax,
//! P·V) and normalizes into the output rows and LSE.

use crate::problem::Problem;
use crate::row_layout::HeadRows;
use crate::simd::Isa;
use crate::simd::flash::{BlockJob, BlockMods, Cover, KernelShape, finish_rows_with_sink, pack_q, padded_dim};
use crate::simd::score_mod::{RowMod, ScoreOnly};

use super::RowRange;
use super::modify::CallMods;

/// Keys per L2 tile: K and V panels of one tile take about 192 KiB.
pub(super) fn tile_keys(d: usize, kp: usize) -> usize {
    let dp = padded_dim(d);
    let keys = (24 * 1024 / dp).clamp(kp, 1024);
    (keys / kp * kp).max(kp)
}

/// Per-thread scratch reused across query blocks, for operands of element type `E` (f32, or
/// bf16 pairs as `u32`).
#[derive(Default)]
pub(super) struct Scratch<E = f32> {
    q: Vec<E>,
    ranges: Vec<(usize, usize)>,
    acc: Vec<f32>,
    s: Vec<f32>,
    /// P as bf16 pairs (pair operands only).
    p: Vec<u32>,
    m: Vec<f32>,
    l: Vec<f32>,
    rowmods: Vec<RowMod>,
    pub(super) kpack: Vec<E>,
    pub(super) vpack: Vec<E>,
}

/// Scratch bytes one thread holds for a block of `bq` rows and `tile` keys (packed K/V excluded).
pub(super) fn scratch_bytes(bq: usize, d: usize, mr: usize, tile: usize) -> u64 {
    ((bq * (d + padded_dim(d) + 2) + mr * tile) * 4) as u64
}

/// Where one query block's inputs live and how to tile it.
pub(super) struct BlockSpec<'a> {
    pub isa: Isa,
    pub shape: KernelShape,
    pub problem: &'a Problem,
    /// The rows of query head `bh`.
    pub q: HeadRows<'a>,
    /// Query head (flattened b·H + h) and first row of the block.
    pub bh: usize,
    pub i0: usize,
    /// Packed key 0 is absolute key `kbase`.
    pub kbase: usize,
    /// Row `i`'s allowed keys `[lo, hi)` in absolute key indices (`Problem::key_range` or a
    /// narrower pattern such as `local-block`'s).
    pub range: &'a RowRange<'a>,
    pub nkeys: usize,
    /// Packed keys whose V row is not finite (what `pack_v` returned).
    pub vbad: &'a [usize],
    pub tile: usize,
    /// Score modifiers and sinks of the call (`None`: none set).
    pub mods: Option<&'a CallMods<'a>>,
}

/// Runs one query block on packed K/V: loads Q, builds row ranges, runs the ISA kernel,
/// normalizes into `out` (rows × D) and `lse`.
pub(super) fn run_query_block(
    spec: &BlockSpec<'_>,
    kpack: &[f32],
    vpack: &[f32],
    scr: &mut Scratch,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let load_q = |i0: usize, rows: usize, rows_pad: usize, q: &mut Vec<f32>| {
        pack_q(spec.q, i0, rows, rows_pad, spec.problem.head_dim, q)
    };
    run_block_with(spec, (kpack, vpack, 0), scr, (out, lse), load_q, |job| spec.isa.run_block(job));
}

/// [`run_query_block`] for any operand format: `packed` is (K, V, P scratch length),
/// `load_q(first row, rows, padded rows, dst)` packs the block's queries and `kernel` runs the block loop on the job.
pub(super) fn run_block_with<E: Copy>(
    spec: &BlockSpec<'_>,
    (kpack, vpack, p_len): (&[E], &[E], usize),
    scr: &mut Scratch<E>,
    (out, lse): (&mut [f32], Option<&mut [f32]>),
    load_q: impl FnOnce(usize, usize, usize, &mut Vec<E>),
    kernel: impl FnOnce(&mut BlockJob<'_, E>),
) {
    let p = spec.problem;
    let d = p.head_dim;
    let rows = out.len() / d;
    let rows_pad = rows.div_ceil(spec.shape.mr) * spec.shape.mr;
    let (b, h) = (spec.bh / p.heads, spec.bh % p.heads);
    load_q(spec.i0, rows, rows_pad, &mut scr.q);
    scr.ranges.clear();
    for i in spec.i0..spec.i0 + rows {
        let (lo, hi) = (spec.range)(b, i);
        let (lo, hi) = (lo.max(spec.kbase) - spec.kbase, hi.max(spec.kbase) - spec.kbase);
        scr.ranges.push(if lo < hi { (lo, hi) } else { (0, 0) });
    }
    // Pad rows copy the last real row's band so they never force masking; their output is dropped.
    let last = scr.ranges[rows - 1];
    scr.ranges.resize(rows_pad, last);
    let dp = padded_dim(d);
    scr.acc.resize(rows_pad * dp, 0.0);
    scr.s.resize(spec.shape.mr * spec.tile, 0.0);
    scr.p.resize(p_len, 0);
    scr.m.resize(rows_pad, 0.0);
    scr.l.resize(rows_pad, 0.0);
    let cm = spec.mods.filter(|c| c.p.mods.changes_scores());
    // Softcap, ALiBi and bias need natural-unit scores; a mask alone does not.
    let natural = cm.is_some_and(|c| c.scores);
    let last = spec.i0 + rows - 1;
    scr.rowmods.clear();
    if let Some(c) = cm
        && c.p.mods.alibi_slopes.is_some()
    {
        for r in 0..rows_pad {
            let i = (spec.i0 + r).min(last);
            let diag = p.row_seq(b, i).diag() - spec.kbase as i64;
            scr.rowmods.push(RowMod { slope: p.alibi_slope(b, i, h), diag: diag as f32 });
        }
    }
    let (kbase, i0) = (spec.kbase, spec.i0);
    let pair = |r: usize, key0: usize, with_mask: bool| {
        let c = cm.expect("pair terms only run with modifiers");
        let (i, j0) = ((i0 + r).min(last), kbase + key0);
        c.pair_terms(b, h, i, j0, with_mask).map(|t| (t, p.seq_k - j0))
    };
    let cover = |r0: usize, key0: usize, key1: usize| -> Cover {
        let c = cm.expect("mask cover only runs with modifiers");
        let Some(sm) = c.summary.as_ref() else { return Cover::Partial };
        let ia = i0 + r0;
        sm.cover(c.mask_slice(b, h), ia, (ia + spec.shape.mr).min(last + 1), kbase + key0, (kbase + key1).min(p.seq_k))
    };
    let bm = cm.map(|c| BlockMods {
        score: natural.then_some(ScoreOnly {
            scale: p.scale,
            softcap: p.mods.softcap,
            alibi: p.mods.alibi_slopes.is_some(),
        }),
        rows: &scr.rowmods,
        pair: c.has_pair().then_some(&pair as _),
        panels: c.summary.is_some().then_some(&cover as _),
    });
    let mut job = BlockJob {
        d,
        q: &scr.q,
        scale_log2: if natural { std::f32::consts::LOG2_E } else { p.scale * std::f32::consts::LOG2_E },
        ranges: &scr.ranges,
        kpack,
        vpack,
        vbad: spec.vbad,
        nkeys: spec.nkeys,
        tile: spec.tile,
        acc: &mut scr.acc,
        s: &mut scr.s,
        p: &mut scr.p,
        m: &mut scr.m,
        l: &mut scr.l,
        mods: bm.as_ref(),
    };
    kernel(&mut job);
    finish_rows_with_sink(&scr.acc, &scr.m, &scr.l, d, out, lse, p.sink(h));
}

/// Splits `out` (and `lse`) of consecutive query heads into per-block pieces: item
/// `(head index within the slice, block index, out rows, lse rows)`.
pub(super) type BlockTask<'a> = (usize, usize, &'a mut [f32], Option<&'a mut [f32]>);

pub(super) fn block_tasks<'a>(
    out: &'a mut [f32],
    lse: Option<&'a mut [f32]>,
    nq: usize,
    d: usize,
    bq: usize,
) -> Vec<BlockTask<'a>> {
    let nblocks = nq.div_ceil(bq);
    let outs = out.chunks_mut(nq * d).flat_map(|oh| oh.chunks_mut(bq * d));
    let lses: Vec<Option<&mut [f32]>> = match lse {
        Some(l) => l.chunks_mut(nq).flat_map(|lh| lh.chunks_mut(bq)).map(Some).collect(),
        None => Vec::new(),
    };
    let mut lses = lses.into_iter();
    outs.enumerate().map(|(idx, o)| (idx / nblocks, idx % nblocks, o, lses.next().flatten())).collect()
}
