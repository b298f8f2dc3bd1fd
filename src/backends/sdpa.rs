//! `sdpa`: exact scaled dot-product attention exactly as the textbook writes it.
//!
//! Algorithm: per (batch, head), S = scale·Q·Kᵀ (one f32 GEMM), a row softmax over each row's
//! key band (masked entries get weight 0), then O = P·V (a second GEMM). The N_q×N_k score
//! matrix is materialized in f32: this is the "vanilla" baseline the tiled and approximate
//! backends are measured against.
//!
//! Complexity: O(B·H·N_q·N_k·D) time, O(N_q·N_k) extra memory per (batch, head) in flight.
//! Parallelism: (batch, head) pairs across rayon when there are at least as many as threads,
//! otherwise heads in turn with each GEMM spread over the pool.
//!
//! Modifiers ([`crate::modifiers`]): each row's band is [`Problem::key_range_at`], scores go
//! through the same score step as the tiled kernels ([`crate::simd::score_mod`], portable
//! path), and a sink joins the max and the denominator. A boolean mask is applied, not skipped.
//!
//! Caveats: the masked GEMM still computes masked scores (the textbook way), so causal runs do
//! full work; the problem is refused up front with `MemoryBudget` when the score matrices in
//! flight would exceed [`crate::budget::mem_budget`]. f16/bf16 inputs are widened per head.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::grad::flash::Tiling;
use crate::grad::{GradsMut, Saved};
use crate::linalg::{MatRef, Par, sgemm};
use crate::modifiers::PairShape;
use crate::problem::Problem;
use crate::simd::Isa;
use crate::simd::scalar::Portable;
use crate::simd::score_mod::{PairTerms, RowMod, ScoreOnly, modify_slice};
use rayon::prelude::*;

#[derive(Debug, Default, Clone, Copy)]
pub struct Sdpa;

impl Sdpa {
    /// How many (batch, head) slices run at once, and so hold a score matrix at once.
    fn heads_in_flight(p: &Problem) -> usize {
        (p.batch * p.heads).min(rayon::current_num_threads()).max(1)
    }

    /// Bytes of working memory `compute` allocates: the score matrix plus widened Q/K/V slices,
    /// per head in flight. `None` on overflow.
    pub fn score_bytes(p: &Problem) -> Option<u64> {
        let scores = (p.seq_q as u64).checked_mul(p.seq_k as u64)?;
        let widened = (p.seq_q as u64 + 2 * p.seq_k as u64).checked_mul(p.head_dim as u64)?;
        scores.checked_add(widened)?.checked_mul(4)?.checked_mul(Self::heads_in_flight(p) as u64)
    }
}

/// The V rows of one head that hold a NaN or ±∞, as (key, row); each is zeroed in `v` (N_k×D).
///
/// The P·V GEMM multiplies every P entry, and a dropped pair's P = 0 times NaN or ∞ is NaN, which
/// would reach rows that cannot see the key (the NaN/Inf policy in `crate::attention` forbids
/// it). With those rows zeroed the GEMM adds exact zeros for them, and [`add_nonfinite`] adds
/// `p·v` back for the pairs that are not dropped. Finite V (the normal case) costs one scan.
fn take_nonfinite(v: &mut [f32], d: usize) -> Vec<(usize, Vec<f32>)> {
    let mut bad = Vec::new();
    for (j, row) in v.chunks_exact_mut(d).enumerate() {
        if !crate::simd::masked_pv::all_finite(row) {
            bad.push((j, row.to_vec()));
            row.fill(0.0);
        }
    }
    bad
}

/// `o[i] += P[i, j]·v_j` for every pair of row `i` and a key `j` of `bad` that row `i` sees (in
/// its band and, with a boolean mask, allowed by it): the counterpart of [`take_nonfinite`].
/// Rows left empty (LSE = −∞: no allowed key, or every allowed score −∞) stay O = 0, as in
/// the reference.
fn add_nonfinite(
    args: &AttnArgs<'_>,
    bh: usize,
    bad: &[(usize, Vec<f32>)],
    scores: &[f32],
    o: &mut [f32],
    lse: &[f32],
) {
    let p = args.problem();
    let (nk, d) = (p.seq_k, p.head_dim);
    let (b, h) = (bh / p.heads, bh % p.heads);
    let mask = args.mask().zip(p.mods.mask);
    for (i, oi) in o.chunks_exact_mut(d).enumerate().filter(|(i, _)| lse[*i] != f32::NEG_INFINITY) {
        let (lo, hi) = p.key_range_at(b, i);
        for (j, vj) in bad.iter().filter(|(j, _)| (lo..hi).contains(j)) {
            if mask.is_some_and(|(m, s)| !m[s.row_offset(p, b, h, i) + j]) {
                continue;
            }
            let pij = scores[i * nk + j];
            oi.iter_mut().zip(vj).for_each(|(x, v)| *x += pij * v);
        }
    }
}

/// One (batch, head) `bh`: S = scale·QKᵀ, score modifiers, banded softmax in place, O = PV.
/// Returns nothing; writes `o` (N_q×D) and `lse` (N_q). `v` has its non-finite rows zeroed and
/// `vbad` holds them ([`take_nonfinite`]).
#[allow(clippy::too_many_arguments)]
fn one_head(
    args: &AttnArgs<'_>,
    bh: usize,
    (q, k, v): (&[f32], &[f32], &[f32]),
    vbad: &[(usize, Vec<f32>)],
    scores: &mut [f32],
    o: &mut [f32],
    lse: &mut [f32],
    par: Par,
) -> Result<()> {
    let p = args.problem();
    let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
    let (b, h) = (bh / p.heads, bh % p.heads);
    sgemm(MatRef::row_major(q, nq, d), MatRef::transposed(k, nk, d), scores, nk, p.scale, 0.0, par)?;
    let score = ScoreOnly { scale: 1.0, softcap: p.mods.softcap, alibi: p.mods.alibi_slopes.is_some() };
    let sink = p.sink(h);
    for (i, (row, l)) in scores.chunks_mut(nk).zip(lse.iter_mut()).enumerate() {
        let (lo, hi) = p.key_range_at(b, i);
        let band = &mut row[lo..hi];
        if p.mods.changes_scores() {
            // The same score step as the tiled kernel (crate::simd::score_mod), on this row.
            let rm = RowMod { slope: p.alibi_slope(b, i, h), diag: (p.row_seq(b, i).diag() - lo as i64) as f32 };
            modify_slice(Portable, &score, rm, band);
            let pair = |s: PairShape| s.row_offset(p, b, h, i) + lo;
            let terms = PairTerms {
                bias: args.bias().zip(p.mods.bias).map(|(t, s)| (t, pair(s))),
                mask: args.mask().zip(p.mods.mask).map(|(m, s)| &m[pair(s)..]),
            };
            terms.apply(Portable, band, hi - lo);
        }
        // NaN-propagating max: a NaN score must poison its row, not vanish (`f32::max` drops it).
        let m = band.iter().fold(f32::NEG_INFINITY, |m, &s| if s.is_nan() || m.is_nan() { f32::NAN } else { m.max(s) });
        // A sink joins the max and the denominator with no value.
        let m = match sink {
            Some(sg) if !m.is_nan() => m.max(sg),
            _ => m,
        };
        if m == f32::NEG_INFINITY {
            // No allowed key, or every allowed score −∞: O = 0, LSE = −∞.
            row.fill(0.0);
            *l = f32::NEG_INFINITY;
            continue;
        }
        // The shared SIMD exp (one code path for every backend's exponentials).
        crate::simd::exp_shifted(band, m);
        let sum: f32 = band.iter().sum::<f32>() + sink.map_or(0.0, |sg| (sg - m).exp());
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        band.iter_mut().for_each(|s| *s *= inv);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        *l = if sum > 0.0 || sum.is_nan() { m + sum.ln() } else { f32::NEG_INFINITY };
    }
    sgemm(MatRef::row_major(scores, nq, nk), MatRef::row_major(v, nk, d), o, d, 1.0, 0.0, par)?;
    add_nonfinite(args, bh, vbad, scores, o, lse);
    Ok(())
}

impl Attention for Sdpa {
    fn name(&self) -> &str {
        "sdpa"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        Self::score_bytes(p)
    }
    /// After the tiled kernels: it materializes the N_q×N_k scores.
    fn auto_rank(&self, _problem: &Problem) -> Option<u32> {
        Some(30)
    }

    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    /// The materialized N_q×N_k S and dS of one head per thread (`crate::grad::materialized`).
    fn backward_working_bytes(&self, p: &Problem) -> Option<u64> {
        Tiling::materialized(p).working_bytes(p)
    }
    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        let p = args.problem();
        let isa = Isa::selected().map_err(|reason| AttnError::Unavailable { backend: self.name().into(), reason })?;
        crate::grad::run_tiled(
            self.name(),
            isa,
            &|b, i| p.key_range_at(b, i),
            Tiling::materialized(p),
            args,
            saved,
            grads,
        )
    }

    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        check_budget(self.name(), "the materialized N_q×N_k score matrices", Self::score_bytes(p))?;
        let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
        let mut lse_scratch;
        let lse: &mut [f32] = match lse {
            Some(l) => l,
            None => {
                lse_scratch = vec![0.0f32; p.lse_len()];
                &mut lse_scratch
            }
        };
        let run = |bh: usize, o: &mut [f32], l: &mut [f32], par: Par| -> Result<()> {
            let (b, h) = (bh / p.heads, bh % p.heads);
            let kvh = b * p.kv_heads + p.kv_head_of(h);
            let mut qf = vec![0.0f32; nq * d];
            let mut kf = vec![0.0f32; nk * d];
            let mut vf = vec![0.0f32; nk * d];
            args.q().read_f32(bh * nq * d, &mut qf);
            args.k().read_f32(kvh * nk * d, &mut kf);
            args.v().read_f32(kvh * nk * d, &mut vf);
            let vbad = take_nonfinite(&mut vf, d);
            let mut scores = vec![0.0f32; nq * nk];
            one_head(args, bh, (&qf, &kf, &vf), &vbad, &mut scores, o, l, par)
        };
        let heads = p.batch * p.heads;
        if heads >= rayon::current_num_threads() {
            out.par_chunks_mut(nq * d)
                .zip(lse.par_chunks_mut(nq))
                .enumerate()
                .try_for_each(|(bh, (o, l))| run(bh, o, l, Par::Serial))
        } else {
            out.chunks_mut(nq * d)
                .zip(lse.chunks_mut(nq))
                .enumerate()
                .try_for_each(|(bh, (o, l))| run(bh, o, l, Par::Rayon))
        }
    }
}
