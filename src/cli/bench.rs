//! `attnkit bench`: median time, GFLOP/s, peak heap and the GEMM ceiling, per backend and N.

use super::modifiers::{ModifierArgs, PairOwned};
use super::{ShapeArgs, fmt_mib, fmt_secs, resolve_backends};
use attnkit::bench::{
    BenchRecord, expected_exponent, extrapolate, gemm_ceiling, is_skip, measure, skip_reason, with_threads,
};
use attnkit::{AttnArgs, AttnError};
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
    let (names, _) = resolve_backends(&a.backends, &["reference"])?;
    // Validate every problem before spending time on the GEMM probe.
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
    with_threads(a.threads, || bench_in_pool(a, &names, &problems))?
}

fn bench_in_pool(
    a: &BenchArgs,
    names: &[String],
    problems: &[(attnkit::Problem, PairOwned)],
) -> Result<ExitCode, AttnError> {
    let threads = rayon::current_num_threads();
    let gemm = gemm_ceiling(attnkit::bench::GEMM_CEILING_SIZE, 5)?;
    if !a.json {
        println!(
            "GEMM ceiling: {}×{}×{} f32 sgemm on {threads} thread(s): {:.1} GFLOP/s (median of 5, {})",
            gemm.m,
            gemm.n,
            gemm.k,
            gemm.gflops,
            fmt_secs(gemm.median_s)
        );
        println!("GFLOP/s = FLOPs of exact attention over allowed pairs (4·D per pair) / median time");
        println!(
            "{:<12} {:>7} {:>7} {:>11} {:>9} {:>7} {:>10} {:>5}",
            "backend", "N", "N_kv", "median", "GFLOP/s", "%GEMM", "peak MiB", "reps"
        );
    }
    let opts = a.shape.options();
    let mut errors = 0usize;
    // Last successful (N, seconds) per backend, for the time-budget extrapolation.
    let mut last: Vec<Option<(usize, f64)>> = vec![None; names.len()];
    for (p, pair) in problems {
        let (q, k, v) = attnkit::seeded::normal_qkv(p, a.shape.seed);
        let args = AttnArgs::new_with(p, q.as_ref(), k.as_ref(), v.as_ref(), pair.as_pair())?;
        for (bi, name) in names.iter().enumerate() {
            let rec = BenchRecord::new(name, "", p, threads, gemm.gflops);
            let rec = match attnkit::backend_with(name, &opts) {
                Err(e) => rec.with_status("error", e.to_string()),
                Ok(b) => {
                    let rec = rec.on_device(b.device());
                    let predicted = last[bi]
                        .map(|(n0, t0)| extrapolate(n0, t0, p.seq_q.max(p.seq_k), expected_exponent(b.as_ref(), p)));
                    if let Some(reason) = skip_reason(b.as_ref(), p) {
                        rec.with_status("skipped", reason)
                    } else if let Some(t) = predicted.filter(|&t| t > a.max_time) {
                        rec.with_status("skipped", format!("predicted {t:.1} s > --max-time {} s", a.max_time))
                    } else {
                        match measure(b.as_ref(), &args, a.reps, a.max_time) {
                            Ok(m) => {
                                last[bi] = Some((p.seq_q.max(p.seq_k), m.median_s));
                                rec.with_measurement(p, &m)
                            }
                            Err(e) if is_skip(&e) => rec.with_status("skipped", e.to_string()),
                            Err(e) => rec.with_status("error", e.to_string()),
                        }
                    }
                }
            };
            if rec.status == "error" {
                errors += 1;
            }
            print_record(&rec, a.json)?;
        }
    }
    if errors > 0 {
        eprintln!("error: {errors} run(s) failed (see the `error` rows)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(r: &BenchRecord, json: bool) -> Result<(), AttnError> {
    if json {
        let line = serde_json::to_string(r).map_err(|e| AttnError::invalid(format!("json: {e}")))?;
        println!("{line}");
        return Ok(());
    }
    match (r.median_s, r.gflops) {
        (Some(t), Some(g)) => println!(
            "{:<12} {:>7} {:>7} {:>11} {:>9.1} {:>6.1}% {:>10} {:>5}{}",
            r.backend,
            r.seq,
            r.seq_kv,
            fmt_secs(t),
            g,
            100.0 * r.gemm_fraction.unwrap_or(f64::NAN),
            fmt_mib(r.peak_bytes),
            r.reps,
            if r.timing == Some(attnkit::bench::Timing::Host) && r.device == "cuda" {
                "  (host-timed, incl. transfers)"
            } else {
                ""
            }
        ),
        _ => println!("{:<12} {:>7} {:>7}  {}: {}", r.backend, r.seq, r.seq_kv, r.status, r.reason),
    }
    Ok(())
}
