//! bf16 prefill for whole-head packing: with bf16 inputs on [`Isa::Avx512Bf16`], each wave
//! packs K and V as bf16 pairs (half the bytes of the f32 panels) and query blocks run the
//! `vdpbf16ps` block kernel ([`crate::simd::bf16_block`]); everything else (waves, blocks,
//! row ranges, normalization) is the f32 runner's. Bitwise deterministic like it.

use super::block::BlockSpec;
use crate::attention::AttnArgs;
use crate::problem::{DType, Problem};
use crate::simd::Isa;
use crate::simd::bf16::Avx512Bf16;
use crate::simd::bf16_block::{Bf16BlockJob, KP, MR, pack_k_pairs, pack_q_pairs, pack_v_pairs, process};
use crate::simd::flash::{finish_rows, padded_dim};
use crate::tensor::TensorRef;

/// The bf16 kernel's token when `isa` and the inputs call for it.
/// The bf16 block kernel has no score-modifier step: problems with modifiers take the f32 path.
pub(super) fn applies(isa: Isa, p: &Problem) -> Option<Avx512Bf16> {
    let plain = p.mods.active().is_empty();
    (plain && isa == Isa::Avx512Bf16 && p.dtype == DType::BF16 && isa.shape().mr == MR && isa.shape().kp == KP)
        .then(Avx512Bf16::new)
        .flatten()
}

/// Bytes of one packed KV head (K pairs plus V pairs).
pub(super) fn head_bytes(p: &Problem) -> u64 {
    let nkeys = p.seq_k.div_ceil(KP) * KP;
    (nkeys as u64).saturating_mul(((p.head_dim.div_ceil(2) + padded_dim(p.head_dim) / 2) * 4) as u64)
}

/// One KV head packed as bf16 pairs.
pub(super) struct Packed {
    k: Vec<u32>,
    v: Vec<u32>,
    /// Keys whose V row is not finite.
    vbad: Vec<usize>,
}

/// Packs all keys of the KV head whose key 0 is element `base`.
pub(super) fn pack_head(args: &AttnArgs<'_>, base: usize) -> Packed {
    let (p, mut k, mut v, mut vbad) = (args.problem(), Vec::new(), Vec::new(), Vec::new());
    if let (TensorRef::BF16(ks), TensorRef::BF16(vs)) = (args.k(), args.v()) {
        pack_k_pairs(ks, base, 0, p.seq_k, p.head_dim, &mut k);
        vbad = pack_v_pairs(vs, base, 0, p.seq_k, p.head_dim, &mut v);
    }
    Packed { k, v, vbad }
}

/// Per-thread scratch of the bf16 block kernel.
#[derive(Default)]
pub(super) struct Scratch {
    q: Vec<u32>,
    ranges: Vec<(usize, usize)>,
    acc: Vec<f32>,
    s: Vec<f32>,
    p: Vec<u32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

/// The bf16 twin of `block::run_query_block` (same row ranges, same normalization).
pub(super) fn run_query_block(
    t: Avx512Bf16,
    spec: &BlockSpec<'_>,
    packed: &Packed,
    scr: &mut Scratch,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let TensorRef::BF16(q) = spec.q else { unreachable!("chosen for bf16 inputs only") };
    let (p, d) = (spec.problem, spec.problem.head_dim);
    let rows = out.len() / d;
    let rows_pad = rows.div_ceil(MR) * MR;
    pack_q_pairs(q, (spec.bh * p.seq_q + spec.i0) * d, rows, rows_pad, d, &mut scr.q);
    scr.ranges.clear();
    let b = spec.bh / p.heads;
    scr.ranges.extend((spec.i0..spec.i0 + rows).map(|i| {
        let (lo, hi) = (spec.range)(b, i);
        if lo < hi { (lo, hi) } else { (0, 0) }
    }));
    // Pad rows copy the last real row's band so they never force masking; their output is dropped.
    let last = scr.ranges[rows - 1];
    scr.ranges.resize(rows_pad, last);
    scr.acc.resize(rows_pad * padded_dim(d), 0.0);
    scr.s.resize(MR * spec.tile, 0.0);
    scr.p.resize(MR * spec.tile / 2, 0);
    scr.m.resize(rows_pad, 0.0);
    scr.l.resize(rows_pad, 0.0);
    let mut job = Bf16BlockJob {
        d,
        q: &scr.q,
        scale_log2: p.scale * std::f32::consts::LOG2_E,
        ranges: &scr.ranges,
        kpack: &packed.k,
        vpack: &packed.v,
        vbad: &packed.vbad,
        nkeys: spec.nkeys,
        tile: spec.tile,
        acc: &mut scr.acc,
        s: &mut scr.s,
        p: &mut scr.p,
        m: &mut scr.m,
        l: &mut scr.l,
    };
    process(t, &mut job);
    finish_rows(&scr.acc, &scr.m, &scr.l, d, out, lse);
}
