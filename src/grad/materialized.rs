//! The textbook backward (`sdpa`'s) and the additive bias's gradient pass.
//!
//! `sdpa`'s backward is the materialized computation: per (batch, head) the whole N_q×N_k score
//! matrix S, then P, dP = dO·Vᵀ, dS, and dV = Pᵀ·dO, dK = scale·dSᵀ·Q, dQ = scale·dS·K as five
//! full GEMMs. It is [`super::flash::run`] with a single tile per head
//! ([`super::flash::Tiling::materialized`]), so the two share every line of the math and differ
//! only in memory: O(N_q·N_k) per thread here, checked against the memory budget first.
//!
//! The bias gradient dB (requested, N_q×N_k sized) is a second pass, [`dbias_pass`]: per block of
//! bias rows it recomputes P and dS against every key for each (batch, head) the bias broadcasts
//! over, in a fixed order, and adds dS in. O(pairs·D) time, O(BR·N_k) scratch per thread.

use super::rowstep::{Row, StepMods, row_step};
use super::{Prepared, Saved};
use crate::attention::AttnArgs;
use crate::error::Result;
use crate::linalg::{MatRef, Par, sgemm};
use crate::simd::Isa;
use rayon::prelude::*;

/// Bias rows per task of the dB pass.
const ROWS: usize = 32;

/// Scratch of the dB pass beyond dB itself: f32 copies of K and V, two ROWS×N_k tiles per thread.
pub fn dbias_bytes(p: &crate::problem::Problem) -> Option<u64> {
    let kv = (p.kv_len() as u64).checked_mul(8)?;
    let tiles = ((2 * ROWS + 1) as u64).checked_mul(p.seq_k as u64)?.checked_mul(4)?;
    kv.checked_add(tiles.checked_mul(rayon::current_num_threads() as u64)?)
}

/// dB in the bias's declared broadcast shape, summed over the (batch, head) pairs it broadcasts
/// over in order (b, then h), so the result does not depend on the thread count.
pub fn dbias_pass(
    isa: Isa,
    ranges: &[(usize, usize)],
    args: &AttnArgs<'_>,
    saved: &Saved<'_>,
    prep: &Prepared,
    db: &mut [f32],
) -> Result<()> {
    let p = args.problem();
    let Some(shape) = p.mods.bias else { return Ok(()) };
    let (d, nq, nk) = (p.head_dim, p.seq_q, p.seq_k);
    let (k, v) = (args.k().to_f32_cow(), args.v().to_f32_cow());
    let mods = StepMods::new(args, isa);
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (sl, slice) in db.chunks_mut(nq * nk).enumerate() {
        for (blk, rows) in slice.chunks_mut(ROWS * nk).enumerate() {
            tasks.push((sl, blk * ROWS, rows));
        }
    }
    tasks.into_par_iter().for_each(|(sl, i0, out)| {
        let nr = out.len() / nk;
        let (sb, sh) = (sl / shape.heads, sl % shape.heads);
        let batches: Vec<usize> = if shape.batch == 1 { (0..p.batch).collect() } else { vec![sb] };
        let heads: Vec<usize> = if shape.heads == 1 { (0..p.heads).collect() } else { vec![sh] };
        let (mut q, mut s, mut dp, mut chain) =
            (vec![0.0f32; nr * d], vec![0.0f32; nr * nk], vec![0.0f32; nr * nk], vec![0.0f32; nk]);
        out.fill(0.0);
        for &b in &batches {
            for &h in &heads {
                let row0 = (b * p.heads + h) * nq + i0;
                let kv0 = (b * p.kv_heads + p.kv_head_of(h)) * nk * d;
                args.q().read_f32(row0 * d, &mut q);
                let kt = MatRef::transposed(&k[kv0..kv0 + nk * d], nk, d);
                let vt = MatRef::transposed(&v[kv0..kv0 + nk * d], nk, d);
                let dout = MatRef::row_major(&saved.d_out[row0 * d..(row0 + nr) * d], nr, d);
                // Shapes are consistent by construction.
                let _ = sgemm(MatRef::row_major(&q, nr, d), kt, &mut s, nk, p.scale, 0.0, Par::Serial);
                let _ = sgemm(dout, vt, &mut dp, nk, 1.0, 0.0, Par::Serial);
                for r in 0..nr {
                    let row = Row {
                        b,
                        h,
                        i: i0 + r,
                        lse: saved.lse[row0 + r],
                        delta: prep.delta[row0 + r],
                        range: ranges[b * nq + i0 + r],
                    };
                    let (sr, dr) = (&mut s[r * nk..(r + 1) * nk], &mut dp[r * nk..(r + 1) * nk]);
                    row_step(&mods, &row, 0, sr, dr, &mut chain, true);
                }
                out.iter_mut().zip(&dp).for_each(|(o, g)| *o += g);
            }
        }
    });
    Ok(())
}
