//! One query block on packed K/V: the step both packing strategies share. Loads Q, builds each
//! row's key range relative to the packed panels, runs the ISA kernel (scores, online softmax,
//! P·V) and normalizes into the output rows and LSE.

use crate::problem::Problem;
use crate::simd::Isa;
use crate::simd::flash::{BlockJob, KernelShape, finish_rows, pack_q, padded_dim};
use crate::tensor::TensorRef;

use super::RowRange;

/// Keys per L2 tile: K and V panels of one tile take about 192 KiB.
pub(super) fn tile_keys(d: usize, kp: usize) -> usize {
    let dp = padded_dim(d);
    let keys = (24 * 1024 / dp).clamp(kp, 1024);
    (keys / kp * kp).max(kp)
}

/// Per-thread scratch reused across query blocks.
#[derive(Default)]
pub(super) struct Scratch {
    q: Vec<f32>,
    ranges: Vec<(usize, usize)>,
    acc: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    pub(super) kpack: Vec<f32>,
    pub(super) vpack: Vec<f32>,
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
    pub q: TensorRef<'a>,
    /// Query head (flattened b·H + h) and first row of the block.
    pub bh: usize,
    pub i0: usize,
    /// Packed key 0 is absolute key `kbase`.
    pub kbase: usize,
    /// Row `i`'s allowed keys `[lo, hi)` in absolute key indices (`Problem::key_range` or a
    /// narrower pattern such as `local-block`'s).
    pub range: &'a RowRange<'a>,
    pub nkeys: usize,
    pub tile: usize,
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
    let p = spec.problem;
    let d = p.head_dim;
    let rows = out.len() / d;
    let rows_pad = rows.div_ceil(spec.shape.mr) * spec.shape.mr;
    pack_q(spec.q, (spec.bh * p.seq_q + spec.i0) * d, rows, rows_pad, d, &mut scr.q);
    scr.ranges.clear();
    for i in spec.i0..spec.i0 + rows {
        let (lo, hi) = (spec.range)(i);
        let (lo, hi) = (lo.max(spec.kbase) - spec.kbase, hi.max(spec.kbase) - spec.kbase);
        scr.ranges.push(if lo < hi { (lo, hi) } else { (0, 0) });
    }
    // Pad rows copy the last real row's band so they never force masking; their output is dropped.
    let last = scr.ranges[rows - 1];
    scr.ranges.resize(rows_pad, last);
    let dp = padded_dim(d);
    scr.acc.resize(rows_pad * dp, 0.0);
    scr.s.resize(spec.shape.mr * spec.tile, 0.0);
    scr.m.resize(rows_pad, 0.0);
    scr.l.resize(rows_pad, 0.0);
    let mut job = BlockJob {
        d,
        q: &scr.q,
        scale_log2: p.scale * std::f32::consts::LOG2_E,
        ranges: &scr.ranges,
        kpack,
        vpack,
        nkeys: spec.nkeys,
        tile: spec.tile,
        acc: &mut scr.acc,
        s: &mut scr.s,
        m: &mut scr.m,
        l: &mut scr.l,
    };
    spec.isa.run_block(&mut job);
    finish_rows(&scr.acc, &scr.m, &scr.l, d, out, lse);
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
