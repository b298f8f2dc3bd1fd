//! One rank's work on one K/V block: its query chunks against the block's key chunks with
//! `flash-cpu`, forward (partials merged by LSE) and backward (gradient contributions summed).
//!
//! A chunk pair is classified by the global band ([`Problem::key_range`]) of each of its query
//! rows, clipped to the key chunk ([`pair`]): [`Pair::Skip`] when no row keeps a key of the chunk
//! (causal pairs above the diagonal, windowed pairs out of reach), [`Pair::Full`] when every row
//! keeps every key (no mask to apply), [`Pair::Masked`] otherwise. A computed pair is the
//! sub-problem ([`sub_problem`]) of `q.len` rows and `k.len` keys with a diagonal shift that puts
//! each row's diagonal at its global key (`δ = q.start − k.start − (k.len − q.len)`), so causal,
//! windows and ALiBi keep their global positions; a Full pair drops causal and window (they
//! mask nothing there) but keeps ALiBi. Pairs run in a fixed order (query chunk, then key
//! chunk), so the sums are reproducible. Cost: O(q.len) to classify; the pair's allowed pairs
//! × 4·D FLOPs forward, plus O(rows·D) for each merge.

use super::Chunk;
use crate::attention::{Attention, AttnArgs};
use crate::backends::flash_cpu::FlashCpu;
use crate::error::Result;
use crate::grad::{GradsMut, Saved};
use crate::lse::merge_partials;
use crate::problem::Problem;

/// What the global band leaves of a (query chunk, key chunk) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// Every row attends every key of the chunk.
    Full,
    /// Some (row, key) pairs are masked, some not.
    Masked,
    /// No row attends any key of the chunk.
    Skip,
}

/// Classifies the pair by the global band of each query row of `q` (`p` is the whole,
/// self-attention problem) clipped to the keys of `k`.
pub fn pair(p: &Problem, q: Chunk, k: Chunk) -> Pair {
    if !p.is_masked() {
        return Pair::Full;
    }
    let (mut any, mut all) = (false, true);
    for i in q.start..q.end() {
        let (lo, hi) = p.key_range(i);
        let (lo, hi) = (lo.max(k.start), hi.min(k.end()));
        any |= lo < hi;
        all &= lo == k.start && hi == k.end();
    }
    match (any, all) {
        (false, _) => Pair::Skip,
        (true, true) => Pair::Full,
        (true, false) => Pair::Masked,
    }
}

/// The sub-problem of one pair: the global problem's heads, scale, softcap and ALiBi, no sinks
/// (they are added once, after the merge), causal and window only when [`Pair::Masked`], and
/// the diagonal shift that keeps every row's diagonal at its global key.
pub fn sub_problem(p: &Problem, q: Chunk, k: Chunk, kind: Pair) -> Problem {
    let masked = kind == Pair::Masked;
    let mut s = Problem::new(p.batch, p.heads, q.len, p.head_dim)
        .with_seq_k(k.len)
        .with_kv_heads(p.kv_heads)
        .with_scale(p.scale)
        .with_causal(masked && p.causal);
    if masked {
        s.window = p.window;
    }
    s.mods.softcap = p.mods.softcap;
    s.mods.alibi_slopes = p.mods.alibi_slopes.clone();
    // Global row g = q.start + i has its diagonal at key g + δ_p (N_q = N_k); locally that is
    // key g + δ_p − k.start = i + (k.len − q.len) + δ.
    s.mods.diag_shift = q.start as i64 - k.start as i64 - (k.len as i64 - q.len as i64) + p.mods.diag_shift;
    s
}

/// Offsets of each chunk's K and V inside a K/V block buffer.
fn kv_offsets(p: &Problem, chunks: &[Chunk]) -> Vec<(usize, usize)> {
    let mut at = 0;
    chunks
        .iter()
        .map(|c| {
            let n = p.batch * p.kv_heads * c.len * p.head_dim;
            let r = (at, n);
            at += 2 * n;
            r
        })
        .collect()
}

/// Offsets of each query chunk's rows (`width` values per row) inside a rank's buffer.
fn q_offsets(p: &Problem, chunks: &[Chunk], width: usize) -> Vec<(usize, usize)> {
    let mut at = 0;
    chunks
        .iter()
        .map(|c| {
            let n = p.batch * p.heads * c.len * width;
            let r = (at, n);
            at += n;
            r
        })
        .collect()
}

/// Work done on one block.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockWork {
    /// Chunk pairs computed.
    pub pairs: usize,
    /// Chunk pairs the band skipped (no row attends any of their keys).
    pub skipped: usize,
}

/// Merges this rank's queries against one K/V block into the accumulators `acc_o`
/// (chunk-major (B,H,len,D)) and `acc_lse` (chunk-major (B,H,len)); an empty accumulator has
/// O = 0, LSE = −∞.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    p: &Problem,
    q_chunks: &[Chunk],
    q: &[f32],
    kv_chunks: &[Chunk],
    kv: &[f32],
    acc_o: &mut [f32],
    acc_lse: &mut [f32],
) -> Result<BlockWork> {
    let engine = FlashCpu::new();
    let (qo, lo, kvo) = (q_offsets(p, q_chunks, p.head_dim), q_offsets(p, q_chunks, 1), kv_offsets(p, kv_chunks));
    let mut work = BlockWork::default();
    for (qi, &qc) in q_chunks.iter().enumerate() {
        for (ki, &kc) in kv_chunks.iter().enumerate() {
            let kind = pair(p, qc, kc);
            if kind == Pair::Skip {
                work.skipped += 1;
                continue;
            }
            let sp = sub_problem(p, qc, kc, kind);
            let (ko, kn) = kvo[ki];
            let args =
                AttnArgs::new(&sp, &q[qo[qi].0..qo[qi].0 + qo[qi].1], &kv[ko..ko + kn], &kv[ko + kn..ko + 2 * kn])?;
            let mut o = vec![0.0f32; sp.out_len()];
            let mut l = vec![0.0f32; sp.lse_len()];
            engine.forward_into(&args, &mut o, Some(&mut l))?;
            let a_o = &mut acc_o[qo[qi].0..qo[qi].0 + qo[qi].1];
            let a_l = &mut acc_lse[lo[qi].0..lo[qi].0 + lo[qi].1];
            merge_partials(a_o, a_l, &o, &l, p.head_dim)?;
            work.pairs += 1;
        }
    }
    Ok(work)
}

/// Adds the problem's sinks, once, to a rank's merged result.
pub fn finish_sinks(p: &Problem, q_chunks: &[Chunk], out: &mut [f32], lse: &mut [f32]) {
    if p.mods.sinks.is_none() {
        return;
    }
    let (qo, lo) = (q_offsets(p, q_chunks, p.head_dim), q_offsets(p, q_chunks, 1));
    for (i, &c) in q_chunks.iter().enumerate() {
        let mut sp = Problem::new(p.batch, p.heads, c.len, p.head_dim);
        sp.mods.sinks = p.mods.sinks.clone();
        crate::lse::add_sinks(&sp, &mut out[qo[i].0..qo[i].0 + qo[i].1], &mut lse[lo[i].0..lo[i].0 + lo[i].1]);
    }
}

/// This rank's saved forward results and output gradient (chunk-major, global O and LSE).
#[derive(Clone, Copy, Debug)]
pub struct Local<'a> {
    pub chunks: &'a [Chunk],
    pub q: &'a [f32],
    pub out: &'a [f32],
    pub lse: &'a [f32],
    pub d_out: &'a [f32],
}

/// Adds this rank's gradient contributions for one K/V block: dQ into `dq` (chunk-major, like
/// Q) and dK/dV into `dkv` (laid out like the block). Given the global O and LSE, each pair's
/// backward is exactly that pair's share of the gradients.
pub fn backward(
    p: &Problem,
    local: &Local<'_>,
    kv_chunks: &[Chunk],
    kv: &[f32],
    dq: &mut [f32],
    dkv: &mut [f32],
) -> Result<BlockWork> {
    let engine = FlashCpu::new();
    let (qo, lo, kvo) =
        (q_offsets(p, local.chunks, p.head_dim), q_offsets(p, local.chunks, 1), kv_offsets(p, kv_chunks));
    let mut work = BlockWork::default();
    for (qi, &qc) in local.chunks.iter().enumerate() {
        let rows = qo[qi].0..qo[qi].0 + qo[qi].1;
        let lrows = lo[qi].0..lo[qi].0 + lo[qi].1;
        for (ki, &kc) in kv_chunks.iter().enumerate() {
            let kind = pair(p, qc, kc);
            if kind == Pair::Skip {
                work.skipped += 1;
                continue;
            }
            let sp = sub_problem(p, qc, kc, kind);
            let (ko, kn) = kvo[ki];
            let args = AttnArgs::new(&sp, &local.q[rows.clone()], &kv[ko..ko + kn], &kv[ko + kn..ko + 2 * kn])?;
            let saved = Saved {
                out: &local.out[rows.clone()],
                lse: &local.lse[lrows.clone()],
                d_out: &local.d_out[rows.clone()],
            };
            let (mut gq, mut gk, mut gv) =
                (vec![0.0f32; sp.out_len()], vec![0.0f32; sp.kv_len()], vec![0.0f32; sp.kv_len()]);
            let mut g = GradsMut { dq: &mut gq, dk: &mut gk, dv: &mut gv, dsinks: None, dbias: None };
            engine.backward_into(&args, &saved, &mut g)?;
            add(&mut dq[rows.clone()], &gq);
            add(&mut dkv[ko..ko + kn], &gk);
            add(&mut dkv[ko + kn..ko + 2 * kn], &gv);
            work.pairs += 1;
        }
    }
    Ok(work)
}

/// `acc += x`, elementwise.
pub fn add(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

/// This rank's share of dσ (H,): `sink_grads` over its rows with the global LSE.
pub fn sink_grads(p: &Problem, local: &Local<'_>) -> Vec<f32> {
    let Some(s) = &p.mods.sinks else { return Vec::new() };
    let (qo, lo) = (q_offsets(p, local.chunks, p.head_dim), q_offsets(p, local.chunks, 1));
    let mut total = vec![0.0f32; s.len()];
    for (i, &c) in local.chunks.iter().enumerate() {
        let mut sp = Problem::new(p.batch, p.heads, c.len, p.head_dim);
        sp.mods.sinks = Some(s.clone());
        let rows = qo[i].0..qo[i].0 + qo[i].1;
        let delta = crate::grad::delta_rows(&sp, &local.out[rows.clone()], &local.d_out[rows]);
        let mut part = vec![0.0f32; s.len()];
        crate::grad::sink_grads(&sp, &local.lse[lo[i].0..lo[i].0 + lo[i].1], &delta, &mut part);
        add(&mut total, &part);
    }
    total
}
