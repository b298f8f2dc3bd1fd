//! Whole-head packing: per (batch, KV head) K is packed once into Kᵀ panels and V into
//! zero-padded rows (f16/bf16 widened to f32 while packing), shared by every query head of the
//! GQA group. Heads are packed in waves (enough to keep every thread busy, up to 32 MiB of
//! panels, fewer — down to one — when the memory budget is tight); then all query blocks of the
//! wave run in parallel, each streaming L2-sized key tiles.
//!
//! Memory: O(N_k·D) per KV head in flight plus O(block·D) scratch per thread.

use super::block::{BlockSpec, Scratch, block_tasks, run_query_block, scratch_bytes, tile_keys};
use super::modify::{CallMods, zero_unused_values};
use super::{Plan, bf16};
use crate::attention::AttnArgs;
use crate::budget::check_budget;
use crate::error::Result;
use crate::problem::Problem;
use crate::row_layout::Operand;
use crate::simd::Isa;
use crate::simd::flash::{KernelShape, pack_k, pack_v, padded_dim};
use rayon::prelude::*;

/// One KV head's packed K/V: f32 panels, or bf16 pairs for the AVX512_BF16 kernel.
enum Packed {
    /// K panels, V rows, the packed key count (short of N_k when seqused_k cuts it) and the
    /// keys whose V row is not finite.
    F32(Vec<f32>, Vec<f32>, usize, Vec<usize>),
    Bf16(bf16::Packed),
}

/// Query rows per block.
fn block_rows(shape: KernelShape) -> usize {
    16 * shape.mr
}

/// (packed K/V bytes of one KV head, scratch bytes of every thread of the current pool).
fn wave_bytes(p: &Problem, isa: Isa) -> (u64, u64) {
    let (d, shape) = (p.head_dim, isa.shape());
    let packed_keys = p.seq_k.div_ceil(shape.kp) * shape.kp;
    let per_head = match bf16::applies(isa, p) {
        Some(_) => bf16::head_bytes(p, shape.kp),
        None => (packed_keys as u64).saturating_mul(((d + padded_dim(d)) * 4) as u64),
    };
    let threads = rayon::current_num_threads().max(1) as u64;
    let scratch = threads.saturating_mul(scratch_bytes(block_rows(shape), d, shape.mr, tile_keys(d, shape.kp)));
    (per_head, scratch)
}

/// One KV head's panels plus every thread's scratch: the waves shrink to this before refusing.
pub(super) fn min_bytes(p: &Problem, isa: Isa) -> Option<u64> {
    let (per_head, scratch) = wave_bytes(p, isa);
    per_head.checked_add(scratch)
}

pub(super) fn run(plan: &Plan<'_>, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
    let p = args.problem();
    let (isa, shape) = (plan.isa, plan.isa.shape());
    let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
    let g = p.group_size();
    let bq = block_rows(shape);
    let tile = tile_keys(d, shape.kp);
    let nkv = p.batch * p.kv_heads;
    let threads = rayon::current_num_threads().max(1);
    let tasks_per_kv = g * nq.div_ceil(bq);
    let (per_head, scratch) = wave_bytes(p, isa);
    let bf16_kernel = bf16::applies(isa, p);
    // KV heads packed per wave: enough to keep every thread busy, and up to 32 MiB of
    // packed panels so small heads do not pay one pool barrier each.
    let by_mem = ((32u64 << 20) / per_head.max(1)) as usize;
    let wanted = threads.max((8 * threads).div_ceil(tasks_per_kv)).max(by_mem).min(nkv).max(1);
    // Fewer heads in flight (down to one) rather than refusing when the budget is tight.
    let fits = (crate::budget::mem_budget().saturating_sub(scratch) / per_head.max(1)) as usize;
    let inflight = wanted.min(fits).max(1);
    let need = (inflight as u64).checked_mul(per_head).and_then(|b| b.checked_add(scratch));
    check_budget(plan.name, "packed K/V panels of the KV heads in flight", need)?;
    let mods = CallMods::new(args);

    let heads = Waves { nkv, inflight, group: g, nq, d, bq };
    let pack = |kvh: usize| {
        let (b, kg) = (kvh / p.kv_heads, kvh % p.kv_heads);
        if bf16_kernel.is_some() {
            return Packed::Bf16(bf16::pack_head(args, b, kg, shape.kp));
        }
        let (mut kb, mut vb) = (Vec::new(), Vec::new());
        // Keys past a batch entry's used length are not even read.
        let used = match (&p.mods.seqused_k, &p.mods.varlen) {
            (Some(u), None) => u[b],
            _ => nk,
        };
        let (kr, vr) = (args.head_rows(Operand::K, b, kg), args.head_rows(Operand::V, b, kg));
        let nkeys = pack_k(kr, 0, used, d, shape.kp, &mut kb);
        let bad = pack_v(vr, 0, used, d, shape.kp, &mut vb);
        zero_unused_values(p, b, 0, used, padded_dim(d), &mut vb);
        Packed::F32(kb, vb, nkeys, bad)
    };
    heads.run(out, lse, pack, |(scr, scr16): &mut (Scratch, Scratch<u32>), packed, bh, bi, o, l| {
        let (nkeys, vbad) = match packed {
            Packed::F32(_, _, n, bad) => (*n, &bad[..]),
            Packed::Bf16(pk) => (pk.nkeys, &pk.vbad[..]),
        };
        let spec = BlockSpec {
            isa,
            shape,
            problem: p,
            q: args.head_rows(Operand::Q, bh / p.heads, bh % p.heads),
            bh,
            i0: bi * bq,
            kbase: 0,
            range: &*plan.range,
            nkeys,
            vbad,
            tile,
            mods: Some(&mods),
        };
        match (packed, bf16_kernel) {
            (Packed::F32(kb, vb, ..), _) => run_query_block(&spec, kb, vb, scr, o, l),
            (Packed::Bf16(pk), Some(t)) => bf16::run_query_block(t, &spec, pk, scr16, o, l),
            (Packed::Bf16(_), None) => unreachable!("bf16 panels are packed only with the bf16 kernel"),
        }
    });
    Ok(())
}

/// The wave loop of the whole-head runners (this one and [`super::rows`]): KV heads
/// `[0, nkv)` (flattened b·H_kv + h) in waves of `inflight`, each wave's heads packed in
/// parallel, then every (query head, query block) of the wave run in parallel on the packed
/// panels of its KV head. Output and LSE are `(B, H, N_q, ·)`, query head `bh` of KV head
/// `bh / group`.
pub(super) struct Waves {
    pub nkv: usize,
    pub inflight: usize,
    pub group: usize,
    pub nq: usize,
    pub d: usize,
    /// Query rows per block.
    pub bq: usize,
}

impl Waves {
    /// `pack(kvh)` packs one KV head; `block(scratch, packed, bh, block index, out rows, lse rows)`
    /// runs one query block on its KV head's panels, with per-thread `scratch`.
    pub fn run<P: Send + Sync, S: Default + Send>(
        &self,
        out: &mut [f32],
        mut lse: Option<&mut [f32]>,
        pack: impl Fn(usize) -> P + Sync,
        block: impl Fn(&mut S, &P, usize, usize, &mut [f32], Option<&mut [f32]>) + Sync,
    ) {
        let (g, nq, d) = (self.group, self.nq, self.d);
        for w0 in (0..self.nkv).step_by(self.inflight.max(1)) {
            let w1 = (w0 + self.inflight.max(1)).min(self.nkv);
            let packed: Vec<P> = (w0..w1).into_par_iter().map(&pack).collect();
            let o_wave = &mut out[w0 * g * nq * d..w1 * g * nq * d];
            let l_wave = lse.as_deref_mut().map(|l| &mut l[w0 * g * nq..w1 * g * nq]);
            block_tasks(o_wave, l_wave, nq, d, self.bq)
                .into_par_iter()
                .for_each_init(S::default, |scr, (hi, bi, o, l)| block(scr, &packed[hi / g], w0 * g + hi, bi, o, l));
        }
    }
}
