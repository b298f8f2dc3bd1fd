//! `attnkit report`: sweep every available backend over N and write reports/.
//!
//! What runs (D = 64, H = 8, B = 1, f32, causal and non-causal):
//! - the sweep: N = 256 … 65536 (`--quick`: … 8192), every available registered backend
//!   except `auto` (it only forwards to one of the others) at its default options; `local`
//!   gets a window of w = 256 ((w, w), or (w, 0) when causal) because it needs one;
//! - the frontier: at N ∈ {1024, 4096}, linformer k ∈ {64,128,256}, performer m ∈ {64,128,256}
//!   and local w ∈ {64,256}, for the accuracy–speed plot;
//! - the weight heatmaps: one structured N = 64 input, effective N×N weights per backend,
//!   read off as the output for V = I through the public trait.
//!
//! Errors are measured on head 0: against the f64 oracle for N ≤ the oracle limit, beyond
//! that against the flash-cpu (or sdpa) output of the same cell, and the table says which.
//! Approximations (and `local`) are compared with *full* attention of the sweep problem, so
//! their error is the approximation error. Runs are skipped, with the reason recorded, when
//! the backend is unavailable/unsupported, when it refuses the memory budget, or when its
//! time extrapolated from the previous N (N², or N for linear-time methods) exceeds the
//! per-run budget.
//!
//! Everything is written into a temporary folder beside the target and renamed into place at
//! the end, so an interrupted run leaves the previous report intact.

use super::plots::{self, Series};
use super::{fmt_mib, fmt_secs};
use attnkit::backends::reference::attention_f64;
use attnkit::bench::{
    BenchRecord, GemmCeiling, expected_exponent, extrapolate, gemm_ceiling, is_skip, measure_into, skip_reason,
    with_threads,
};
use attnkit::validate::compare;
use attnkit::{Attention, AttnArgs, AttnError, BackendOptions, Exactness, Problem, Tensor, Window};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Stop the sweep at N = 8192 with fewer reps (about 3 minutes on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Output folder (replaced atomically at the end).
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Threads for every run and the GEMM ceiling (default all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Per-run time budget in seconds (default 6 with --quick, 120 otherwise).
    #[arg(long)]
    pub max_run_time: Option<f64>,
    /// Largest N of the sweep (default 65536, or 8192 with --quick); powers of 2 from 256.
    #[arg(long)]
    pub max_n: Option<usize>,
}

const DIM: usize = 64;
const HEADS: usize = 8;
const SEED: u64 = 0;
const LOCAL_W: i64 = 256;
const FRONTIER_NS: [usize; 2] = [1024, 4096];

struct Config {
    ns: Vec<usize>,
    reps: usize,
    run_budget_s: f64,
    /// Largest N at which the f64 oracle (head 0) is computed.
    oracle_max_n: usize,
    /// Largest N at which `reference` itself is timed.
    reference_max_n: usize,
}

/// One configured backend: a registry name plus options and, for `local`, a window.
#[derive(Clone, Debug)]
struct Variant {
    backend: String,
    label: String,
    param: String,
    opts: BackendOptions,
    window: Option<i64>,
    frontier_only: bool,
}

/// One result row: the bench record plus error figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    pub exactness: String,
    #[serde(flatten)]
    pub rec: BenchRecord,
    pub frontier: bool,
    pub err_max_abs: Option<f64>,
    pub err_max_rel: Option<f64>,
    pub err_vs: String,
}

fn variants(available: &[(String, Exactness)]) -> Vec<Variant> {
    let mut v = Vec::new();
    let has = |n: &str| available.iter().any(|(a, _)| a == n);
    let base = |backend: &str, label: String, param: String, opts: BackendOptions, window, frontier_only| Variant {
        backend: backend.to_string(),
        label,
        param,
        opts,
        window,
        frontier_only,
    };
    let seeded = BackendOptions { seed: SEED, ..Default::default() };
    // Comparators first, so their output exists when later variants of the same cell need it.
    let mut names: Vec<&String> = available.iter().map(|(n, _)| n).filter(|n| n.as_str() != "auto").collect();
    names.sort_by_key(|n| match n.as_str() {
        "flash-cpu" => 0,
        "sdpa" => 1,
        _ => 2,
    });
    for name in names {
        if name == "local" {
            let w = LOCAL_W;
            v.push(base(name, format!("local(w={w})"), format!("w={w}"), seeded.clone(), Some(w), false));
        } else {
            v.push(base(name, name.clone(), String::new(), seeded.clone(), None, false));
        }
    }
    if has("linformer") {
        for k in [64, 128, 256] {
            let o = BackendOptions { proj_dim: Some(k), ..seeded.clone() };
            v.push(base("linformer", format!("linformer(k={k})"), format!("k={k}"), o, None, true));
        }
    }
    if has("performer") {
        for m in [64, 128, 256] {
            let o = BackendOptions { features: Some(m), ..seeded.clone() };
            v.push(base("performer", format!("performer(m={m})"), format!("m={m}"), o, None, true));
        }
    }
    if has("local") {
        for w in [64i64, 256] {
            v.push(base("local", format!("local(w={w})"), format!("w={w}"), seeded.clone(), Some(w), true));
        }
    }
    v
}

/// Head 0 of batch 0 as a one-head problem: (problem, q, k, v) slices.
fn head0<'a>(p: &Problem, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> (Problem, &'a [f32], &'a [f32], &'a [f32]) {
    let p1 = Problem { batch: 1, heads: 1, kv_heads: 1, ..p.clone() };
    (p1, &q[..p.seq_q * p.head_dim], &k[..p.seq_k * p.head_dim], &v[..p.seq_k * p.head_dim])
}

pub fn run(a: &ReportArgs) -> Result<ExitCode, AttnError> {
    let cfg = if a.quick {
        Config {
            ns: (8..=13).map(|e| 1usize << e).collect(),
            reps: 3,
            run_budget_s: a.max_run_time.unwrap_or(6.0),
            oracle_max_n: 2048,
            reference_max_n: 512,
        }
    } else {
        Config {
            ns: (8..=16).map(|e| 1usize << e).collect(),
            reps: 5,
            run_budget_s: a.max_run_time.unwrap_or(120.0),
            oracle_max_n: 2048,
            reference_max_n: 2048,
        }
    };
    let mut cfg = cfg;
    if let Some(m) = a.max_n {
        if m < 256 {
            return Err(AttnError::invalid(format!("--max-n must be ≥ 256, got {m}")));
        }
        cfg.ns.retain(|&n| n <= m);
    }
    if cfg.run_budget_s.is_nan() || cfg.run_budget_s <= 0.0 {
        return Err(AttnError::invalid("--max-run-time must be > 0"));
    }
    let out_dir = a.out.clone();
    let tmp = temp_sibling(&out_dir, "tmp")?;
    std::fs::create_dir_all(&tmp)?;
    let result = with_threads(a.threads, || generate(&cfg, a.quick, &tmp));
    let summary = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) | Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    replace_dir(&tmp, &out_dir)?;
    println!("{summary}");
    println!("report written to {}", out_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `<parent>/.<name>.<tag>-<pid>` beside `target`.
fn temp_sibling(target: &Path, tag: &str) -> Result<PathBuf, AttnError> {
    let name = target
        .file_name()
        .ok_or_else(|| AttnError::invalid(format!("--out `{}` has no folder name", target.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}", std::process::id())))
}

/// Moves `tmp` to `target`, replacing it; the old folder is removed only after the swap.
fn replace_dir(tmp: &Path, target: &Path) -> Result<(), AttnError> {
    if target.exists() {
        let old = temp_sibling(target, "old")?;
        std::fs::rename(target, &old)?;
        if let Err(e) = std::fs::rename(tmp, target) {
            let _ = std::fs::rename(&old, target);
            return Err(e.into());
        }
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(tmp, target)?;
    }
    Ok(())
}

fn generate(cfg: &Config, quick: bool, dir: &Path) -> Result<String, AttnError> {
    let started = Instant::now();
    let threads = rayon::current_num_threads();
    let gemm = gemm_ceiling(attnkit::bench::GEMM_CEILING_SIZE, 5)?;
    let infos = attnkit::list_backends();
    let available: Vec<(String, Exactness)> =
        infos.iter().filter(|b| b.unavailable_reason.is_none()).map(|b| (b.name.clone(), b.exactness)).collect();
    let unavailable: Vec<String> =
        infos.iter().filter_map(|b| b.unavailable_reason.as_ref().map(|r| format!("`{}`: {r}", b.name))).collect();
    let vars = variants(&available);
    let cells: Vec<(usize, bool)> = cfg.ns.iter().flat_map(|&n| [(n, false), (n, true)]).collect();
    let planned: usize =
        cells.iter().map(|(n, _)| vars.iter().filter(|v| !v.frontier_only || FRONTIER_NS.contains(n)).count()).sum();
    let pb = ProgressBar::new(planned as u64);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    let mut rows: Vec<Row> = Vec::new();
    // Last (N, seconds) per (label, causal) for the time-budget extrapolation.
    let mut last: Vec<(String, bool, usize, f64)> = Vec::new();
    for &(n, causal) in &cells {
        let base = Problem::new(1, HEADS, n, DIM).with_causal(causal);
        let (q, k, v) = attnkit::seeded::normal_qkv(&base, SEED);
        let (qf, kf, vf) = (q.to_f32(), k.to_f32(), v.to_f32());
        let oracle: Option<Vec<f64>> = (n <= cfg.oracle_max_n)
            .then(|| {
                let (p1, q1, k1, v1) = head0(&base, &qf, &kf, &vf);
                AttnArgs::new(&p1, q1, k1, v1).map(|args| attention_f64(&args).0)
            })
            .transpose()?;
        let mut comparator: Option<(String, Vec<f32>)> = None;
        for var in vars.iter().filter(|v| !v.frontier_only || FRONTIER_NS.contains(&n)) {
            pb.set_message(format!("{} N={n}{}", var.label, if causal { " causal" } else { "" }));
            let p = match var.window {
                Some(w) => base.clone().with_window(Window::new(w, if causal { 0 } else { w })),
                None => base.clone(),
            };
            let row = run_one(cfg, var, &p, (&q, &k, &v), threads, &gemm, &last, n);
            let mut row = match row {
                Ok((row, out)) => {
                    if let Some(out) = out {
                        if row.rec.status == "ok" {
                            last.retain(|(l, c, _, _)| !(l == &var.label && *c == causal));
                            last.push((var.label.clone(), causal, n, row.rec.median_s.unwrap_or(0.0)));
                        }
                        let mut row = row;
                        let head = &out[..n * DIM];
                        if let Some(o) = &oracle {
                            let s = compare(head, o);
                            row.err_max_abs = Some(s.max_abs);
                            row.err_max_rel = Some(s.max_rel);
                            row.err_vs = "reference (f64, head 0)".into();
                        } else if let Some((cname, cout)) = &comparator {
                            let want: Vec<f64> = cout.iter().map(|&x| x as f64).collect();
                            let s = compare(head, &want);
                            row.err_max_abs = Some(s.max_abs);
                            row.err_max_rel = Some(s.max_rel);
                            row.err_vs = format!("{cname} (head 0)");
                        } else if !var.frontier_only && (var.backend == "flash-cpu" || var.backend == "sdpa") {
                            row.err_vs = "(is the comparator)".into();
                            comparator = Some((var.label.clone(), head.to_vec()));
                        }
                        row
                    } else {
                        row
                    }
                }
                Err(e) => return Err(e),
            };
            if row.err_vs.is_empty() && row.rec.status == "ok" {
                row.err_vs = "n/a (no oracle or comparator at this N)".into();
            }
            row.frontier = var.frontier_only;
            rows.push(row);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let heat = heatmaps(&available);
    let elapsed = started.elapsed().as_secs_f64();
    let cmd = std::env::args().collect::<Vec<_>>().join(" ");
    let meta = Meta {
        command: cmd,
        date_utc: utc_date(),
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        threads,
        quick,
        gemm,
        dim: DIM,
        heads: HEADS,
        batch: 1,
        dtype: "f32".into(),
        seed: SEED,
        reps: cfg.reps,
        run_budget_s: cfg.run_budget_s,
        oracle_max_n: cfg.oracle_max_n,
        mem_budget_bytes: attnkit::budget::mem_budget(),
        elapsed_s: elapsed,
        unavailable,
    };
    write_results(dir, &meta, &rows)?;
    let plot_notes = write_plots(dir, &rows, &heat)?;
    let readme = readme(&meta, &rows, &heat, &plot_notes);
    std::fs::write(dir.join("README.md"), readme)?;
    let ok = rows.iter().filter(|r| r.rec.status == "ok").count();
    let skipped = rows.iter().filter(|r| r.rec.status == "skipped").count();
    let errors = rows.iter().filter(|r| r.rec.status == "error").count();
    Ok(format!(
        "report: {ok} runs measured, {skipped} skipped, {errors} errors in {}; GEMM ceiling {:.1} GFLOP/s on {threads} thread(s)",
        fmt_secs(elapsed),
        meta.gemm.gflops
    ))
}

/// Runs one variant on one cell. Returns the row and the output (when it ran).
#[allow(clippy::too_many_arguments)]
fn run_one(
    cfg: &Config,
    var: &Variant,
    p: &Problem,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    threads: usize,
    gemm: &GemmCeiling,
    last: &[(String, bool, usize, f64)],
    n: usize,
) -> Result<(Row, Option<Vec<f32>>), AttnError> {
    let rec = BenchRecord::new(&var.backend, &var.param, p, threads, gemm.gflops);
    let mut row = Row {
        label: var.label.clone(),
        exactness: String::new(),
        rec,
        frontier: var.frontier_only,
        err_max_abs: None,
        err_max_rel: None,
        err_vs: String::new(),
    };
    let backend: Box<dyn Attention> = match attnkit::backend_with(&var.backend, &var.opts) {
        Ok(b) => b,
        Err(e) => {
            row.rec = row.rec.with_status("error", e.to_string());
            return Ok((row, None));
        }
    };
    row.exactness = backend.exactness().to_string();
    row.rec = row.rec.clone().on_device(backend.device());
    if let Some(reason) = skip_reason(backend.as_ref(), p) {
        row.rec = row.rec.clone().with_status("skipped", reason);
        return Ok((row, None));
    }
    if var.backend == "reference" && n > cfg.reference_max_n {
        row.rec = row
            .rec
            .clone()
            .with_status("skipped", format!("reference (f64 oracle) is timed only up to N = {}", cfg.reference_max_n));
        return Ok((row, None));
    }
    // Memory before time: a run the budget refuses is reported with the bytes it would need
    // (e.g. sdpa at 64K needs 128 GiB), not with an extrapolated time.
    if let Err(e) = attnkit::budget::check_budget(backend.name(), "its working set", backend.working_bytes(p)) {
        row.rec = row.rec.clone().with_status("skipped", e.to_string());
        return Ok((row, None));
    }
    if let Some((_, _, n0, t0)) = last.iter().find(|(l, c, _, _)| *l == var.label && *c == p.causal) {
        let e = expected_exponent(backend.as_ref(), p);
        let t = extrapolate(*n0, *t0, n, e);
        if t > cfg.run_budget_s {
            row.rec = row.rec.clone().with_status(
                "skipped",
                format!(
                    "time budget: predicted {} (from {} at N={n0}, ∝ N^{e}) > {} per run",
                    fmt_secs(t),
                    fmt_secs(*t0),
                    fmt_secs(cfg.run_budget_s)
                ),
            );
            return Ok((row, None));
        }
    }
    let args = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref())?;
    let mut out = vec![0.0f32; p.out_len()];
    match measure_into(backend.as_ref(), &args, cfg.reps, cfg.run_budget_s / 2.0, &mut out) {
        Ok(m) => {
            row.rec = row.rec.clone().with_measurement(p, &m);
            if out.iter().any(|x| !x.is_finite()) {
                row.rec.reason = "output has non-finite values".into();
            }
            Ok((row, Some(out)))
        }
        Err(e) if is_skip(&e) => {
            row.rec = row.rec.clone().with_status("skipped", e.to_string());
            Ok((row, None))
        }
        Err(e) => {
            row.rec = row.rec.clone().with_status("error", e.to_string());
            Ok((row, None))
        }
    }
}

#[derive(Serialize)]
struct Meta {
    command: String,
    date_utc: String,
    cpu: String,
    cores: usize,
    threads: usize,
    quick: bool,
    gemm: GemmCeiling,
    dim: usize,
    heads: usize,
    batch: usize,
    dtype: String,
    seed: u64,
    reps: usize,
    run_budget_s: f64,
    oracle_max_n: usize,
    mem_budget_bytes: u64,
    elapsed_s: f64,
    unavailable: Vec<String>,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown (no /proc/cpuinfo model name)".into())
}

/// Today's UTC date and time from the system clock (civil-from-days, no date crate needed).
fn utc_date() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn write_results(dir: &Path, meta: &Meta, rows: &[Row]) -> Result<(), AttnError> {
    let json = serde_json::json!({ "meta": meta, "results": rows });
    let text = serde_json::to_string_pretty(&json).map_err(|e| AttnError::invalid(format!("json: {e}")))?;
    std::fs::write(dir.join("results.json"), text)?;
    let mut csv = String::from(
        "label,backend,variant,exactness,device,seq,seq_kv,dim,heads,batch,causal,window,dtype,threads,status,reps,timing,median_s,gflops,gemm_gflops,gemm_fraction,peak_bytes,err_max_abs,err_max_rel,err_vs,frontier,reason\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:e}")).unwrap_or_default();
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for r in rows {
        let c = &r.rec;
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            quote(&r.label),
            c.backend,
            quote(&c.variant),
            r.exactness,
            c.device,
            c.seq,
            c.seq_kv,
            c.dim,
            c.heads,
            c.batch,
            c.causal,
            quote(&c.window),
            c.dtype,
            c.threads,
            c.status,
            c.reps,
            c.timing.map(|t| format!("{t:?}").to_lowercase()).unwrap_or_default(),
            opt(c.median_s),
            opt(c.gflops),
            format_args!("{:e}", c.gemm_gflops),
            opt(c.gemm_fraction),
            c.peak_bytes.map(|b| b.to_string()).unwrap_or_default(),
            opt(r.err_max_abs),
            opt(r.err_max_rel),
            quote(&r.err_vs),
            r.frontier,
            quote(&c.reason),
        );
    }
    std::fs::write(dir.join("results.csv"), csv)?;
    Ok(())
}

/// Least-squares slope of log y against log x over points with x ≥ `min_x` and y > 0.
fn loglog_slope(points: &[(f64, f64)], min_x: f64) -> Option<f64> {
    let pts: Vec<(f64, f64)> =
        points.iter().filter(|(x, y)| *x >= min_x && *y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Sweep rows (not frontier-only) for one label and causal flag, measured ones only, by N.
fn series<'a>(rows: &'a [Row], label: &str, causal: bool) -> Vec<&'a Row> {
    rows.iter().filter(|r| !r.frontier && r.label == label && r.rec.causal == causal && r.rec.status == "ok").collect()
}

fn sweep_labels(rows: &[Row]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| !r.frontier) {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
    }
    labels
}

fn write_plots(dir: &Path, rows: &[Row], heat: &Heatmaps) -> Result<Vec<String>, AttnError> {
    let labels = sweep_labels(rows);
    let mut notes = Vec::new();
    let panel = |causal: bool, f: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        labels
            .iter()
            .map(|l| Series {
                label: l.clone(),
                points: series(rows, l, causal).iter().filter_map(|r| f(r).map(|y| (r.rec.seq as f64, y))).collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let time = |r: &Row| r.rec.median_s;
    let mem = |r: &Row| r.rec.peak_bytes.map(|b| b as f64 / (1u64 << 20) as f64).filter(|m| *m > 0.0);
    let err = |r: &Row| r.err_max_abs.filter(|e| *e > 0.0);
    for (file, title, ylabel, f) in [
        ("time_vs_n.svg", "median time vs N (D=64, H=8)", "seconds", &time as &dyn Fn(&Row) -> Option<f64>),
        ("memory_vs_n.svg", "peak extra heap vs N", "MiB", &mem),
        ("error_vs_n.svg", "max abs error vs N (head 0; see README for the comparator)", "max abs error", &err),
    ] {
        let panels = vec![("non-causal".to_string(), panel(false, f)), ("causal".to_string(), panel(true, f))];
        match plots::loglog_panels(&dir.join(file), title, "N", ylabel, &panels) {
            Ok(()) => notes.push(file.to_string()),
            Err(e) => notes.push(format!("{file}: not drawn ({e})")),
        }
    }
    let frontier_panels: Vec<plots::FrontierPanel> = FRONTIER_NS
        .iter()
        .flat_map(|&n| [(n, false), (n, true)])
        .map(|(n, causal)| {
            let pts = rows
                .iter()
                .filter(|r| {
                    r.rec.seq == n
                        && r.rec.causal == causal
                        && r.rec.status == "ok"
                        && (r.frontier || r.exactness == "exact")
                        && r.label != "reference"
                })
                .filter_map(|r| Some((r.label.clone(), r.err_max_abs.filter(|e| *e > 0.0)?, r.rec.median_s?)))
                .collect();
            (format!("N={n}{}", if causal { ", causal" } else { "" }), pts)
        })
        .collect();
    match plots::frontier(&dir.join("error_vs_speed.svg"), &frontier_panels) {
        Ok(()) => notes.push("error_vs_speed.svg".into()),
        Err(e) => notes.push(format!("error_vs_speed.svg: not drawn ({e})")),
    }
    if !heat.panels.is_empty() {
        match plots::heatmaps(&dir.join("weights_heatmap.svg"), heat.n, &heat.panels) {
            Ok(()) => notes.push("weights_heatmap.svg".into()),
            Err(e) => notes.push(format!("weights_heatmap.svg: not drawn ({e})")),
        }
    }
    Ok(notes)
}

struct Heatmaps {
    n: usize,
    panels: Vec<(String, Vec<f32>)>,
    notes: Vec<String>,
}

/// Structured N = D = 64 input: q_i = k_i = sinusoidal position features (dot product peaks at
/// i = j and decays with |i − j|) plus a "sink" block that makes every query attend key 0.
/// V = I, so output row i is the backend's effective attention-weight row i.
fn heatmaps(available: &[(String, Exactness)]) -> Heatmaps {
    const N: usize = 64;
    let p = Problem::new(1, 1, N, N).with_scale(1.0);
    let (mut q, mut k) = (vec![0.0f32; N * N], vec![0.0f32; N * N]);
    let pairs = 28;
    for i in 0..N {
        for t in 0..pairs {
            let w = 0.03 + 0.012 * t as f32;
            let (s, c) = (w * i as f32).sin_cos();
            let a = 0.42;
            q[i * N + 2 * t] = a * c;
            q[i * N + 2 * t + 1] = a * s;
            k[i * N + 2 * t] = a * c;
            k[i * N + 2 * t + 1] = a * s;
        }
        for t in 2 * pairs..N {
            q[i * N + t] = 0.6;
        }
    }
    k[2 * pairs..N].fill(0.6);
    let mut v = vec![0.0f32; N * N];
    for i in 0..N {
        v[i * N + i] = 1.0;
    }
    let mut panels = Vec::new();
    let mut notes = Vec::new();
    let has = |n: &str| available.iter().any(|(a, _)| a == n);
    let cases: Vec<(&str, String, BackendOptions, Option<Window>)> = vec![
        ("reference", "exact".into(), BackendOptions::default(), None),
        ("local", "local (w=8)".into(), BackendOptions::default(), Some(Window::new(8, 8))),
        ("linformer", "linformer (k=16)".into(), BackendOptions { proj_dim: Some(16), ..Default::default() }, None),
        ("performer", "performer (m=64)".into(), BackendOptions { features: Some(64), ..Default::default() }, None),
    ];
    for (name, title, opts, window) in cases {
        if !has(name) {
            notes.push(format!("{title}: backend `{name}` not available in this build"));
            continue;
        }
        let pw = match window {
            Some(w) => p.clone().with_window(w),
            None => p.clone(),
        };
        let res = AttnArgs::new(&pw, &q, &k, &v)
            .and_then(|args| attnkit::backend_with(name, &opts).and_then(|b| b.forward(&args, false)));
        match res {
            Ok(o) => panels.push((title, o.out)),
            Err(e) => notes.push(format!("{title}: {e}")),
        }
    }
    Heatmaps { n: N, panels, notes }
}

fn readme(meta: &Meta, rows: &[Row], heat: &Heatmaps, plot_notes: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# attnkit report\n");
    let _ = writeln!(s, "- Machine: {} ({} logical cores), {} thread(s) used", meta.cpu, meta.cores, meta.threads);
    let _ = writeln!(s, "- Date: {}", meta.date_utc);
    let _ = writeln!(s, "- Command: `{}`", meta.command);
    let _ = writeln!(s, "- Took: {}", fmt_secs(meta.elapsed_s));
    let _ = writeln!(
        s,
        "- Problem: B={}, H={}, D={}, {} inputs, standard normal (seed {}), N_q = N_k = N, non-causal and causal",
        meta.batch, meta.heads, meta.dim, meta.dtype, meta.seed
    );
    let _ = writeln!(
        s,
        "- GEMM ceiling (same run, same threads): {}×{}×{} f32 sgemm, median of 5 = {}, **{:.1} GFLOP/s**",
        meta.gemm.m,
        meta.gemm.n,
        meta.gemm.k,
        fmt_secs(meta.gemm.median_s),
        meta.gemm.gflops
    );
    let _ = writeln!(
        s,
        "- Timing: one warm-up, then up to {} reps (median); per-run time budget {}: a run is skipped when its \
         time extrapolated from the previous N (∝ N² for exact full attention, ∝ N for linear-time methods) exceeds it. \
         Memory budget {:.1} GiB (backends refuse larger working sets).",
        meta.reps,
        fmt_secs(meta.run_budget_s),
        meta.mem_budget_bytes as f64 / (1u64 << 30) as f64
    );
    let _ = writeln!(
        s,
        "- GFLOP/s = FLOPs of exact attention over the allowed (unmasked) pairs, 4·D per pair, / median time — the same \
         count for every backend, so for approximations it is an *effective* rate. %GEMM = GFLOP/s ÷ the ceiling."
    );
    let _ = writeln!(
        s,
        "- Peak = heap bytes allocated above what was live before the first call (inputs and output excluded), from a counting global allocator."
    );
    let _ = writeln!(
        s,
        "- Error: max |O − O_ref| on head 0. For N ≤ {} against the f64 oracle; above that against flash-cpu (or sdpa when flash-cpu \
         is absent) — see the *error vs* column. Approximations and `local` are compared with *full* attention, so their error is the approximation error.",
        meta.oracle_max_n
    );
    if !meta.unavailable.is_empty() {
        let _ = writeln!(s, "- Unavailable here: {}", meta.unavailable.join("; "));
    }
    let _ = writeln!(s, "- `auto` is not swept separately (it forwards to one of the exact backends).\n");

    let _ = writeln!(s, "## Reading\n");
    for line in reading(rows) {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Plots\n");
    for n in plot_notes {
        if n.ends_with(".svg") {
            let _ = writeln!(s, "![{n}]({n})\n");
        } else {
            let _ = writeln!(s, "- {n}");
        }
    }
    if !heat.notes.is_empty() {
        let _ = writeln!(s, "Heatmap notes: {}\n", heat.notes.join("; "));
    }
    let _ = writeln!(
        s,
        "The heatmaps show effective attention weights on one structured input (N = D = 64, position-like Q = K \
         with a sink at key 0, V = I so output row i is weight row i), computed through the public trait.\n"
    );

    let _ = writeln!(s, "## Scaling (least-squares log-log slopes over N ≥ 1024)\n");
    let _ = writeln!(s, "| backend | causal | time slope | memory slope | points |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for l in sweep_labels(rows) {
        for causal in [false, true] {
            let sr = series(rows, &l, causal);
            let t: Vec<(f64, f64)> = sr.iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.median_s?))).collect();
            let m: Vec<(f64, f64)> =
                sr.iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.peak_bytes? as f64))).collect();
            let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
            let npts = t.iter().filter(|(x, _)| *x >= 1024.0).count();
            let _ = writeln!(
                s,
                "| {l} | {} | {} | {} | {npts} |",
                if causal { "yes" } else { "no" },
                f(loglog_slope(&t, 1024.0)),
                f(loglog_slope(&m, 1024.0))
            );
        }
    }
    let _ = writeln!(s);

    let _ = writeln!(
        s,
        "## Crossovers (smallest swept N from which the approximation is faster at every larger measured N)\n"
    );
    for line in crossovers(rows) {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Accuracy–speed frontier (N ∈ {{1024, 4096}})\n");
    let _ = writeln!(s, "| N | causal | variant | median | max abs error | error vs | status |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows.iter().filter(|r| {
        r.frontier || (FRONTIER_NS.contains(&r.rec.seq) && r.exactness == "exact" && r.label != "reference")
    }) {
        if !FRONTIER_NS.contains(&r.rec.seq) {
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.rec.seq,
            if r.rec.causal { "yes" } else { "no" },
            r.label,
            r.rec.median_s.map(fmt_secs).unwrap_or_else(|| "–".into()),
            r.err_max_abs.map(|e| format!("{e:.2e}")).unwrap_or_else(|| "–".into()),
            r.err_vs,
            status_text(r)
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Results per backend\n");
    for l in sweep_labels(rows) {
        let _ = writeln!(s, "### {l}\n");
        let _ =
            writeln!(s, "| N | causal | median | GFLOP/s | % GEMM | peak MiB | max abs error | error vs | status |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in rows.iter().filter(|r| !r.frontier && r.label == l) {
            let c = &r.rec;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.seq,
                if c.causal { "yes" } else { "no" },
                c.median_s.map(fmt_secs).unwrap_or_else(|| "–".into()),
                c.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "–".into()),
                c.gemm_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or_else(|| "–".into()),
                if c.status == "ok" { fmt_mib(c.peak_bytes) } else { "–".into() },
                r.err_max_abs.map(|e| format!("{e:.2e}")).unwrap_or_else(|| "–".into()),
                if r.err_vs.is_empty() { "–" } else { &r.err_vs },
                status_text(r)
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Raw data: [results.json](results.json), [results.csv](results.csv).");
    s
}

fn status_text(r: &Row) -> String {
    match r.rec.status.as_str() {
        "ok" if r.rec.reason.is_empty() => format!("ok ({} reps)", r.rec.reps),
        "ok" => format!("ok ({} reps) — {}", r.rec.reps, r.rec.reason),
        st => format!("{st}: {}", r.rec.reason.replace('|', "/")),
    }
}

/// Approximations vs exact backends: from which N the approximation is faster.
fn crossovers(rows: &[Row]) -> Vec<String> {
    let labels = sweep_labels(rows);
    let exacts: Vec<&String> = labels.iter().filter(|l| *l == "flash-cpu" || *l == "sdpa").collect();
    let approx: Vec<&String> = labels
        .iter()
        .filter(|l| rows.iter().any(|r| &r.label == *l && (r.exactness == "approx" || r.rec.backend == "local")))
        .collect();
    let mut out = Vec::new();
    for a in &approx {
        for e in &exacts {
            for causal in [false, true] {
                let sa = series(rows, a, causal);
                let se = series(rows, e, causal);
                let common: Vec<(usize, f64, f64)> = sa
                    .iter()
                    .filter_map(|ra| {
                        let re = se.iter().find(|re| re.rec.seq == ra.rec.seq)?;
                        Some((ra.rec.seq, ra.rec.median_s?, re.rec.median_s?))
                    })
                    .collect();
                let mode = if causal { "causal" } else { "non-causal" };
                if common.is_empty() {
                    out.push(format!("{a} vs {e} ({mode}): no N where both were measured"));
                    continue;
                }
                // Smallest N from which the approximation is faster at every larger common N.
                let mut from = None;
                for (i, &(n, _, _)) in common.iter().enumerate() {
                    if common[i..].iter().all(|&(_, ta, te)| ta < te) {
                        from = Some(n);
                        break;
                    }
                }
                let (lo, hi) = (common[0].0, common[common.len() - 1].0);
                let line = match from {
                    Some(n) if n == lo => format!("{a} vs {e} ({mode}): {a} is faster at every measured N ({lo}–{hi})"),
                    Some(n) => format!("{a} vs {e} ({mode}): {a} overtakes {e} at N = {n} (measured {lo}–{hi})"),
                    None => format!("{a} vs {e} ({mode}): {e} stays faster or ties up to N = {hi}"),
                };
                out.push(line);
            }
        }
    }
    if out.is_empty() {
        out.push("no approximation and exact (flash-cpu/sdpa) pair was measured".into());
    }
    out
}

/// Plain-language observations generated from the numbers.
fn reading(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let ok: Vec<&Row> = rows.iter().filter(|r| r.rec.status == "ok" && !r.frontier).collect();
    // Fastest exact at the largest N where ≥ 2 exact backends were measured (non-causal).
    let mut ns: Vec<usize> = ok.iter().map(|r| r.rec.seq).collect();
    ns.sort_unstable();
    ns.dedup();
    for &n in ns.iter().rev() {
        let mut ex: Vec<&&Row> = ok
            .iter()
            .filter(|r| r.rec.seq == n && !r.rec.causal && r.exactness == "exact" && r.rec.backend != "local")
            .collect();
        if ex.len() >= 2 {
            ex.sort_by(|a, b| a.rec.median_s.unwrap_or(f64::MAX).total_cmp(&b.rec.median_s.unwrap_or(f64::MAX)));
            let (f, s) = (ex[0], ex[1]);
            out.push(format!(
                "At N = {n} (largest N with two exact backends measured, non-causal), `{}` took {} vs `{}` {} ({:.1}× faster).",
                f.label,
                fmt_secs(f.rec.median_s.unwrap_or(0.0)),
                s.label,
                fmt_secs(s.rec.median_s.unwrap_or(0.0)),
                s.rec.median_s.unwrap_or(0.0) / f.rec.median_s.unwrap_or(1.0)
            ));
            break;
        }
    }
    if let Some(best) = ok
        .iter()
        .filter(|r| r.exactness == "exact")
        .max_by(|a, b| a.rec.gemm_fraction.unwrap_or(0.0).total_cmp(&b.rec.gemm_fraction.unwrap_or(0.0)))
    {
        out.push(format!(
            "The highest fraction of the GEMM ceiling among exact backends is {:.0}% (`{}`, N = {}{}).",
            100.0 * best.rec.gemm_fraction.unwrap_or(0.0),
            best.label,
            best.rec.seq,
            if best.rec.causal { ", causal" } else { "" }
        ));
        if best.rec.gemm_fraction.unwrap_or(0.0) > 1.0 {
            out.push(
                "Above 100% means the fused attention kernel beat the square sgemm used as the ceiling in this run \
                 (its tiles stay in cache; machine noise between the two measurements also moves it by ±10%)."
                    .to_string(),
            );
        }
    }
    for l in sweep_labels(rows) {
        let t: Vec<(f64, f64)> =
            series(rows, &l, false).iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.median_s?))).collect();
        let m: Vec<(f64, f64)> =
            series(rows, &l, false).iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.peak_bytes? as f64))).collect();
        if let Some(st) = loglog_slope(&t, 1024.0) {
            let kind = if st > 1.6 {
                "close to quadratic"
            } else if st < 1.4 {
                "close to linear"
            } else {
                "between linear and quadratic"
            };
            let mem = loglog_slope(&m, 1024.0).map(|sm| format!(", memory ∝ N^{sm:.2}")).unwrap_or_default();
            out.push(format!("`{l}` (non-causal): time ∝ N^{st:.2} over N ≥ 1024 ({kind}){mem}."));
        }
    }
    let skipped: Vec<String> = rows
        .iter()
        .filter(|r| r.rec.status == "skipped" && r.rec.reason.contains("would need"))
        .map(|r| format!("`{}` at N = {}{}", r.label, r.rec.seq, if r.rec.causal { " (causal)" } else { "" }))
        .collect();
    if !skipped.is_empty() {
        out.push(format!("Refused by the memory budget: {}.", skipped.join(", ")));
    }
    for n in FRONTIER_NS {
        let fr: Vec<&Row> =
            rows.iter().filter(|r| r.frontier && r.rec.seq == n && !r.rec.causal && r.err_max_abs.is_some()).collect();
        if fr.is_empty() {
            continue;
        }
        let best =
            fr.iter().min_by(|a, b| a.err_max_abs.unwrap_or(f64::MAX).total_cmp(&b.err_max_abs.unwrap_or(f64::MAX)));
        let fastest =
            fr.iter().min_by(|a, b| a.rec.median_s.unwrap_or(f64::MAX).total_cmp(&b.rec.median_s.unwrap_or(f64::MAX)));
        if let (Some(b), Some(f)) = (best, fastest) {
            out.push(format!(
                "At N = {n} (non-causal), the most accurate approximation is `{}` (max abs error {:.2e}, {}); the fastest is `{}` ({}, error {:.2e}).",
                b.label,
                b.err_max_abs.unwrap_or(0.0),
                fmt_secs(b.rec.median_s.unwrap_or(0.0)),
                f.label,
                fmt_secs(f.rec.median_s.unwrap_or(0.0)),
                f.err_max_abs.unwrap_or(0.0)
            ));
        }
    }
    if out.is_empty() {
        out.push("Too few measurements for any observation.".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_power_law_is_its_exponent() {
        let pts: Vec<(f64, f64)> = [512.0, 1024.0, 2048.0, 4096.0].iter().map(|&n: &f64| (n, 3.0 * n * n)).collect();
        assert!((loglog_slope(&pts, 1024.0).unwrap() - 2.0).abs() < 1e-9);
        assert!(loglog_slope(&pts[..2], 1024.0).is_none());
    }

    #[test]
    fn utc_date_is_well_formed() {
        let d = utc_date();
        assert!(d.len() == 20 && d.ends_with("UTC") && d.starts_with("20"), "{d}");
    }
}
