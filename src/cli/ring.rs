//! `attnkit ring` (features `cli` + `mpi`): ring attention across the ranks `mpirun` started.
//!
//! Every rank draws the same seeded inputs, keeps its shard, and runs the ring (or all-gather)
//! forward, and with `--backward` the ring backward. Rank 0 prints each rank's compute time,
//! exposed communication (waits), the communication time of the same transfers alone (a
//! comm-only pass), the fraction hidden `1 − wait/comm`, and with `--baseline` the single-process
//! `flash-cpu` times it is compared with (1 × threads: efficiency `T₁/(P·T)`; P × threads: the
//! speed against one process using the same cores), alternated with the ring runs; the cost
//! model's prediction for this run ([`attnkit::dist::model`]) is printed beside the measurement.
//! `--check` gathers the result on rank 0 and judges it, and single-process flash-cpu, against
//! the f64 oracle under the tolerance rule. Any rank's error aborts every rank (MPI_Abort) with a
//! message naming it; exit status 1 on a failed check.

use super::ring_model;
use attnkit::dist::mpi::MpiRing;
use attnkit::dist::ring::{self, Schedule, Transport};
use attnkit::dist::{Layout, Shard, ShardPlan, gather_full, gather_kv, rows_len, slice_rows};
use attnkit::grad::oracle::gradients_f64;
use attnkit::validate::{compare, exact_tolerance, gradient_tolerance, oracle};
use attnkit::{Attention, AttnArgs, AttnError, Problem, Window};
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;

/// `--layout`: a chunking, or the all-gather schedule (chunked zigzag when causal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    Zigzag,
    Contiguous,
    Allgather,
}

/// A failure injected for the failure-behaviour test: `RANK:error` (a bad shard) or
/// `RANK:exit` (the process exits without finalizing MPI).
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    rank: usize,
    exit: bool,
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    let bad = || format!("fault `{s}` must be RANK:error or RANK:exit");
    let (r, kind) = s.split_once(':').ok_or_else(bad)?;
    let rank = r.parse().map_err(|_| bad())?;
    match kind {
        "error" => Ok(Fault { rank, exit: false }),
        "exit" => Ok(Fault { rank, exit: true }),
        _ => Err(bad()),
    }
}

#[derive(Args, Debug)]
pub struct RingArgs {
    /// Sequence length N (self-attention).
    #[arg(long, default_value_t = 4096)]
    pub seq: usize,
    /// Head dimension D.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Query heads H.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Key/value heads H_kv (GQA; only these travel); default H.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Batch size B.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Causal mask.
    #[arg(long)]
    pub causal: bool,
    /// Sliding window `L,R` (inclusive, -1 = unbounded), at each chunk's global position.
    #[arg(long, value_parser = super::parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    /// ALiBi with the standard geometric slopes for the H heads.
    #[arg(long)]
    pub alibi: bool,
    /// zigzag (default when causal), contiguous (default otherwise) or allgather.
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Run the ring backward too (seeded dO).
    #[arg(long)]
    pub backward: bool,
    /// Judge the gathered result (and single-process flash-cpu) against the f64 oracle.
    #[arg(long)]
    pub check: bool,
    /// Compute threads per rank.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Ring runs (alternated with the baselines when `--baseline`); the median is reported.
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
    /// Time single-process flash-cpu on rank 0 (1 × threads and P × threads), alternated.
    #[arg(long)]
    pub baseline: bool,
    /// Seed of the inputs and dO.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Attention sinks: one seeded logit per head.
    #[arg(long)]
    pub sinks: bool,
    /// Print the cost model's "Beyond one machine" table (markdown) instead of running.
    #[arg(long)]
    pub model: bool,
    /// Cores per rank for the model table's compute rate.
    #[arg(long, default_value_t = 64)]
    pub model_cores: usize,
    /// Testing: inject a failure on one rank (`RANK:error` or `RANK:exit`).
    #[arg(long, value_parser = parse_fault, hide = true)]
    pub fault: Option<Fault>,
}

pub fn run(a: &RingArgs) -> Result<ExitCode, AttnError> {
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        return Err(AttnError::invalid("MPI could not be initialized (was it already?)"));
    };
    let t = MpiRing::new(universe.world());
    if a.threads == 0 {
        eprintln!("error: rank {}: --threads must be ≥ 1, got 0", t.rank());
        t.abort(2)
    }
    // The compute threads are the global pool's; this (main) thread alone calls MPI.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global()
        .map_err(|e| AttnError::invalid(format!("cannot build a {}-thread pool: {e}", a.threads)));
    match pool.and_then(|()| body(a, &t)) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: rank {} of {}: {}", t.rank(), t.size(), e.to_string().replace('\n', " "));
            // Peers may be blocked in a transfer with this rank: end them all.
            t.abort(1)
        }
    }
}

fn problem(a: &RingArgs) -> Result<Problem, AttnError> {
    let mut p =
        Problem::new(a.batch, a.heads, a.seq, a.dim).with_kv_heads(a.kv_heads.unwrap_or(a.heads)).with_causal(a.causal);
    if let Some(w) = a.window {
        p = p.with_window(w);
    }
    if a.alibi {
        p = p.with_alibi(attnkit::alibi_slopes(a.heads));
    }
    if a.sinks {
        p.mods.sinks = Some(attnkit::seeded::normal_values(a.heads, a.seed ^ 0x5eed));
    }
    attnkit::dist::check_supported(&p)?;
    Ok(p)
}

fn body(a: &RingArgs, t: &MpiRing) -> Result<ExitCode, AttnError> {
    let (rank, ranks) = (t.rank(), t.size());
    if a.model {
        return ring_model::print_table(a, rank);
    }
    let p = problem(a)?;
    let (layout, schedule) = match (a.layout, p.causal) {
        (Some(LayoutArg::Zigzag), _) | (None, true) => (Layout::Zigzag, Schedule::Ring),
        (Some(LayoutArg::Contiguous), _) | (None, false) => (Layout::Contiguous, Schedule::Ring),
        (Some(LayoutArg::Allgather), c) => (if c { Layout::Zigzag } else { Layout::Contiguous }, Schedule::AllGather),
    };
    let plan = ShardPlan::new(p.seq_q, ranks, layout)?;
    let (q, k, v) = attnkit::seeded::normal_qkv(&p, a.seed);
    let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
    let d_out = attnkit::seeded::normal_values(p.out_len(), a.seed.wrapping_add(1));
    let mut shard = Shard::from_full(&p, &plan, rank, &q, &k, &v)?;
    let mut d_local = Vec::with_capacity(rows_len(&p, &shard.chunks, p.head_dim));
    for c in &shard.chunks {
        d_local.extend(slice_rows(&d_out, p.batch * p.heads, p.seq_q, p.head_dim, *c));
    }
    if let Some(f) = a.fault.filter(|f| f.rank == rank) {
        if f.exit {
            eprintln!("rank {rank}: exiting without finalizing MPI (injected fault)");
            std::process::exit(7);
        }
        shard.q.pop();
    }

    // The first transfers set up connections: warm up, then time the comm-only pass.
    ring::comm_only(t, &p, &plan, a.backward)?;
    let comm = ring::comm_only(t, &p, &plan, a.backward)?;
    let mut runs = Vec::new();
    let mut single = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..a.reps.max(1) {
        t.barrier();
        let f = ring::forward(t, &p, &plan, schedule, &shard)?;
        let b = if a.backward { Some(ring::backward(t, &p, &plan, &shard, &f.out, &f.lse, &d_local)?) } else { None };
        runs.push((f.stats, b.as_ref().map(|b| b.stats).unwrap_or_default()));
        if a.baseline {
            if rank == 0 {
                single.0.push(time_single(&p, &q, &k, &v, &d_out, a.backward, a.threads)?);
                single.1.push(time_single(&p, &q, &k, &v, &d_out, a.backward, a.threads * ranks)?);
            }
            t.quiet_barrier();
        }
        last = Some((f, b));
    }
    let (f, b) = last.expect("at least one run");
    ring_model::print_timings(a, t, &p, &plan, &runs, comm, &single)?;

    if !a.check {
        return Ok(ExitCode::SUCCESS);
    }
    let lens = |w: usize, h: usize| -> Vec<usize> { (0..ranks).map(|r| p.batch * h * w * plan.rows_of(r)).collect() };
    let outs = t.all_gather(&f.out, &lens(p.head_dim, p.heads))?;
    let grads = match &b {
        Some(b) => Some((
            t.all_gather(&b.dq, &lens(p.head_dim, p.heads))?,
            t.all_gather(&b.dkv, &lens(2 * p.head_dim, p.kv_heads))?,
            b.dsinks.clone(),
        )),
        None => None,
    };
    if rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let split = |all: &[f32], l: &[usize]| -> Vec<Vec<f32>> {
        let mut at = 0;
        l.iter().map(|&n| (all[at..at + n].to_vec(), at += n).0).collect()
    };
    let out = gather_full(&p, &plan, &split(&outs, &lens(p.head_dim, p.heads)), p.head_dim, p.heads);
    let grads = grads.map(|(dq, dkv, ds)| {
        let dq = gather_full(&p, &plan, &split(&dq, &lens(p.head_dim, p.heads)), p.head_dim, p.heads);
        let (dk, dv) = gather_kv(&p, &plan, &split(&dkv, &lens(2 * p.head_dim, p.kv_heads)));
        (dq, dk, dv, ds)
    });
    check(&p, &q, &k, &v, &d_out, &out, grads)
}

/// Seconds of single-process flash-cpu's forward and (when `backward`, else 0) backward on
/// `threads` threads.
pub(super) fn time_single(
    p: &Problem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_out: &[f32],
    backward: bool,
    threads: usize,
) -> Result<(f64, f64), AttnError> {
    let engine = attnkit::backends::flash_cpu::FlashCpu::new();
    attnkit::threads::with_threads(Some(threads), || {
        let args = AttnArgs::new(p, q, k, v)?;
        let t0 = Instant::now();
        let f = engine.forward(&args, true)?;
        let fwd = t0.elapsed().as_secs_f64();
        if !backward {
            return Ok((fwd, 0.0));
        }
        let t1 = Instant::now();
        engine.backward(&args, &f.out, f.lse.as_deref().unwrap_or_default(), d_out, false)?;
        Ok((fwd, t1.elapsed().as_secs_f64()))
    })?
}

/// The oracle's cost: B·H·N²·D multiply-adds in f64.
const CHECK_LIMIT: f64 = 8.6e9;

type GatheredGrads = (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

fn check(
    p: &Problem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_out: &[f32],
    out: &[f32],
    grads: Option<GatheredGrads>,
) -> Result<ExitCode, AttnError> {
    let cost = (p.batch * p.heads) as f64 * (p.seq_q as f64).powi(2) * p.head_dim as f64;
    if cost > CHECK_LIMIT {
        return Err(AttnError::invalid(format!(
            "--check needs the f64 oracle over B·H·N²·D = {cost:.3e} multiply-adds, over the limit of {CHECK_LIMIT:.1e}; check a shorter --seq"
        )));
    }
    let args = AttnArgs::new(p, q, k, v)?;
    let want = oracle(&args);
    let tol = exact_tolerance(&args, &want, p.dtype);
    let flash = attnkit::backends::flash_cpu::FlashCpu::new().forward(&args, true)?;
    let mut ok = true;
    let mut verdict =
        |name: &str, got: &[f32], single: Option<&[f32]>, want: &[f64], bound: f64| -> Result<(), AttnError> {
            let e = compare(got, want);
            let pass = e.within(bound);
            ok &= pass;
            let s = single.map(|s| format!("{:.3e}", compare(s, want).max_abs)).unwrap_or_else(|| "-".into());
            outln!(
                "check {name:<6} ring max_abs {:.3e}  flash-cpu (1 process) {s}  bound {bound:.3e}  {}",
                e.max_abs,
                if pass { "PASS" } else { "FAIL" }
            )
        };
    verdict("out", out, Some(&flash.out), &want, tol.bound)?;
    // Fingerprints of the exact bits, so two runs can be compared (reproducibility).
    let mut bits = vec![("out", fingerprint(out))];
    if let Some((dq, dk, dv, _)) = &grads {
        bits.extend([("dq", fingerprint(dq)), ("dk", fingerprint(dk)), ("dv", fingerprint(dv))]);
    }
    outln!("bits {}", bits.iter().map(|(n, h)| format!("{n}={h:016x}")).collect::<Vec<_>>().join(" "))?;
    if let Some((dq, dk, dv, ds)) = grads {
        let g64 = gradients_f64(&args, d_out, false);
        let gt = gradient_tolerance(&args, d_out, &g64);
        let single = attnkit::backends::flash_cpu::FlashCpu::new().backward(
            &args,
            &flash.out,
            flash.lse.as_deref().unwrap_or_default(),
            d_out,
            false,
        )?;
        verdict("dq", &dq, Some(&single.dq), &g64.dq, gt.dq.bound)?;
        verdict("dk", &dk, Some(&single.dk), &g64.dk, gt.dk.bound)?;
        verdict("dv", &dv, Some(&single.dv), &g64.dv, gt.dv.bound)?;
        if let (Some(ds), Some(w), Some(t)) = (ds, &g64.dsinks, gt.dsinks) {
            verdict("dsinks", &ds, single.dsinks.as_deref(), w, t.bound)?;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// FNV-1a over the f32 bit patterns.
fn fingerprint(x: &[f32]) -> u64 {
    x.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ v.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
