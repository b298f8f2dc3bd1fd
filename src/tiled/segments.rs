//! Segment packing, for narrow bands: each task is a segment of query rows of one head, which
//! packs only the keys its rows can see (`[min lo, max hi)`) into thread-local panels once; its
//! blocks of `8·MR` rows slide over that band as a single tile, and each `MR`-row strip trims its
//! key range to whole panels. Rayon runs every (batch, head, segment) task in one pool pass (no
//! per-head packing waves, no barriers).
//!
//! Memory: one band panel plus block scratch per thread; nothing N_k-sized when the band is
//! bounded on both sides.

use super::Plan;
use super::block::{BlockSpec, Scratch, block_tasks, run_query_block, scratch_bytes};
use super::modify::{CallMods, zero_unused_values};
use crate::attention::AttnArgs;
use crate::budget::check_budget;
use crate::error::Result;
use crate::problem::Problem;
use crate::row_layout::Operand;
use crate::simd::Isa;
use crate::simd::flash::{pack_k, pack_v, padded_dim};
use rayon::prelude::*;

/// Working set with a band of `band` keys: one packed band panel plus block scratch per thread
/// of the current pool.
pub(super) fn bytes(p: &Problem, isa: Isa, band: usize) -> Option<u64> {
    let shape = isa.shape();
    let d = p.head_dim;
    let band = band.min(p.seq_k).div_ceil(shape.kp) * shape.kp + shape.kp;
    let per_thread = scratch_bytes(8 * shape.mr, d, shape.mr, band) + (band * (d + padded_dim(d)) * 4) as u64;
    per_thread.checked_mul(rayon::current_num_threads().max(1) as u64)
}

pub(super) fn run(
    plan: &Plan<'_>,
    args: &AttnArgs<'_>,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    seg: usize,
    band: usize,
) -> Result<()> {
    let p = args.problem();
    let (isa, shape) = (plan.isa, plan.isa.shape());
    let (nq, d) = (p.seq_q, p.head_dim);
    check_budget(plan.name, "per-thread band panels", bytes(p, isa, band))?;
    let bq = 8 * shape.mr;
    let range = &*plan.range;
    let mods = CallMods::new(args);

    let tasks = block_tasks(out, lse, nq, d, seg);
    tasks.into_par_iter().for_each_init(Scratch::default, |scr, (bh, si, o, mut l)| {
        let i0 = si * seg;
        let rows = o.len() / d;
        let (b, h) = (bh / p.heads, bh % p.heads);
        let (mut lo, mut hi) = (usize::MAX, 0);
        for i in i0..i0 + rows {
            let (a, b) = range(b, i);
            if a < b {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if lo >= hi {
            (lo, hi) = (0, 0);
        }
        let g = p.kv_head_of(h);
        // Pack the segment's band once; its blocks slide over it.
        let mut kpack = std::mem::take(&mut scr.kpack);
        let mut vpack = std::mem::take(&mut scr.vpack);
        let nkeys = pack_k(args.head_rows(Operand::K, b, g), lo, hi, d, shape.kp, &mut kpack);
        let vbad = pack_v(args.head_rows(Operand::V, b, g), lo, hi, d, shape.kp, &mut vpack);
        zero_unused_values(p, b, lo, hi, padded_dim(d), &mut vpack);
        for (bi, ob) in o.chunks_mut(bq * d).enumerate() {
            let lb = l.as_deref_mut().map(|l| &mut l[bi * bq..bi * bq + ob.len() / d]);
            let spec = BlockSpec {
                isa,
                shape,
                problem: p,
                q: args.head_rows(Operand::Q, b, h),
                bh,
                i0: i0 + bi * bq,
                kbase: lo,
                range,
                nkeys,
                vbad: &vbad,
                tile: nkeys.max(shape.kp),
                mods: Some(&mods),
            };
            run_query_block(&spec, &kpack, &vpack, scr, ob, lb);
        }
        scr.kpack = kpack;
        scr.vpack = vpack;
    });
    Ok(())
}
