//! Running the sweep: every variant of the plan on every cell through
//! [`attnkit::bench::run_cell`], and each measured output's error against the f64 oracle (head 0,
//! N ≤ the oracle limit) or, beyond it, against the comparator's output of the same cell.

use super::results::Row;
use attnkit::backends::reference::attention_f64;
use attnkit::bench::plan::SEED;
use attnkit::bench::{BenchRecord, Cell, History, LazyCeiling, LazyInputs, Policy, SweepPlan, Variant, run_cell};
use attnkit::validate::compare;
use attnkit::{AttnArgs, AttnError, Problem};
use indicatif::{ProgressBar, ProgressStyle};

/// Reps, time budget and oracle limit of one report run.
pub struct Config {
    pub reps: usize,
    pub run_budget_s: f64,
    /// Largest N at which the f64 oracle (head 0) is computed.
    pub oracle_max_n: usize,
}

/// Head 0 of batch 0 as a one-head problem: (problem, q, k, v) slices.
fn head0<'a>(p: &Problem, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> (Problem, &'a [f32], &'a [f32], &'a [f32]) {
    let p1 = Problem { batch: 1, heads: 1, kv_heads: 1, ..p.clone() };
    (p1, &q[..p.seq_q * p.head_dim], &k[..p.seq_k * p.head_dim], &v[..p.seq_k * p.head_dim])
}

/// Every planned cell, in order: N ascending, non-causal then causal, comparators first.
pub fn sweep(plan: &SweepPlan, vars: &[Variant], cfg: &Config, ceiling: &LazyCeiling) -> Result<Vec<Row>, AttnError> {
    let cells: Vec<(usize, bool)> = plan.ns.iter().flat_map(|&n| [(n, false), (n, true)]).collect();
    let planned: usize = cells.iter().map(|&(n, _)| vars.iter().filter(|v| plan.runs_at(v, n)).count()).sum();
    let pb = ProgressBar::new(planned as u64);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    // The per-run budget also caps one measurement at half of it, so a run near the budget
    // still leaves time for the next cell's extrapolation to be meaningful.
    let policy = Policy { reps: cfg.reps, max_measure_s: cfg.run_budget_s / 2.0, max_predicted_s: cfg.run_budget_s };
    let mut history = History::default();
    let mut rows = Vec::new();
    for &(n, causal) in &cells {
        let base = plan.base_problem(n, causal);
        let inputs = LazyInputs::new(&base, SEED);
        let mut oracle: Option<Vec<f64>> = None;
        let mut comparator: Option<(String, Vec<f32>)> = None;
        for var in vars.iter().filter(|v| plan.runs_at(v, n)) {
            pb.set_message(format!("{} N={n}{}", var.label, if causal { " causal" } else { "" }));
            let p = var.problem(&base);
            let (mut row, output) = match attnkit::backend_with(&var.backend, &var.opts) {
                Err(e) => {
                    let rec = BenchRecord::new(&var.backend, &var.param, &p, None, rayon::current_num_threads());
                    (row_of(var, None, rec.failed(e.to_string())), None)
                }
                Ok(b) => {
                    let cell = Cell {
                        backend: b.as_ref(),
                        variant: &var.param,
                        problem: &p,
                        plan_skip: plan.plan_skip(var, n),
                        previous: history.previous(&var.label, causal),
                    };
                    let o = run_cell(&cell, &inputs, ceiling, &policy)?;
                    (row_of(var, Some(b.exactness()), o.record), o.output)
                }
            };
            history.note(&var.label, &row.rec);
            if let (Some(out), true) = (output, row.rec.status.is_ok()) {
                let head = &out[..n * base.head_dim];
                if oracle.is_none() && n <= cfg.oracle_max_n {
                    let (q, k, v) = inputs.get();
                    let (qf, kf, vf) = (q.to_f32(), k.to_f32(), v.to_f32());
                    let (p1, q1, k1, v1) = head0(&base, &qf, &kf, &vf);
                    oracle = Some(attention_f64(&AttnArgs::new(&p1, q1, k1, v1)?).0);
                }
                if let Some(o) = &oracle {
                    set_error(&mut row, compare(head, o), "reference (f64, head 0)".into());
                } else if let Some((cname, cout)) = &comparator {
                    let want: Vec<f64> = cout.iter().map(|&x| x as f64).collect();
                    set_error(&mut row, compare(head, &want), format!("{cname} (head 0)"));
                } else if var.is_comparator() {
                    row.err_vs = "(is the comparator)".into();
                    comparator = Some((var.label.clone(), head.to_vec()));
                } else {
                    row.err_vs = "n/a (no oracle or comparator at this N)".into();
                }
            }
            rows.push(row);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(rows)
}

fn row_of(var: &Variant, exactness: Option<attnkit::Exactness>, rec: BenchRecord) -> Row {
    Row {
        label: var.label.clone(),
        exactness,
        rec,
        frontier: var.frontier_only,
        err_max_abs: None,
        err_max_rel: None,
        err_vs: String::new(),
    }
}

fn set_error(row: &mut Row, s: attnkit::validate::ErrorStats, vs: String) {
    row.err_max_abs = Some(s.max_abs);
    row.err_max_rel = Some(s.max_rel);
    row.err_vs = vs;
}
