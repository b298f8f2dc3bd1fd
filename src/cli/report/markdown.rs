//! The report's README.md: settings, reading, plots, slopes, crossovers, the frontier table and
//! one results table per backend.

use super::analysis::{
    ERROR_BUDGETS, crossovers, equal_error_crossovers, frontier_points, frontier_rows, loglog_slope, reading, sci,
    series, sweep_labels, wins,
};
use super::figures::{Heatmaps, heatmap_file};
use super::meta::Meta;
use super::results::{Row, reason};
use crate::cli::{fmt_mib, fmt_percent, fmt_secs};
use attnkit::approx_eval::pareto;
use attnkit::bench::Status;
use attnkit::bench::plan::FRONTIER_NS;
use attnkit::inputs::InputFamily;
use std::fmt::Write as _;

/// The relative error with its mark (`(!)`: an approximation that does not beat the baseline).
fn rel_err_cell(r: &Row) -> String {
    format!("{}{}", sci(r.rel_err), r.baseline_mark())
}

/// `extra`: the decode and masks sections' markdown, placed before the per-backend tables.
pub fn readme(meta: &Meta, rows: &[Row], heat: &[Heatmaps], plot_notes: &[String], extra: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# attnkit report\n");
    let _ = writeln!(s, "- Machine: {} ({} logical cores), {} thread(s) used", meta.cpu, meta.cores, meta.threads);
    let _ = writeln!(s, "- Date: {}", meta.date_utc);
    let _ = writeln!(s, "- Command: `{}`", meta.command);
    let _ = writeln!(s, "- Took: {}", fmt_secs(meta.elapsed_s));
    if !meta.load.is_empty() {
        let at: Vec<String> = meta.load.iter().map(|l| format!("{} {:.2}", l.at, l.load1)).collect();
        let busy = meta.load.iter().any(|l| l.load1 > meta.threads as f64 + 0.5);
        let _ = writeln!(
            s,
            "- Load average (1 min) as each part started: {}{}",
            at.join(", "),
            if busy {
                format!(
                    " — above the {} thread(s) used: other processes shared the cores, so times are inflated and \
                     same-run ratios noisier than on an idle machine",
                    meta.threads
                )
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        s,
        "- Problem: B={}, H={}, D={}, {} inputs, family `{}` (seed {}; see *Input families*), N_q = N_k = N, non-causal and causal",
        meta.batch, meta.heads, meta.dim, meta.dtype, meta.inputs, meta.seed
    );
    match &meta.gemm {
        Some(g) => writeln!(
            s,
            "- GEMM ceiling (same run, same threads): {}×{}×{} f32 sgemm, median of {} = {}, **{:.1} GFLOP/s**",
            g.m,
            g.n,
            g.k,
            attnkit::bench::GEMM_CEILING_REPS,
            fmt_secs(g.median_s),
            g.gflops
        ),
        None => writeln!(s, "- GEMM ceiling: not measured (no CPU run took place)"),
    }
    .ok();
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
        "- Error: max |O − O_ref| and the relative error ‖O − O_ref‖_F/‖O_ref‖_F on head 0. For N ≤ {} and in the frontier cells (N ∈ {{{}}}, non-causal) against the f64 oracle; above that against flash-cpu (or sdpa when flash-cpu \
         is absent) — see the *error vs* column. Approximations and `local` are compared with *full* attention, so their error is the approximation error.",
        meta.oracle_max_n,
        FRONTIER_NS.map(|n| n.to_string()).join(", ")
    );
    let _ = writeln!(
        s,
        "- Baseline: *mean of V* is uniform attention over each row's allowed keys (O(N·D), no scores), its relative error \
         taken on the same cell, head and reference. **(!)** marks every approximation (or window) whose relative error does \
         not beat it."
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
    for n in plot_notes.iter().filter(|n| !n.starts_with("weights_")) {
        if n.ends_with(".svg") {
            let _ = writeln!(s, "![{n}]({n})\n");
        } else {
            let _ = writeln!(s, "- {n}");
        }
    }
    input_families(&mut s, heat, plot_notes);
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

    frontier(&mut s, rows, &meta.families);
    s.push_str(extra);
    let _ = writeln!(s, "## Results per backend\n");
    for l in sweep_labels(rows) {
        let _ = writeln!(s, "### {l}\n");
        let _ = writeln!(
            s,
            "| N | causal | median | GFLOP/s | % GEMM | peak MiB | max abs error | rel. error | mean-of-V rel. error | error vs | status |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for r in rows.iter().filter(|r| !r.frontier && r.label == l) {
            let c = &r.rec;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.seq,
                if c.causal { "yes" } else { "no" },
                c.median_s.map(fmt_secs).unwrap_or_else(|| "–".into()),
                c.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "–".into()),
                fmt_percent(c.gemm_fraction),
                if c.status.is_ok() { fmt_mib(c.peak_bytes) } else { "–".into() },
                sci(r.err_max_abs),
                rel_err_cell(r),
                sci(r.baseline_rel_err),
                if r.err_vs.is_empty() { "–" } else { &r.err_vs },
                status_text(r)
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Raw data: [results.json](results.json), [results.csv](results.csv).");
    s
}

/// The families, each with its description and heatmap.
fn input_families(s: &mut String, heat: &[Heatmaps], plot_notes: &[String]) {
    let _ = writeln!(s, "## Input families\n");
    let _ = writeln!(
        s,
        "Seeded by the run's seed (`attnkit::inputs`; `bench --inputs`, `check --inputs`, `report --inputs` for the sweep). \
         Each heatmap shows effective attention weights on one input of the family at N = D = 64, one head (Q, K of the \
         family, V = I, so output row i is weight row i), computed through the public trait; red marks negative weights.\n"
    );
    for h in heat {
        let _ = writeln!(s, "### `{}`\n\n{}.\n", h.family, h.family.description());
        let file = heatmap_file(h.family);
        match plot_notes.iter().find(|n| n.starts_with(&file)) {
            Some(n) if *n == file => writeln!(s, "![{file}]({file})\n"),
            Some(n) => writeln!(s, "- {n}\n"),
            None => writeln!(s, "- no heatmap: no backend ran\n"),
        }
        .ok();
        if !h.notes.is_empty() {
            let _ = writeln!(s, "Heatmap notes: {}\n", h.notes.join("; "));
        }
    }
}

/// Per family: where each method wins, the crossover against the comparator at equal error,
/// and the frontier table (every frontier point with its baseline and gain).
fn frontier(s: &mut String, rows: &[Row], families: &[InputFamily]) {
    let ns = FRONTIER_NS.map(|n| n.to_string()).join(", ");
    let _ = writeln!(s, "## Accuracy–speed frontier per input family (N ∈ {{{ns}}}, non-causal)\n");
    let _ = writeln!(
        s,
        "Plot: `error_vs_speed.svg` above. A point is *on the frontier* when no other point of its family and N is both \
         at least as fast and at least as accurate. *Gain* = mean-of-V error ÷ the row's error (> 1: beats the baseline). \
         *At equal error*: for each error budget, the first N at which the fastest approximation within it runs faster \
         than the exact comparator (exact attention's own error is ~1e-7, so the budget is what a reader accepts).\n"
    );
    for &family in families {
        let fr = frontier_rows(rows, family);
        let _ = writeln!(s, "### `{family}`\n");
        if fr.is_empty() {
            let _ = writeln!(s, "No frontier point was measured on this family.\n");
            continue;
        }
        for line in wins(rows, family) {
            let _ = writeln!(s, "- {line}");
        }
        let _ = writeln!(s, "\nAt equal error ({}):\n", ERROR_BUDGETS.map(|e| e.to_string()).join(", "));
        for line in equal_error_crossovers(rows, family) {
            let _ = writeln!(s, "- {line}");
        }
        let on = pareto(&frontier_points(&fr));
        let _ = writeln!(s, "\n| N | variant | median | rel. error | mean-of-V rel. error | gain | on frontier |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (r, on) in fr.iter().zip(on) {
            let gain = r.accuracy().filter(|_| r.approximates()).map_or("–".into(), |a| format!("{:.2}", a.gain()));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {gain} | {} |",
                r.rec.seq,
                r.label,
                r.rec.median_s.map(fmt_secs).unwrap_or_else(|| "–".into()),
                rel_err_cell(r),
                sci(r.baseline_rel_err),
                if on { "yes" } else { "" }
            );
        }
        let _ = writeln!(s);
    }
}

/// A section row's status: `ok (N reps)`, or the status word and its reason.
pub fn status_of(c: &attnkit::bench::BenchRecord) -> String {
    match &c.status {
        Status::Ok => format!("ok ({} reps)", c.reps),
        st => format!("{st}: {}", c.status.reason().replace('|', "/")),
    }
}

/// The status column: `ok (N reps)`, with a device-timing failure when there was one, or the
/// status word and its reason.
pub fn status_text(r: &Row) -> String {
    let why = reason(&r.rec).replace('|', "/");
    match (&r.rec.status, why.is_empty()) {
        (Status::Ok, true) => format!("ok ({} reps)", r.rec.reps),
        (Status::Ok, false) => format!("ok ({} reps) — {why}", r.rec.reps),
        (st, _) => format!("{st}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::report::results::tests::row;
    use attnkit::Exactness;

    #[test]
    fn status_text_says_what_happened() {
        let ok = row("sdpa", Exactness::Exact, 256, false, Some(1e-3), None);
        assert_eq!(status_text(&ok), "ok (1 reps)");
        let mut host = ok.clone();
        host.rec.device_timing_error = Some("no event".into());
        assert_eq!(status_text(&host), "ok (1 reps) — host-timed: device timing failed: no event");
        let failed = Row { rec: ok.rec.clone().failed("output has 2 non-finite values | x"), ..ok.clone() };
        assert_eq!(status_text(&failed), "error: output has 2 non-finite values / x");
        let skipped = row("sdpa", Exactness::Exact, 256, false, None, None);
        assert_eq!(status_text(&skipped), "skipped: time budget");
    }
}
