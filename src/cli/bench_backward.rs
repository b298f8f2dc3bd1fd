//! `attnkit bench --backward`: forward, forward + backward and backward-alone median times per
//! backend and N, GFLOP/s by FlashAttention's convention (backward = 2.5× the forward's FLOPs
//! over the allowed pairs) and the backward's fraction of the f32 GEMM ceiling measured in the
//! same run. Each cell is [`attnkit::bench::backward::run_backward_cell`]: a backend without a
//! backward for the problem is refused before inputs are generated or the ceiling measured.

use super::bench::{BenchArgs, exit_status, print_ceiling};
use super::modifiers::PairOwned;
use super::{fmt_mib, fmt_percent, fmt_secs};
use attnkit::bench::backward::{BackwardRecord, run_backward_cell};
use attnkit::bench::{LazyCeiling, LazyInputs, Policy, Status};
use attnkit::threads::with_threads;
use attnkit::{AttnError, Problem};
use std::process::ExitCode;

pub fn run(
    a: &BenchArgs,
    names: &[String],
    explicit: bool,
    problems: &[(Problem, PairOwned)],
) -> Result<ExitCode, AttnError> {
    let records = with_threads(a.threads, || bench_in_pool(a, names, problems))??;
    let statuses: Vec<(&str, &Status)> = records.iter().map(|r| (r.backend.as_str(), &r.status)).collect();
    Ok(exit_status(names, explicit, &statuses))
}

fn bench_in_pool(
    a: &BenchArgs,
    names: &[String],
    problems: &[(Problem, PairOwned)],
) -> Result<Vec<BackwardRecord>, AttnError> {
    if !a.json {
        outln!(
            "GFLOP/s: forward = 4·D per allowed pair × H / time; backward = 2.5× that (FlashAttention's convention); fwd+bwd = 3.5×"
        )?;
        outln!("inputs: {} ({}), dO seeded normal, seed {}", a.inputs, a.inputs.description(), a.shape.seed)?;
        outln!(
            "{:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>7} {:>9} {:>4}",
            "backend",
            "N",
            "N_kv",
            "fwd",
            "bwd",
            "fwd+bwd",
            "bwd GF/s",
            "f+b GF/s",
            "bwd %G",
            "peak MiB",
            "reps"
        )?;
    }
    let opts = a.shape.options();
    let ceiling = LazyCeiling::standard();
    let mut ceiling_printed = false;
    let policy = Policy { reps: a.reps, max_measure_s: a.max_time, max_predicted_s: a.max_time };
    // The last measured (backend, N, forward+backward seconds), for the time extrapolation.
    let mut last: Vec<(String, usize, f64)> = Vec::new();
    let mut records = Vec::new();
    for (p, pair) in problems {
        let inputs = LazyInputs::new(p, a.inputs, a.shape.seed).with_pair(pair.clone());
        for name in names {
            let record = match attnkit::backend_with(name, &opts) {
                Err(e) => BackwardRecord::new(name, p, rayon::current_num_threads()).failed(e.to_string()),
                Ok(b) => {
                    let previous = last.iter().find(|l| &l.0 == name).map(|l| (l.1, l.2));
                    run_backward_cell(b.as_ref(), p, &inputs, a.shape.seed, &ceiling, &policy, previous)?
                }
            };
            if let (true, Some(t)) = (record.status.is_ok(), record.fwdbwd_s) {
                last.retain(|l| &l.0 != name);
                last.push((name.clone(), p.seq_q.max(p.seq_k), t));
            }
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

fn print_record(r: &BackwardRecord, json: bool) -> Result<(), AttnError> {
    if json {
        let line = serde_json::to_string(r).map_err(|e| AttnError::invalid(format!("json: {e}")))?;
        return outln!("{line}");
    }
    let (Some(f), Some(b), Some(fb), true) = (r.fwd_s, r.bwd_s, r.fwdbwd_s, r.status.is_ok()) else {
        return outln!("{:<12} {:>6} {:>6}  {}: {}", r.backend, r.seq, r.seq_kv, r.status, r.status.reason());
    };
    let gf = |g: Option<f64>| g.map_or("–".into(), |g| format!("{g:.1}"));
    outln!(
        "{:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>7} {:>9} {:>4}",
        r.backend,
        r.seq,
        r.seq_kv,
        fmt_secs(f),
        fmt_secs(b),
        fmt_secs(fb),
        gf(r.bwd_gflops),
        gf(r.fwdbwd_gflops),
        fmt_percent(r.bwd_gemm_fraction),
        fmt_mib(r.peak_bytes),
        r.reps,
    )
}
