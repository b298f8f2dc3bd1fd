//! bf16 prefill for whole-head packing: with bf16 inputs on [`Isa::Avx512Bf16`], each wave
//! packs K and V as bf16 pairs (half the bytes of the f32 panels) and query blocks run the
//! shared block loop on `vdpbf16ps` operands ([`crate::simd::bf16_block`]); everything else
//! (waves, blocks, row ranges, score modifiers, masks, sinks, normalization) is the f32
//! runner's, so problems with modifiers stay on the bf16 kernel. Bitwise deterministic like it.

use super::block::{BlockSpec, Scratch, run_block_with};
use super::modify::unused_spans;
use crate::attention::AttnArgs;
use crate::problem::{DType, Problem};
use crate::row_layout::Operand;
use crate::simd::Isa;
use crate::simd::bf16::Avx512Bf16;
use crate::simd::bf16_block::{KP, MR, process};
use crate::simd::bf16_pairs::{pack_k_pairs, pack_q_pairs, pack_v_pairs, zero_value_pair_half};
use crate::simd::flash::padded_dim;
use crate::tensor::TensorRef;

/// Which pair kernel runs.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kernel {
    /// `vdpbf16ps` (AVX512_BF16).
    Vdp(Avx512Bf16),
    /// The portable reference of the pair format (tests only: it checks the pair format's block
    /// loop on CPUs without AVX512_BF16).
    #[cfg(test)]
    Emulated,
}

#[cfg(test)]
thread_local! {
    /// Set by tests: bf16 problems take the emulated pair kernel on whatever ISA runs.
    pub(super) static EMULATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The pair kernel when `isa` and the inputs call for it (bf16 inputs, any modifiers).
pub(super) fn applies(isa: Isa, p: &Problem) -> Option<Kernel> {
    if p.dtype != DType::BF16 {
        return None;
    }
    #[cfg(test)]
    if EMULATE.with(|e| e.get()) {
        return Some(Kernel::Emulated);
    }
    (isa == Isa::Avx512Bf16 && isa.shape().mr == MR && isa.shape().kp == KP)
        .then(Avx512Bf16::new)
        .flatten()
        .map(Kernel::Vdp)
}

/// Bytes of one packed KV head (K pairs plus V pairs) with `kp` keys per panel.
pub(super) fn head_bytes(p: &Problem, kp: usize) -> u64 {
    let nkeys = p.seq_k.div_ceil(kp) * kp;
    (nkeys as u64).saturating_mul(((p.head_dim.div_ceil(2) + padded_dim(p.head_dim) / 2) * 4) as u64)
}

/// One KV head packed as bf16 pairs.
pub(super) struct Packed {
    k: Vec<u32>,
    v: Vec<u32>,
    /// Packed keys (short of N_k when seqused_k cuts it).
    pub nkeys: usize,
    /// Keys whose V row is not finite.
    pub vbad: Vec<usize>,
}

/// Packs the keys of KV head `g` of batch entry `b` (any row layout), panels of `kp` keys; as the f32 packing, keys past a batch entry's used length are not read, and
/// unused keys inside packed varlen sequences get zero values.
pub(super) fn pack_head(args: &AttnArgs<'_>, b: usize, g: usize, kp: usize) -> Packed {
    let (p, mut k, mut v, mut vbad, mut nkeys) = (args.problem(), Vec::new(), Vec::new(), Vec::new(), 0);
    let used = match (&p.mods.seqused_k, &p.mods.varlen) {
        (Some(u), None) => u[b],
        _ => p.seq_k,
    };
    let (kr, vr) = (args.head_rows(Operand::K, b, g), args.head_rows(Operand::V, b, g));
    if let (TensorRef::BF16(ks), TensorRef::BF16(vs)) = (kr.src, vr.src) {
        nkeys = pack_k_pairs(ks, (kr.base, kr.stride), 0, used, p.head_dim, kp, &mut k);
        vbad = pack_v_pairs(vs, (vr.base, vr.stride), 0, used, p.head_dim, kp, &mut v);
        let dp = padded_dim(p.head_dim);
        for (lo, hi) in unused_spans(p, b, 0, used) {
            (lo..hi).for_each(|j| zero_value_pair_half(&mut v, j, dp));
        }
    }
    Packed { k, v, nkeys, vbad }
}

/// The bf16 twin of `block::run_query_block` (same row ranges, modifiers and normalization).
pub(super) fn run_query_block(
    kernel: Kernel,
    spec: &BlockSpec<'_>,
    packed: &Packed,
    scr: &mut Scratch<u32>,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let TensorRef::BF16(q) = spec.q.src else { unreachable!("chosen for bf16 inputs only") };
    let (d, qb, qs) = (spec.problem.head_dim, spec.q.base, spec.q.stride);
    let load_q = |i0: usize, rows: usize, rows_pad: usize, dst: &mut Vec<u32>| {
        pack_q_pairs(q, (qb + i0 * qs, qs), rows, rows_pad, d, dst)
    };
    let p_len = spec.shape.mr * spec.tile / 2;
    run_block_with(spec, (&packed.k, &packed.v, p_len), scr, (out, lse), load_q, |job| match kernel {
        Kernel::Vdp(t) => process(t, job),
        #[cfg(test)]
        Kernel::Emulated => emulated(spec.shape, job),
    });
}

/// The portable pair kernel at the ISA's strip and panel sizes.
#[cfg(test)]
fn emulated(shape: crate::simd::flash::KernelShape, job: &mut crate::simd::flash::BlockJob<'_, u32>) {
    use crate::simd::bf16_pairs::PairEmu;
    use crate::simd::flash::block_loop;
    use crate::simd::scalar::Portable;
    match (shape.mr, shape.kp) {
        (6, 32) => block_loop::<PairEmu<Portable, 32>, 6>(PairEmu(Portable), job),
        (6, 16) => block_loop::<PairEmu<Portable, 16>, 6>(PairEmu(Portable), job),
        (6, 8) => block_loop::<PairEmu<Portable, 8>, 6>(PairEmu(Portable), job),
        (4, 8) => block_loop::<PairEmu<Portable, 8>, 4>(PairEmu(Portable), job),
        other => unreachable!("no kernel shape {other:?}"),
    }
}
