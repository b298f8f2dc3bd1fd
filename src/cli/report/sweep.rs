//! Running the sweep: every variant of the plan on every cell through
//! [`attnkit::bench::run_cell`], and each measured output's error against the f64 oracle (head 0,
//! N ≤ the oracle limit, and in the non-causal frontier cells) or, beyond it, against the comparator's output of the same cell: max
//! abs/rel error, relative Frobenius error, and beside it the relative error of the mean-of-V
//! baseline ([`mean_of_v`]) of the same cell and head.

use super::results::Row;
use attnkit::approx_eval::{mean_of_v, rel_fro};
use attnkit::backends::reference::attention_f64;
use attnkit::bench::plan::{FRONTIER_NS, SEED};
use attnkit::bench::{BenchRecord, Cell, History, LazyCeiling, LazyInputs, Policy, SweepPlan, Variant, run_cell};
use attnkit::validate::compare;
use attnkit::{AttnArgs, AttnError, Problem};
use indicatif::{ProgressBar, ProgressStyle};

/// Reps, time budget and oracle limit of one report run.
pub struct Config {
    pub reps: usize,
    pub run_budget_s: f64,
    /// Largest N at which the f64 oracle (head 0) is computed (and at the frontier N, non-causal).
    pub oracle_max_n: usize,
}

/// Head 0 of batch 0 as a one-head problem: (problem, q, k, v) slices.
fn head0<'a>(p: &Problem, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> (Problem, &'a [f32], &'a [f32], &'a [f32]) {
    let p1 = Problem { batch: 1, heads: 1, kv_heads: 1, ..p.clone() };
    (p1, &q[..p.seq_q * p.head_dim], &k[..p.seq_k * p.head_dim], &v[..p.seq_k * p.head_dim])
}

/// Head 0 of the cell's inputs as f32 vectors (q, k, v), for the oracle and the baseline.
fn head0_inputs(base: &Problem, inputs: &LazyInputs) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (q, k, v) = inputs.get();
    let (nq, nk) = (base.seq_q * base.head_dim, base.seq_k * base.head_dim);
    let head = |t: &attnkit::Tensor, len: usize| {
        let mut x = vec![0.0f32; len];
        t.as_ref().read_f32(0, &mut x);
        x
    };
    (head(q, nq), head(k, nk), head(v, nk))
}

/// Every planned cell ([`SweepPlan::cells`]), comparators first in each.
pub fn sweep(plan: &SweepPlan, vars: &[Variant], cfg: &Config, ceiling: &LazyCeiling) -> Result<Vec<Row>, AttnError> {
    let cells = plan.cells();
    let planned: usize = cells.iter().map(|c| vars.iter().filter(|v| plan.runs_in(v, c)).count()).sum();
    let pb = ProgressBar::new(planned as u64);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    // The per-run budget also caps one measurement at half of it, so a run near the budget
    // still leaves time for the next cell's extrapolation to be meaningful.
    let policy = Policy { reps: cfg.reps, max_measure_s: cfg.run_budget_s / 2.0, max_predicted_s: cfg.run_budget_s };
    let mut history = History::default();
    let mut rows = Vec::new();
    for cell in &cells {
        let (n, causal) = (cell.n, cell.causal);
        let base = plan.base_problem(n, causal);
        let inputs = LazyInputs::new(&base, cell.family, SEED);
        let mut oracle: Option<Vec<f64>> = None;
        let mut comparator: Option<(String, Vec<f64>)> = None;
        // The frontier's errors are all against the oracle, so its exact points have an error too
        // and every family's table compares like with like.
        let frontier_cell = plan.frontier && !causal && FRONTIER_NS.contains(&n);
        // The mean-of-V baseline's relative error against this cell's exact output, once known.
        let mut baseline: Option<f64> = None;
        for var in vars.iter().filter(|v| plan.runs_in(v, cell)) {
            pb.set_message(format!("{} N={n}{} {}", var.label, if causal { " causal" } else { "" }, cell.family));
            let p = var.problem(&base);
            let frontier = var.frontier_only || cell.family != plan.inputs;
            let (mut row, output) = match attnkit::backend_with(&var.backend, &var.opts) {
                Err(e) => {
                    let rec = BenchRecord::new(&var.backend, &var.param, &p, None, rayon::current_num_threads())
                        .with_inputs(cell.family);
                    (row_of(var, frontier, None, rec.failed(e.to_string())), None)
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
                    (row_of(var, frontier, Some(b.exactness()), o.record), o.output)
                }
            };
            history.note(&var.label, &row.rec);
            if let (Some(out), true) = (output, row.rec.status.is_ok()) {
                let head = &out[..n * base.head_dim];
                if oracle.is_none() && (n <= cfg.oracle_max_n || frontier_cell) {
                    let (qf, kf, vf) = head0_inputs(&base, &inputs);
                    let (p1, q1, k1, v1) = head0(&base, &qf, &kf, &vf);
                    oracle = Some(attention_f64(&AttnArgs::new(&p1, q1, k1, v1)?).0);
                }
                let exact = match (&oracle, &comparator) {
                    (Some(o), _) => Some((o, "reference (f64, head 0)".to_string())),
                    (None, Some((cname, cout))) => Some((cout, format!("{cname} (head 0)"))),
                    (None, None) => None,
                };
                if let Some((want, vs)) = exact {
                    if baseline.is_none() {
                        let (qf, kf, vf) = head0_inputs(&base, &inputs);
                        let (p1, q1, k1, v1) = head0(&base, &qf, &kf, &vf);
                        baseline = Some(rel_fro(&mean_of_v(&AttnArgs::new(&p1, q1, k1, v1)?), want));
                    }
                    set_error(&mut row, compare(head, want), vs);
                    row.rel_err = Some(rel_fro(head, want));
                    row.baseline_rel_err = baseline;
                } else if var.is_comparator() {
                    row.err_vs = "(is the comparator)".into();
                    comparator = Some((var.label.clone(), head.iter().map(|&x| x as f64).collect()));
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

/// `frontier`: the row belongs to the frontier only (a frontier variant, or any row of another
/// family's cell), not to the sweep's series and tables.
fn row_of(var: &Variant, frontier: bool, exactness: Option<attnkit::Exactness>, rec: BenchRecord) -> Row {
    Row {
        label: var.label.clone(),
        exactness,
        rec,
        frontier,
        err_max_abs: None,
        err_max_rel: None,
        rel_err: None,
        baseline_rel_err: None,
        err_vs: String::new(),
    }
}

fn set_error(row: &mut Row, s: attnkit::validate::ErrorStats, vs: String) {
    row.err_max_abs = Some(s.max_abs);
    row.err_max_rel = Some(s.max_rel);
    row.err_vs = vs;
}
