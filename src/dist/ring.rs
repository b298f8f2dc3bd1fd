//! The ring schedule over any [`Transport`]: forward (ring or all-gather) and backward.
//!
//! Forward, rank r, step s = 0..P: the block in hand belongs to rank (r−s) mod P; the shift
//! that brings the next block runs while this one is computed ([`super::block::forward`]).
//! Backward, step s: the same K/V shift, plus the finished dK/dV accumulator of step s−1's
//! block, which rank r+1 needs at step s; the incoming accumulator of this step's block is
//! added to this rank's contribution after the compute, so every transfer overlaps a compute
//! except the last (the accumulators' final hop home). Block j's accumulator sums the ranks'
//! contributions in the order j, j+1, …, fixed, so gradients are reproducible bit for bit.
//! Cost per rank: P block computes; P−1 K/V transfers forward, P−1 K/V and P dK/dV transfers
//! backward, one block each.

use super::block::{self, BlockWork, Local};
use super::{Shard, ShardPlan, check_plan, kv_block_len, rows_len};
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use std::time::Instant;

pub use super::Schedule;

/// Point-to-point ring and one collective between P ranks.
pub trait Transport {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sends `send` to rank+1 and receives rank−1's message, of exactly `recv.len()` elements,
    /// into `recv`, while `work` runs; returns its result and the seconds spent waiting for the
    /// transfers after it finished (the communication not hidden).
    fn shift<R: Send>(&self, send: &[f32], recv: &mut [f32], work: impl FnOnce() -> R + Send) -> Result<(R, f64)>;
    /// Every rank's `mine` (`lens[r]` elements from rank r), concatenated in rank order.
    fn all_gather(&self, mine: &[f32], lens: &[usize]) -> Result<Vec<f32>>;
}

/// Where one rank's time went.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Seconds in block computes (and merges).
    pub compute_s: f64,
    /// Seconds waiting for transfers after the compute they overlapped (exposed communication).
    pub wait_s: f64,
    /// Seconds of the whole call.
    pub total_s: f64,
    /// f32 elements this rank sent.
    pub sent: usize,
    /// Chunk pairs computed and skipped by the band (causal mask, window).
    pub pairs: usize,
    pub skipped: usize,
}

impl Stats {
    fn add_work(&mut self, w: BlockWork, secs: f64) {
        self.compute_s += secs;
        self.pairs += w.pairs;
        self.skipped += w.skipped;
    }
}

/// A rank's forward result: O (chunk-major (B,H,len,D)), LSE (chunk-major (B,H,len)), timing.
#[derive(Clone, Debug)]
pub struct Forward {
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
    pub stats: Stats,
}

fn owner(r: usize, s: usize, ranks: usize) -> usize {
    (r + ranks - s % ranks) % ranks
}

fn timed<R>(f: impl FnOnce() -> R) -> (R, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn check_transport<T: Transport>(t: &T, p: &Problem, plan: &ShardPlan, shard: &Shard) -> Result<()> {
    check_plan(p, plan)?;
    if t.size() != plan.ranks || t.rank() != shard.rank {
        return Err(AttnError::invalid(format!(
            "rank {}: the transport has {} ranks and this is rank {}, but the plan has {} ranks and the shard belongs to rank {}",
            t.rank(),
            t.size(),
            t.rank(),
            plan.ranks,
            shard.rank
        )));
    }
    shard.check(p, plan)
}

/// Exact attention of this rank's queries over the whole sequence.
pub fn forward<T: Transport>(
    t: &T,
    p: &Problem,
    plan: &ShardPlan,
    schedule: Schedule,
    shard: &Shard,
) -> Result<Forward> {
    check_transport(t, p, plan, shard)?;
    let start = Instant::now();
    let (ranks, r) = (plan.ranks, shard.rank);
    let mut out = vec![0.0f32; rows_len(p, &shard.chunks, p.head_dim)];
    let mut lse = vec![f32::NEG_INFINITY; rows_len(p, &shard.chunks, 1)];
    let mut st = Stats::default();
    let compute = |kv_chunks: &[super::Chunk], kv: &[f32], out: &mut [f32], lse: &mut [f32]| {
        timed(|| block::forward(p, &shard.chunks, &shard.q, kv_chunks, kv, out, lse))
    };
    match schedule {
        Schedule::Ring => {
            let mut cur = shard.kv.clone();
            for s in 0..ranks {
                let chunks = plan.chunks_of(owner(r, s, ranks));
                if s + 1 < ranks {
                    let mut next = vec![0.0f32; kv_block_len(p, &plan.chunks_of(owner(r, s + 1, ranks)))];
                    let ((w, secs), wait) = t.shift(&cur, &mut next, || compute(&chunks, &cur, &mut out, &mut lse))?;
                    st.add_work(w?, secs);
                    st.wait_s += wait;
                    st.sent += cur.len();
                    cur = next;
                } else {
                    let (w, secs) = compute(&chunks, &cur, &mut out, &mut lse);
                    st.add_work(w?, secs);
                }
            }
        }
        Schedule::AllGather => {
            let lens: Vec<usize> = (0..ranks).map(|q| kv_block_len(p, &plan.chunks_of(q))).collect();
            let (all, wait) = timed(|| t.all_gather(&shard.kv, &lens));
            let all = all?;
            st.wait_s += wait;
            st.sent += shard.kv.len() * (ranks - 1);
            let at: Vec<usize> = lens.iter().scan(0, |a, &n| Some(std::mem::replace(a, *a + n))).collect();
            // The ring's order, so both schedules give the same bits.
            for s in 0..ranks {
                let q = owner(r, s, ranks);
                let (w, secs) = compute(&plan.chunks_of(q), &all[at[q]..at[q] + lens[q]], &mut out, &mut lse);
                st.add_work(w?, secs);
            }
        }
    }
    block::finish_sinks(p, &shard.chunks, &mut out, &mut lse);
    st.total_s = start.elapsed().as_secs_f64();
    Ok(Forward { out, lse, stats: st })
}

/// A rank's gradients: dQ of its rows (chunk-major), dK/dV of its own block (laid out like
/// `Shard::kv`), dσ summed over all ranks (every rank gets the same), timing.
#[derive(Clone, Debug)]
pub struct Backward {
    pub dq: Vec<f32>,
    pub dkv: Vec<f32>,
    pub dsinks: Option<Vec<f32>>,
    pub stats: Stats,
}

/// The backward of [`forward`]: `out` and `lse` are this rank's forward result, `d_out` its
/// rows of dO (chunk-major, like `out`).
pub fn backward<T: Transport>(
    t: &T,
    p: &Problem,
    plan: &ShardPlan,
    shard: &Shard,
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
) -> Result<Backward> {
    check_transport(t, p, plan, shard)?;
    let (rows_d, rows_1) = (rows_len(p, &shard.chunks, p.head_dim), rows_len(p, &shard.chunks, 1));
    if out.len() != rows_d || d_out.len() != rows_d || lse.len() != rows_1 {
        return Err(AttnError::shape(format!(
            "rank {}: out, lse, d_out have {}, {}, {} elements, expected {rows_d}, {rows_1}, {rows_d}",
            shard.rank,
            out.len(),
            lse.len(),
            d_out.len()
        )));
    }
    let start = Instant::now();
    let (ranks, r) = (plan.ranks, shard.rank);
    let local = Local { chunks: &shard.chunks, q: &shard.q, out, lse, d_out };
    let block_len = |s: usize| kv_block_len(p, &plan.chunks_of(owner(r, s, ranks)));
    let mut dq = vec![0.0f32; rows_d];
    let mut st = Stats::default();
    let mut cur = shard.kv.clone();
    // The finished accumulator of the previous step's block (none before step 1).
    let mut acc: Vec<f32> = Vec::new();
    for s in 0..ranks {
        let chunks = plan.chunks_of(owner(r, s, ranks));
        let mut part = vec![0.0f32; cur.len()];
        let mut work = || timed(|| block::backward(p, &local, &chunks, &cur, &mut dq, &mut part));
        // Send: this block's K/V (for rank+1's next step) and the previous block's accumulator.
        // Receive: the next block's K/V and this block's accumulator from rank−1.
        let send_kv = if s + 1 < ranks { cur.len() } else { 0 };
        let recv_kv = if s + 1 < ranks { block_len(s + 1) } else { 0 };
        let recv_acc = if s >= 1 { block_len(s) } else { 0 };
        if send_kv + acc.len() + recv_kv + recv_acc == 0 {
            let (w, secs) = work();
            st.add_work(w?, secs);
            acc = part;
            continue;
        }
        let mut send = Vec::with_capacity(send_kv + acc.len());
        send.extend_from_slice(&cur[..send_kv]);
        send.extend_from_slice(&acc);
        let mut recv = vec![0.0f32; recv_kv + recv_acc];
        let ((w, secs), wait) = t.shift(&send, &mut recv, work)?;
        st.add_work(w?, secs);
        st.wait_s += wait;
        st.sent += send.len();
        acc = if s >= 1 { recv[recv_kv..].to_vec() } else { vec![0.0f32; part.len()] };
        block::add(&mut acc, &part);
        recv.truncate(recv_kv);
        cur = recv;
    }
    // The last hop: step P−1's block is rank r+1's; this rank's own accumulator comes from r−1.
    let dkv = if ranks > 1 {
        let mut home = vec![0.0f32; shard.kv.len()];
        let ((), wait) = t.shift(&acc, &mut home, || ())?;
        st.wait_s += wait;
        st.sent += acc.len();
        home
    } else {
        acc
    };
    let dsinks = match &p.mods.sinks {
        None => None,
        Some(s) => {
            let mine = block::sink_grads(p, &local);
            let (all, wait) = timed(|| t.all_gather(&mine, &vec![s.len(); ranks]));
            st.wait_s += wait;
            let mut total = vec![0.0f32; s.len()];
            all?.chunks(s.len()).for_each(|part| block::add(&mut total, part));
            Some(total)
        }
    };
    st.total_s = start.elapsed().as_secs_f64();
    Ok(Backward { dq, dkv, dsinks, stats: st })
}

/// The transfers of [`forward`] (and of [`backward`] when `backward`) with no compute, timed:
/// the communication the ring has to hide. Returns (seconds, f32 elements this rank sent).
pub fn comm_only<T: Transport>(t: &T, p: &Problem, plan: &ShardPlan, backward: bool) -> Result<(f64, usize)> {
    let (ranks, r) = (plan.ranks, t.rank());
    let block_len = |s: usize| kv_block_len(p, &plan.chunks_of(owner(r, s, ranks)));
    let start = Instant::now();
    let mut sent = 0;
    for s in 0..ranks.saturating_sub(1) {
        let send = vec![0.0f32; block_len(s)];
        let mut recv = vec![0.0f32; block_len(s + 1)];
        t.shift(&send, &mut recv, || ())?;
        sent += send.len();
    }
    if backward && ranks > 1 {
        for s in 0..ranks {
            let send_len = if s + 1 < ranks { block_len(s) } else { 0 } + if s >= 1 { block_len(s - 1) } else { 0 };
            let recv_len = if s + 1 < ranks { block_len(s + 1) } else { 0 } + if s >= 1 { block_len(s) } else { 0 };
            let send = vec![0.0f32; send_len];
            let mut recv = vec![0.0f32; recv_len];
            t.shift(&send, &mut recv, || ())?;
            sent += send_len;
        }
        let mut home = vec![0.0f32; block_len(0)];
        t.shift(&vec![0.0f32; block_len(ranks - 1)], &mut home, || ())?;
        sent += block_len(ranks - 1);
    }
    Ok((start.elapsed().as_secs_f64(), sent))
}
