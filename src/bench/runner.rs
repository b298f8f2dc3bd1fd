//! [`run_cell`]: the one runner `bench`, `report` and benches/scaling.rs share. For one backend
//! on one problem it decides, cheapest first, whether to run at all and then measures:
//!
//! 1. skip: unavailable, unsupported, or left out by the plan;
//! 2. memory: [`Attention::working_bytes`] against [`mem_budget`] (so a refusal is reported with
//!    the bytes it would need, not with an extrapolated time);
//! 3. time: the time extrapolated from the previous N against the per-run budget;
//! 4. measure, then check the output is finite (a NaN output is a failure, never "ok").
//!
//! Inputs and the GEMM ceiling are lazy and made only at step 4, so a refusal costs nothing.

use super::ceiling::LazyCeiling;
use super::fmt_secs;
use super::measure::measure_into;
use super::record::BenchRecord;
use crate::attention::{Attention, AttnArgs, Device, Exactness, PairOwned};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::inputs::InputFamily;
use crate::problem::Problem;
use crate::tensor::Tensor;
use std::sync::OnceLock;

/// True for errors that mean "this backend cannot run this problem here" rather than a bug:
/// unsupported problem, unavailable backend, memory budget.
pub fn is_skip(e: &AttnError) -> bool {
    matches!(e, AttnError::Unsupported { .. } | AttnError::Unavailable { .. } | AttnError::MemoryBudget { .. })
}

/// Why `backend` cannot run `p` here, if it cannot: availability first, then support.
pub fn skip_reason(backend: &dyn Attention, p: &Problem) -> Option<String> {
    if let Err(r) = backend.availability() {
        return Some(format!("unavailable ({r})"));
    }
    let reasons = backend.not_supported_reasons(p);
    (!reasons.is_empty()).then(|| format!("unsupported ({})", reasons.join("; ")))
}

/// The exponent of N that `backend`'s time is expected to grow with on `p`'s family of
/// problems: 2 for exact attention over an unbounded band, 1 for a bounded window or an
/// approximation (linear-time by design).
pub fn expected_exponent(backend: &dyn Attention, p: &Problem) -> f64 {
    let (l, r) = p.effective_window();
    let banded = l.is_some() && r.is_some();
    if backend.exactness() == Exactness::Exact && !banded { 2.0 } else { 1.0 }
}

/// Time predicted at `n` from a measurement `secs` at `n0`, growing as N^`exponent`.
pub fn extrapolate(n0: usize, secs: f64, n: usize, exponent: f64) -> f64 {
    secs * (n as f64 / n0 as f64).powf(exponent)
}

/// The length a problem's time is extrapolated along.
fn length(p: &Problem) -> usize {
    p.seq_q.max(p.seq_k)
}

/// Steps 1 and 2 of [`run_cell`]: why `backend` must not run `p` (unavailable, unsupported,
/// left out by the plan, over the memory budget), judged without inputs. benches/scaling.rs,
/// which times with criterion instead of [`run_cell`], skips by this too.
pub fn refusal(backend: &dyn Attention, p: &Problem, plan_skip: Option<&str>) -> Option<String> {
    if let Some(reason) = skip_reason(backend, p).or_else(|| plan_skip.map(str::to_string)) {
        return Some(reason);
    }
    check_budget(backend.name(), "its working set", backend.working_bytes(p)).err().map(|e| e.to_string())
}

/// Seeded Q, K, V of one input family for one problem shape, generated on first use.
pub struct LazyInputs {
    problem: Problem,
    family: InputFamily,
    seed: u64,
    /// Bias/mask data the problem's modifiers declare (none for plain problems).
    pair: PairOwned,
    cell: OnceLock<(Tensor, Tensor, Tensor)>,
}

impl LazyInputs {
    /// Inputs of `problem`'s shape and dtype from [`crate::inputs::generate`] (`family`, `seed`).
    pub fn new(problem: &Problem, family: InputFamily, seed: u64) -> Self {
        LazyInputs { problem: problem.clone(), family, seed, pair: PairOwned::default(), cell: OnceLock::new() }
    }

    /// The same, with the bias/mask data `problem`'s modifiers need.
    pub fn with_pair(mut self, pair: PairOwned) -> Self {
        self.pair = pair;
        self
    }

    /// The bias/mask data handed to the backend with the inputs.
    pub fn pair(&self) -> &PairOwned {
        &self.pair
    }

    /// The family the inputs are drawn from (recorded in every [`BenchRecord`] of the cell).
    pub fn family(&self) -> InputFamily {
        self.family
    }

    /// Q, K, V, generating them now if this is the first call.
    pub fn get(&self) -> &(Tensor, Tensor, Tensor) {
        self.cell.get_or_init(|| crate::inputs::generate(self.family, &self.problem, self.seed))
    }

    /// Whether they have been generated.
    pub fn generated(&self) -> bool {
        self.cell.get().is_some()
    }
}

/// How hard to try: repetitions and the two time budgets.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Timed repetitions after one warm-up.
    pub reps: usize,
    /// Seconds one measurement may spend on repetitions before it stops early.
    pub max_measure_s: f64,
    /// A cell whose time extrapolated from the previous N exceeds this is skipped.
    pub max_predicted_s: f64,
}

/// One backend (variant) on one problem, with what the caller knows about it.
pub struct Cell<'a> {
    pub backend: &'a dyn Attention,
    /// The variant's parameters (`k=128`, `w=256`), or "".
    pub variant: &'a str,
    pub problem: &'a Problem,
    /// Why the plan leaves this cell out (the oracle's cap), checked with the other skips.
    pub plan_skip: Option<String>,
    /// The last measured (N, seconds) of this variant, for the time extrapolation.
    pub previous: Option<(usize, f64)>,
}

/// A cell's record and, when it ran, the backend's output.
pub struct CellOutcome {
    pub record: BenchRecord,
    pub output: Option<Vec<f32>>,
}

/// Runs one cell: skip → memory → time budget → measure (see the module docs). `inputs` must
/// have `cell.problem`'s shape; `ceiling` is measured on the first CPU cell that runs. Errors
/// only when the inputs do not fit the problem or the ceiling cannot be measured; everything a
/// backend does wrong ends up in the record's status.
pub fn run_cell(cell: &Cell<'_>, inputs: &LazyInputs, ceiling: &LazyCeiling, policy: &Policy) -> Result<CellOutcome> {
    let (b, p) = (cell.backend, cell.problem);
    let record = BenchRecord::new(b.name(), cell.variant, p, Some(b.device()), rayon::current_num_threads())
        .with_inputs(inputs.family());
    let skipped = |reason: String| Ok(CellOutcome { record: record.clone().skipped(reason), output: None });
    if let Some(reason) = refusal(b, p, cell.plan_skip.as_deref()) {
        return skipped(reason);
    }
    if let Some((n0, t0)) = cell.previous {
        let e = expected_exponent(b, p);
        let t = extrapolate(n0, t0, length(p), e);
        if t > policy.max_predicted_s {
            return skipped(format!(
                "time budget: predicted {} (from {} at N={n0}, ∝ N^{e}) > {} per run",
                fmt_secs(t),
                fmt_secs(t0),
                fmt_secs(policy.max_predicted_s)
            ));
        }
    }
    // A GPU row has no CPU-GEMM fraction, so only a CPU cell pays for the ceiling.
    let gemm = if b.device() == Device::Cpu { Some(*ceiling.get()?) } else { ceiling.measured().copied() };
    let (q, k, v) = inputs.get();
    let args = AttnArgs::new_with(p, q.as_ref(), k.as_ref(), v.as_ref(), inputs.pair.as_pair())?;
    let mut out = vec![0.0f32; p.out_len()];
    let record = match measure_into(b, &args, policy.reps, policy.max_measure_s, &mut out) {
        Ok(m) => record.with_measurement(p, &m, gemm.as_ref()),
        Err(e) if is_skip(&e) => return skipped(e.to_string()),
        Err(e) => return Ok(CellOutcome { record: record.failed(e.to_string()), output: None }),
    };
    let non_finite = out.iter().filter(|x| !x.is_finite()).count();
    let record = if non_finite > 0 {
        record.failed(format!("output has {non_finite} non-finite values (of {})", out.len()))
    } else {
        record
    };
    Ok(CellOutcome { record, output: Some(out) })
}

/// The last measured (N, seconds) per (variant label, causal), for [`Cell::previous`].
#[derive(Debug, Default)]
pub struct History {
    last: Vec<(String, bool, usize, f64)>,
}

impl History {
    pub fn previous(&self, label: &str, causal: bool) -> Option<(usize, f64)> {
        self.last.iter().find(|(l, c, _, _)| l == label && *c == causal).map(|&(_, _, n, t)| (n, t))
    }

    /// Remembers `record`'s time under `label` if it was measured and ok.
    pub fn note(&mut self, label: &str, record: &BenchRecord) {
        if let (true, Some(t)) = (record.status.is_ok(), record.median_s) {
            self.last.retain(|(l, c, _, _)| !(l == label && *c == record.causal));
            self.last.push((label.to_string(), record.causal, record.seq.max(record.seq_kv), t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fake::Fake;
    use crate::bench::record::Status;

    const POLICY: Policy = Policy { reps: 2, max_measure_s: 10.0, max_predicted_s: 10.0 };

    fn run(
        backend: &dyn Attention,
        p: &Problem,
        previous: Option<(usize, f64)>,
    ) -> (CellOutcome, LazyInputs, LazyCeiling) {
        let (inputs, ceiling) = (LazyInputs::new(p, InputFamily::Normal, 0), LazyCeiling::new(32, 1));
        let cell = Cell { backend, variant: "", problem: p, plan_skip: None, previous };
        let o = run_cell(&cell, &inputs, &ceiling, &POLICY).unwrap();
        (o, inputs, ceiling)
    }

    /// Before the runner, `bench` generated 6 GB of inputs and measured the ceiling (36 s) before
    /// sdpa refused N = 10⁶ on its memory budget.
    #[test]
    fn a_memory_refusal_comes_before_inputs_and_ceiling() {
        let p = Problem::new(1, 8, 1_000_000, 64);
        let sdpa = crate::backend("sdpa").unwrap();
        let (o, inputs, ceiling) = run(sdpa.as_ref(), &p, None);
        assert!(matches!(&o.record.status, Status::Skipped(r) if r.contains("would need")), "{:?}", o.record.status);
        assert!(!inputs.generated() && ceiling.measured().is_none() && o.output.is_none());
    }

    #[test]
    fn unsupported_and_over_time_budget_are_skipped_without_inputs() {
        let p = Problem::new(1, 1, 64, 8);
        let local = crate::backend("local").unwrap();
        let (o, inputs, _) = run(local.as_ref(), &p, None);
        assert!(matches!(&o.record.status, Status::Skipped(r) if r.starts_with("unsupported")));
        assert!(!inputs.generated());
        let (o, inputs, _) = run(&Fake::cpu(), &p, Some((8, 1.0)));
        assert!(
            matches!(&o.record.status, Status::Skipped(r) if r.starts_with("time budget")),
            "{:?}",
            o.record.status
        );
        assert!(!inputs.generated());
    }

    #[test]
    fn a_measured_cpu_cell_is_ok_with_its_gemm_fraction() {
        let p = Problem::new(1, 1, 16, 8);
        let (o, inputs, ceiling) = run(&Fake::cpu(), &p, None);
        assert!(o.record.status.is_ok() && inputs.generated() && ceiling.measured().is_some());
        assert!(o.record.gemm_fraction.is_some() && o.record.reps == 2);
        let mut h = History::default();
        h.note("fake", &o.record);
        assert_eq!(h.previous("fake", false).map(|(n, _)| n), Some(16));
        assert_eq!(h.previous("fake", true), None);
    }

    /// Before the fix a NaN output stayed "ok" and reached the plots with a finite error.
    #[test]
    fn a_non_finite_output_fails_the_cell() {
        let p = Problem::new(1, 1, 16, 8);
        let nan = Fake { fill: f32::NAN, ..Fake::cpu() };
        let (o, _, _) = run(&nan, &p, None);
        assert!(matches!(&o.record.status, Status::Failed(r) if r.contains("non-finite")), "{:?}", o.record.status);
        assert!(o.record.median_s.is_some(), "the time was measured and stays in the row");
        let mut h = History::default();
        h.note("fake", &o.record);
        assert_eq!(h.previous("fake", false), None, "a failed cell is no basis for extrapolation");
    }

    #[test]
    fn a_gpu_cell_does_not_measure_the_cpu_ceiling() {
        let p = Problem::new(1, 1, 16, 8);
        let (o, _, ceiling) = run(&Fake::cuda(Some(Ok(vec![1e-3]))), &p, None);
        assert!(o.record.status.is_ok());
        assert!(ceiling.measured().is_none() && o.record.gemm_fraction.is_none());
    }
}
