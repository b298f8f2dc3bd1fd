//! `attnkit ring`'s report: per-rank timings, the fraction of communication hidden, efficiency
//! against one process, the cost model's prediction for the run just measured, and `--model`'s
//! "Beyond one machine" table.
//!
//! The prediction uses only figures measured apart from the ring: the compute rate of
//! single-process flash-cpu on the same P × threads threads (`--baseline`), divided by P (on a
//! loaded or oversubscribed machine that is what each rank gets), and the loopback bandwidth of
//! the comm-only pass.

use super::ring::RingArgs;
use attnkit::AttnError;
use attnkit::Problem;
use attnkit::dist::ShardPlan;
use attnkit::dist::model::{Setup, predict, table};
use attnkit::dist::mpi::MpiRing;
use attnkit::dist::ring::{Stats, Transport};
use std::process::ExitCode;

/// Single-process (forward, backward) seconds on 1 × threads and on P × threads, one per run.
pub type Baselines = (Vec<(f64, f64)>, Vec<(f64, f64)>);

/// Per rank and run: forward compute, wait, total; backward compute, wait, total.
const FIELDS: usize = 6;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Prints the timings on rank 0 (every rank must call it: it gathers).
pub fn print_timings(
    a: &RingArgs,
    t: &MpiRing,
    p: &Problem,
    plan: &ShardPlan,
    runs: &[(Stats, Stats)],
    comm: (f64, usize),
    single: &Baselines,
) -> Result<(), AttnError> {
    let ranks = plan.ranks;
    let mut mine: Vec<f32> = Vec::new();
    for r in runs {
        mine.extend([r.0.compute_s, r.0.wait_s, r.0.total_s, r.1.compute_s, r.1.wait_s, r.1.total_s].map(|x| x as f32));
    }
    mine.push(comm.0 as f32);
    let per = runs.len() * FIELDS + 1;
    let all = t.all_gather(&mine, &vec![per; ranks])?;
    if t.rank() != 0 {
        return Ok(());
    }
    let at = |rank: usize, run: usize, f: usize| all[rank * per + run * FIELDS + f] as f64;
    // The run's wall time is its slowest rank's; report the median run.
    let wall: Vec<f64> =
        (0..runs.len()).map(|i| (0..ranks).map(|r| at(r, i, 2) + at(r, i, 5)).fold(0.0, f64::max)).collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&x, &y| wall[x].total_cmp(&wall[y]));
    let mid = order[order.len() / 2];
    let ring_s = wall[mid];
    outln!(
        "ring: {p}  P={ranks} layout={:?}{} threads/rank={} {}  runs={} (median shown)",
        plan.layout,
        if a.layout == Some(super::ring::LayoutArg::Allgather) { " schedule=all-gather" } else { "" },
        a.threads,
        if a.backward { "forward+backward" } else { "forward" },
        runs.len()
    )?;
    outln!("{:>4} {:>11} {:>11} {:>11} {:>11} {:>8}", "rank", "compute_s", "wait_s", "comm_s", "total_s", "hidden")?;
    let mut hidden_sum = 0.0;
    for r in 0..ranks {
        let (compute, wait, total) =
            (at(r, mid, 0) + at(r, mid, 3), at(r, mid, 1) + at(r, mid, 4), at(r, mid, 2) + at(r, mid, 5));
        let comm_s = all[r * per + per - 1] as f64;
        let hidden = if comm_s > 0.0 { (1.0 - wait / comm_s).clamp(0.0, 1.0) } else { 1.0 };
        hidden_sum += hidden;
        outln!("{r:>4} {compute:>11.4} {wait:>11.4} {comm_s:>11.4} {total:>11.4} {:>7.1}%", 100.0 * hidden)?;
    }
    outln!(
        "ring wall time {ring_s:.4} s; communication hidden {:.1}% (mean over ranks)",
        100.0 * hidden_sum / ranks as f64
    )?;
    if single.0.is_empty() {
        return Ok(());
    }
    let one = |v: &[(f64, f64)]| (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect()));
    let (t1, tp) = (one(&single.0), one(&single.1));
    outln!(
        "one process: {:.4} s on {} thread(s) -> efficiency T1/(P*T) = {:.1}%; {:.4} s on {} threads -> ring speed vs one process = {:.3}x",
        t1.0 + t1.1,
        a.threads,
        100.0 * (t1.0 + t1.1) / (ranks as f64 * ring_s),
        tp.0 + tp.1,
        a.threads * ranks,
        (tp.0 + tp.1) / ring_s
    )?;
    // The model with measured inputs: each rank's compute rate is 1/P of what one process gets
    // from the same P × threads threads (so a loaded or oversubscribed machine is accounted
    // for), and the comm-only pass's loopback bandwidth.
    let bandwidth = if comm.0 > 0.0 { comm.1 as f64 * 4.0 / comm.0 } else { f64::INFINITY };
    let setup = |backward: bool, secs: f64| Setup {
        n: p.seq_q as f64,
        ranks,
        batch: p.batch,
        heads: p.heads,
        kv_heads: p.kv_heads,
        head_dim: p.head_dim,
        causal: p.causal,
        layout: plan.layout,
        all_gather: a.layout == Some(super::ring::LayoutArg::Allgather),
        backward,
        flops: p.flops() * if backward { 2.5 } else { 1.0 } / secs / ranks as f64,
        bandwidth,
        latency: 0.0,
    };
    if !p.window.is_unbounded() {
        // The model counts causal or full pairs per step; a window's per-step work differs.
        return outln!("model: not applied (the cost model counts causal or full pairs, not a window's)");
    }
    let mut predicted = predict(&setup(false, tp.0)).total_s;
    if a.backward {
        predicted += predict(&setup(true, tp.1)).total_s;
    }
    outln!(
        "model: predicted {predicted:.4} s (forward compute {:.2} GFLOP/s/rank = one process on {} threads / P, loopback {:.2} GB/s, both measured), measured {ring_s:.4} s: predicted/measured = {:.3}",
        p.flops() / tp.0 / ranks as f64 / 1e9,
        a.threads * ranks,
        bandwidth / 1e9,
        predicted / ring_s
    )?;
    Ok(())
}

/// `--model`: measures one core's flash-cpu rate (causal, N=4096, H=4, `--dim`; the backward's
/// with `--backward`) and prints the
/// "Beyond one machine" table on rank 0.
pub fn print_table(a: &RingArgs, rank: usize) -> Result<ExitCode, AttnError> {
    if rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let p = Problem::new(1, 4, 4096, a.dim).with_causal(true);
    let (q, k, v) = attnkit::seeded::normal_qkv(&p, a.seed);
    let d_out = attnkit::seeded::normal_values(p.out_len(), a.seed);
    let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(super::ring::time_single(&p, &q, &k, &v, &d_out, a.backward, 1)?);
    }
    let (fwd, bwd) = (median(times.iter().map(|x| x.0).collect()), median(times.iter().map(|x| x.1).collect()));
    // The table is for the pass timed: the backward's rate is its own (2.5x the forward FLOPs).
    let rate = if a.backward { 2.5 * p.flops() / bwd } else { p.flops() / fwd };
    outln!("## Beyond one machine\n")?;
    outln!(
        "Measured: flash-cpu on 1 thread, {p}: {:.1} GFLOP/s ({}). Model: attnkit::dist::model (src/dist/model.rs). \
         Layout: zigzag for causal, contiguous otherwise.\n",
        rate / 1e9,
        if a.backward { "backward pass, 2.5x the forward FLOPs" } else { "forward" }
    )?;
    let kv = a.kv_heads.unwrap_or(a.heads);
    outln!("{}", table(rate, a.model_cores, a.heads, kv, a.dim, a.backward))?;
    Ok(ExitCode::SUCCESS)
}
