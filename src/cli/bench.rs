//! `attnkit bench`: median time, GFLOP/s, peak heap and the GEMM ceiling, per backend and N.
//!
//! Every cell goes through [`attnkit::bench::run_cell`]: a backend that cannot run a problem
//! (unsupported, over the memory budget) is refused before any input is generated or the GEMM
//! ceiling measured, so a hopeless request answers at once.

use super::modifiers::{ModifierArgs, PairOwned};
use super::{EXIT_NAMED_SKIPPED, ShapeArgs, fmt_mib, fmt_percent, fmt_secs, resolve_backends};
use attnkit::bench::{BenchRecord, Cell, GemmCeiling, History, LazyCeiling, LazyInputs, Policy, Status, run_cell};
use attnkit::ceiling::LazyBandwidth;
use attnkit::inputs::InputFamily;
use attnkit::threads::with_threads;
use attnkit::{AttnError, Problem};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated backend names, or `all` (every registered backend except `reference`,
    /// which is an f64 oracle and far too slow to time at these sizes; name it to include it).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub backends: Vec<String>,
    /// Comma-separated query lengths N_q.
    #[arg(long, value_delimiter = ',', default_value = "1024")]
    pub seq: Vec<usize>,
    /// Comma-separated key lengths N_k: one value for all N_q, or one per N_q (default N_q).
    #[arg(long, value_delimiter = ',')]
    pub seq_kv: Vec<usize>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Input family, seeded by --seed: normal, structured[:S], local-global (see
    /// `attnkit::inputs`). Times hardly depend on the values; the family is recorded per row.
    #[arg(long, default_value = "normal", value_parser = super::parse_named::<InputFamily>)]
    pub inputs: InputFamily,
    #[command(flatten)]
    pub mods: ModifierArgs,
    /// Threads in the rayon pool the backends (and the GEMM ceiling) run in; default all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed repetitions after one warm-up (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Per-run time budget in seconds: reps stop once it is spent, and a backend is skipped at
    /// an N where its time, extrapolated from the previous N, would exceed it.
    #[arg(long, default_value_t = 30.0)]
    pub max_time: f64,
    /// One JSON object per line (measured and skipped runs alike; see `status`).
    #[arg(long)]
    pub json: bool,
    /// Time the backward pass instead: forward, backward alone and forward + backward per
    /// backend and N, GFLOP/s by FlashAttention's convention (backward = 2.5× the forward's
    /// FLOPs) and the backward's fraction of the GEMM ceiling. Backends without a backward skip.
    #[arg(long)]
    pub backward: bool,
    #[command(flatten)]
    pub kv: super::kvcache::KvArgs,
}

pub fn run(a: &BenchArgs) -> Result<ExitCode, AttnError> {
    if a.reps == 0 {
        return Err(AttnError::invalid("--reps must be ≥ 1"));
    }
    if a.max_time.is_nan() || a.max_time <= 0.0 {
        return Err(AttnError::invalid(format!("--max-time must be > 0, got {}", a.max_time)));
    }
    if a.seq.is_empty() {
        return Err(AttnError::invalid("--seq needs at least one length"));
    }
    if !(a.seq_kv.is_empty() || a.seq_kv.len() == 1 || a.seq_kv.len() == a.seq.len()) {
        return Err(AttnError::invalid(format!(
            "--seq-kv has {} values; give one, or one per --seq value ({})",
            a.seq_kv.len(),
            a.seq.len()
        )));
    }
    if a.kv.active() {
        let nk = if a.seq_kv.is_empty() { &a.seq } else { &a.seq_kv };
        let run = || super::kvcache::bench(&a.kv, &a.shape, &a.mods, a.inputs, nk, a.reps, a.json);
        return with_threads(a.threads, run)?;
    }
    let (names, explicit) = resolve_backends(&a.backends, &["reference"])?;
    // Validate every problem before any work.
    let problems = a
        .seq
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let nk = match a.seq_kv.len() {
                0 => n,
                1 => a.seq_kv[0],
                _ => a.seq_kv[i],
            };
            a.mods.apply(a.shape.problem(8, n, nk)?, a.shape.seed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if a.backward {
        return super::bench_backward::run(a, &names, explicit, &problems);
    }
    let records = with_threads(a.threads, || bench_in_pool(a, &names, &problems))??;
    let statuses: Vec<(&str, &Status)> = records.iter().map(|r| (r.backend.as_str(), &r.status)).collect();
    Ok(exit_status(&names, explicit, &statuses))
}

/// 1 when a run failed, 3 when a backend named explicitly was measured at no N, else 0 (with
/// the why on stderr); `statuses` holds (backend, status) of every cell.
pub fn exit_status(names: &[String], explicit: bool, statuses: &[(&str, &Status)]) -> ExitCode {
    let errors = statuses.iter().filter(|(_, s)| matches!(s, Status::Failed(_))).count();
    if errors > 0 {
        eprintln!("error: {errors} run(s) failed (see the `error` rows)");
        return ExitCode::FAILURE;
    }
    let unmeasured: Vec<&str> =
        names.iter().filter(|n| !statuses.iter().any(|(b, s)| b == n && s.is_ok())).map(|n| n.as_str()).collect();
    if explicit && !unmeasured.is_empty() {
        eprintln!("error: explicitly requested backend(s) measured at no N: {}", unmeasured.join(", "));
        return ExitCode::from(EXIT_NAMED_SKIPPED);
    }
    ExitCode::SUCCESS
}

/// The line that says the GEMM ceiling was measured (printed before the first row it applies to).
pub fn print_ceiling(g: &GemmCeiling) -> Result<(), AttnError> {
    outln!(
        "GEMM ceiling: {}×{}×{} f32 sgemm on {} thread(s): {:.1} GFLOP/s (median of {}, {})",
        g.m,
        g.n,
        g.k,
        g.threads,
        g.gflops,
        attnkit::bench::GEMM_CEILING_REPS,
        fmt_secs(g.median_s)
    )
}

/// Runs every (problem, backend) cell in the current pool, printing each record as it comes.
fn bench_in_pool(
    a: &BenchArgs,
    names: &[String],
    problems: &[(Problem, PairOwned)],
) -> Result<Vec<BenchRecord>, AttnError> {
    if !a.json {
        outln!("GFLOP/s = FLOPs of exact attention over allowed pairs (4·D per pair) / median time")?;
        outln!("inputs: {} ({}), seed {}", a.inputs, a.inputs.description(), a.shape.seed)?;
        outln!(
            "{:<12} {:>7} {:>7} {:>11} {:>9} {:>7} {:>10} {:>5}",
            "backend",
            "N",
            "N_kv",
            "median",
            "GFLOP/s",
            "%GEMM",
            "peak MiB",
            "reps"
        )?;
    }
    let opts = a.shape.options();
    let ceiling = LazyCeiling::standard();
    let mut ceiling_printed = false;
    let bandwidth = LazyBandwidth::default();
    let policy = Policy { reps: a.reps, max_measure_s: a.max_time, max_predicted_s: a.max_time };
    let mut history = History::default();
    let mut records = Vec::new();
    for (p, pair) in problems {
        let inputs = LazyInputs::new(p, a.inputs, a.shape.seed).with_pair(pair.clone());
        for name in names {
            let record = match attnkit::backend_with(name, &opts) {
                Err(e) => BenchRecord::new(name, "", p, None, rayon::current_num_threads())
                    .with_inputs(a.inputs)
                    .failed(e.to_string()),
                Ok(b) => {
                    let cell = Cell {
                        backend: b.as_ref(),
                        variant: "",
                        problem: p,
                        plan_skip: None,
                        previous: history.previous(name, p.causal),
                    };
                    run_cell(&cell, &inputs, &ceiling, &policy)?.record
                }
            };
            let record = match record.wants_bandwidth(p) {
                true => record.with_bandwidth(p, bandwidth.get()?),
                false => record,
            };
            history.note(name, &record);
            // The ceiling is measured by the first CPU cell that runs: say so before its row.
            if let (Some(g), false, false) = (ceiling.measured(), a.json, ceiling_printed) {
                ceiling_printed = true;
                print_ceiling(g)?;
            }
            print_record(&record, a.json)?;
            records.push(record);
        }
    }
    Ok(records)
}

fn print_record(r: &BenchRecord, json: bool) -> Result<(), AttnError> {
    if json {
        let line = serde_json::to_string(r).map_err(|e| AttnError::invalid(format!("json: {e}")))?;
        return outln!("{line}");
    }
    let (Some(t), Some(g), true) = (r.median_s, r.gflops, r.status.is_ok()) else {
        return outln!("{:<12} {:>7} {:>7}  {}: {}", r.backend, r.seq, r.seq_kv, r.status, r.status.reason());
    };
    let mut note = match (&r.device_timing_error, r.host_timed_on_device()) {
        (Some(e), _) => format!("  (host-timed, incl. transfers: device timing failed: {e})"),
        (None, true) => "  (host-timed, incl. transfers)".to_string(),
        (None, false) => String::new(),
    };
    if let (Some(d), Some(c)) = (r.decode, r.bandwidth_gb_per_s) {
        note += &format!(
            "  decode: {:.1} MiB moved, {:.1} GB/s = {:.0}% of the {c:.1} GB/s read ceiling",
            d.bytes as f64 / (1u64 << 20) as f64,
            d.gb_per_s,
            100.0 * d.fraction_of_ceiling
        );
    }
    outln!(
        "{:<12} {:>7} {:>7} {:>11} {:>9.1} {:>7} {:>10} {:>5}{note}",
        r.backend,
        r.seq,
        r.seq_kv,
        fmt_secs(t),
        g,
        fmt_percent(r.gemm_fraction),
        fmt_mib(r.peak_bytes),
        r.reps,
    )
}
