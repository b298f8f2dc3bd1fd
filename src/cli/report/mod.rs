//! `attnkit report`: sweep every available backend over N and write reports/.
//!
//! What runs (the shared plan, [`attnkit::bench::plan`]: D = 64, H = 8, B = 1, f32, causal and
//! non-causal):
//! - the sweep: N = 256 … 65536 (`--quick`: … 8192), every available registered backend
//!   except `auto` (it only forwards to one of the others) at its default options; `local`
//!   gets a window of w = 256 ((w, w), or (w, 0) when causal) because it needs one;
//! - the sweep runs on one input family (`--inputs`, default `normal`);
//! - the frontier: at N ∈ {1024, 4096}, non-causal, the frontier variants of the plan (nystrom m,
//!   linformer pooled/gaussian k, performer softmax/relu m, local w) on every input family
//!   (the sweep's own from the sweep, the others in cells of their own with the comparators),
//!   each with its relative error beside the mean-of-V baseline's, for the per-family
//!   accuracy–speed plot and tables;
//! - the weight heatmaps: one N = D = 64 input per family (Q, K of the family, V = I), effective
//!   N×N weights per backend, read off as the output for V = I through the public trait.
//!
//! Errors are measured on head 0: against the f64 oracle for N ≤ the oracle limit, beyond
//! that against the flash-cpu (or sdpa) output of the same cell, and the table says which.
//! Approximations (and `local`) are compared with *full* attention of the sweep problem, so
//! their error is the approximation error. Runs are skipped, with the reason recorded, when
//! the backend is unavailable/unsupported, when it refuses the memory budget, or when its
//! time extrapolated from the previous N (N², or N for linear-time methods) exceeds the
//! per-run budget; a run whose output holds NaN/Inf is an error and is not drawn.
//!
//! - decode and bf16 ([`decode`]): `flash-cpu` decode GB/s against N_k beside the streaming-read
//!   ceiling (and PyTorch when `ATTNKIT_TORCH_PYTHON`/`ATTNKIT_PEERS` are set), bf16 vs f32 prefill;
//! - masks and varlen speed ([`masks`]): modifier, packed-varlen and block-sparse-mask costs as
//!   ratios measured alternately, each against its target;
//! - backward ([`backward`]): forward + backward time against N for `flash-cpu` and `sdpa`, the
//!   backward's fraction of the GEMM ceiling, and PyTorch's forward + backward when configured.
//!
//! Modules: [`sweep`] runs the cells, [`results`] holds the rows and writes JSON/CSV,
//! [`analysis`] reads them (slopes, crossovers, observations), [`figures`] and [`plots`] draw,
//! [`markdown`] writes README.md, [`meta`] describes the run, [`swap`] replaces the folder, [`section`] runs the two extra sections' cases,
//! [`replot`] redraws the plots from a written results.json (`--replot`).

mod analysis;
mod backward;
mod decode;
mod decode_common;
mod decode_kvcache;
mod decode_target;
mod figures;
mod frontier_plot;
mod heatmap;
mod markdown;
mod masks;
mod meta;
#[cfg(test)]
mod plot_tests;
mod plots;
mod replot;
mod results;
mod section;
mod swap;
mod sweep;

use crate::cli::fmt_secs;
use attnkit::bench::plan::{DIM, HEADS, SEED};
use attnkit::bench::{LazyCeiling, Status, SweepPlan};
use attnkit::inputs::InputFamily;
use attnkit::threads::with_threads;
use attnkit::{AttnError, DType};
use clap::Args;
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
    /// Largest N of the sweep (default 65536, or 8192 with --quick); powers of 2 from 256. It
    /// also caps every N of the decode and masks sections (decode keeps N_k = 1024).
    #[arg(long)]
    pub max_n: Option<usize>,
    /// Input family of the sweep, seeded: normal, structured[:S], local-global. The frontier
    /// runs on every family regardless.
    #[arg(long, default_value = "normal", value_parser = crate::cli::parse_named::<InputFamily>)]
    pub inputs: InputFamily,
    /// Measure nothing: redraw the SVG plots in --out from its results.json (README.md and the
    /// raw files stay as they are).
    #[arg(long)]
    pub replot: bool,
}

pub fn run(a: &ReportArgs) -> Result<ExitCode, AttnError> {
    if a.replot {
        outln!("{}", replot::run(&a.out)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut plan = SweepPlan::report(a.quick);
    plan.inputs = a.inputs;
    let cfg = sweep::Config {
        reps: if a.quick { 3 } else { 5 },
        run_budget_s: a.max_run_time.unwrap_or(if a.quick { 6.0 } else { 120.0 }),
        oracle_max_n: 2048,
    };
    if let Some(m) = a.max_n {
        if m < 256 {
            return Err(AttnError::invalid(format!("--max-n must be ≥ 256, got {m}")));
        }
        plan.ns.retain(|&n| n <= m);
    }
    if cfg.run_budget_s.is_nan() || cfg.run_budget_s <= 0.0 {
        return Err(AttnError::invalid("--max-run-time must be > 0"));
    }
    let tmp = swap::temp_sibling(&a.out, "tmp")?;
    std::fs::create_dir_all(&tmp)?;
    let scale = section::Scale { quick: a.quick, cap: a.max_n };
    let summary = match with_threads(a.threads, || generate(&plan, &cfg, &scale, &tmp)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) | Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    swap::replace_dir(&tmp, &a.out)?;
    outln!("{summary}")?;
    outln!("report written to {}", a.out.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the sweep and writes every artefact into `dir`; returns the one-line summary.
fn generate(plan: &SweepPlan, cfg: &sweep::Config, scale: &section::Scale, dir: &Path) -> Result<String, AttnError> {
    let started = Instant::now();
    let threads = rayon::current_num_threads();
    let infos = attnkit::list_backends();
    let available: Vec<&str> =
        infos.iter().filter(|b| b.unavailable_reason.is_none()).map(|b| b.name.as_str()).collect();
    let unavailable: Vec<String> =
        infos.iter().filter_map(|b| b.unavailable_reason.as_ref().map(|r| format!("`{}`: {r}", b.name))).collect();
    let ceiling = LazyCeiling::standard();
    let mut load = Vec::new();
    meta::sample_load(&mut load, "sweep");
    let rows = sweep::sweep(plan, &plan.variants(&available), cfg, &ceiling)?;
    meta::sample_load(&mut load, "decode");
    let dec = decode::run(scale, &ceiling)?;
    meta::sample_load(&mut load, "masks");
    let mask = masks::run(scale, &ceiling)?;
    meta::sample_load(&mut load, "backward");
    let bwd = backward::run(scale, &ceiling)?;
    meta::sample_load(&mut load, "end");
    let heat: Vec<figures::Heatmaps> = plan.families.iter().map(|&f| figures::heatmaps(&available, f)).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let meta = meta::Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date_utc: meta::utc_date(),
        cpu: meta::cpu_model(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        threads,
        quick: scale.quick,
        gemm: ceiling.measured().copied(),
        dim: DIM,
        heads: HEADS,
        batch: 1,
        dtype: DType::F32,
        seed: SEED,
        inputs: plan.inputs,
        families: plan.families.clone(),
        reps: cfg.reps,
        run_budget_s: cfg.run_budget_s,
        oracle_max_n: cfg.oracle_max_n,
        mem_budget_bytes: attnkit::budget::mem_budget(),
        elapsed_s: elapsed,
        load,
        unavailable,
    };
    let sections: Vec<section::SectionRow> = dec.rows.iter().chain(&mask.rows).cloned().collect();
    results::write_results(dir, &meta, &rows, &sections, &bwd.rows)?;
    let plot_notes = figures::write_plots(dir, &rows, &heat)?;
    let decode_plot = decode::plot(dir, &dec);
    let backward_plot = backward::plot(dir, &bwd);
    let extra = format!(
        "{}{}{}",
        decode::markdown(&dec, &decode_plot),
        masks::markdown(&mask, scale),
        backward::markdown(&bwd, &backward_plot)
    );
    std::fs::write(dir.join("README.md"), markdown::readme(&meta, &rows, &heat, &plot_notes, &extra))?;
    let count = |f: fn(&Status) -> bool| rows.iter().filter(|r| f(&r.rec.status)).count();
    let ceiling_text = meta.gemm.map_or("not measured".into(), |g| format!("{:.1} GFLOP/s", g.gflops));
    Ok(format!(
        "report: {} runs measured, {} skipped, {} errors in {}; GEMM ceiling {ceiling_text} on {threads} thread(s)",
        count(|s| matches!(s, Status::Ok)),
        count(|s| matches!(s, Status::Skipped(_))),
        count(|s| matches!(s, Status::Failed(_))),
        fmt_secs(elapsed),
    ))
}
