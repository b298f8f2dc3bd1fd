//! The one sweep plan `attnkit report` and benches/scaling.rs share: which backends are swept,
//! with which options and windows, over which N, and where the f64 oracle stops being timed.
//!
//! This is the only place that knows backends by name for sweeping: `local` needs a window so
//! it gets w = 256 ((w, w), or (w, 0) when causal); `auto` only forwards to another backend so it
//! is not swept; `reference` is timed only up to a cap; `flash-cpu` and `sdpa` run first in each
//! cell so their output can serve as the comparator where the oracle is not computed; the
//! frontier adds nystrom m, linformer pooled/gaussian k, performer softmax/relu m and local w
//! variants at two N, non-causal (nystrom and linformer are bidirectional only), on the sweep's
//! input family and, with the comparators, on every other family of [`SweepPlan::families`].

use crate::inputs::InputFamily;
use crate::options::{BackendOptions, Kernel, Projection};
use crate::problem::{Problem, Window};

/// Head dimension, query heads and input seed of every swept problem (B = 1, f32).
pub const DIM: usize = 64;
pub const HEADS: usize = 8;
pub const SEED: u64 = 0;
/// The window `local` is swept with.
pub const LOCAL_W: i64 = 256;
/// The N at which the accuracy–speed frontier variants run.
pub const FRONTIER_NS: [usize; 2] = [1024, 4096];
/// The f64 oracle: timed only up to [`SweepPlan::reference_max_n`], and no point on the frontier.
pub const ORACLE: &str = "reference";
/// Exact backends whose output stands in for the oracle beyond its limit, in order of preference.
pub const COMPARATORS: [&str; 2] = ["flash-cpu", "sdpa"];
/// Registered backends that only forward to another one, so sweeping them repeats a line.
const NOT_SWEPT: [&str; 1] = ["auto"];

/// One configured backend: a registry name plus options and, for `local`, a window.
#[derive(Clone, Debug)]
pub struct Variant {
    pub backend: String,
    /// `backend` or `backend(param)`, the name in tables and plots.
    pub label: String,
    /// `k=128`, `m=64`, `w=256`, or "".
    pub param: String,
    pub opts: BackendOptions,
    /// Half-width w of the window the variant runs with ((w, w), or (w, 0) when causal).
    pub window: Option<i64>,
    /// Runs only at [`FRONTIER_NS`], non-causal, for the accuracy–speed frontier.
    pub frontier_only: bool,
}

impl Variant {
    fn new(backend: &str, param: String, opts: BackendOptions, window: Option<i64>, frontier_only: bool) -> Self {
        let label = if param.is_empty() { backend.to_string() } else { format!("{backend}({param})") };
        Variant { backend: backend.to_string(), label, param, opts, window, frontier_only }
    }

    /// The problem this variant runs for the sweep problem `base` (its window applied).
    pub fn problem(&self, base: &Problem) -> Problem {
        match self.window {
            Some(w) => base.clone().with_window(Window::new(w, if base.causal { 0 } else { w })),
            None => base.clone(),
        }
    }

    /// Whether its output may stand in for the oracle (a sweep variant of a comparator).
    pub fn is_comparator(&self) -> bool {
        !self.frontier_only && COMPARATORS.contains(&self.backend.as_str())
    }
}

/// N values, oracle cap, input families and whether the frontier variants run.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub ns: Vec<usize>,
    /// Largest N at which `reference` itself is timed.
    pub reference_max_n: usize,
    /// Add the frontier variants at [`FRONTIER_NS`].
    pub frontier: bool,
    /// The input family of the sweep.
    pub inputs: InputFamily,
    /// The families the frontier runs on (the sweep's own included, without repeating it).
    pub families: Vec<InputFamily>,
}

/// One cell of the plan: N, causal, input family.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanCell {
    pub n: usize,
    pub causal: bool,
    pub family: InputFamily,
}

impl SweepPlan {
    /// `attnkit report`: N = 256 … 65536, or … 8192 with `quick` (and the oracle timed to 512).
    pub fn report(quick: bool) -> Self {
        let (top, reference_max_n) = if quick { (13, 512) } else { (16, 2048) };
        SweepPlan {
            ns: (8..=top).map(|e| 1usize << e).collect(),
            reference_max_n,
            frontier: true,
            inputs: InputFamily::Normal,
            families: InputFamily::ALL.to_vec(),
        }
    }

    /// benches/scaling.rs: N = 256 … 4096, the oracle to 512, no frontier.
    pub fn scaling_bench() -> Self {
        SweepPlan {
            ns: (8..=12).map(|e| 1usize << e).collect(),
            reference_max_n: 512,
            frontier: false,
            inputs: InputFamily::Normal,
            families: Vec::new(),
        }
    }

    /// Every cell, in order: the sweep (N ascending, non-causal then causal, on [`Self::inputs`]),
    /// then the frontier N (within the sweep's range) of every other family, non-causal.
    pub fn cells(&self) -> Vec<PlanCell> {
        let family = self.inputs;
        let mut cells: Vec<PlanCell> =
            self.ns.iter().flat_map(|&n| [false, true].map(|causal| PlanCell { n, causal, family })).collect();
        if self.frontier {
            for &family in self.families.iter().filter(|f| **f != self.inputs) {
                let ns = FRONTIER_NS.iter().filter(|n| self.ns.contains(n));
                cells.extend(ns.map(|&n| PlanCell { n, causal: false, family }));
            }
        }
        cells
    }

    /// The sweep problem at `n`: B = 1, H = 8, D = 64, f32, N_q = N_k = n.
    pub fn base_problem(&self, n: usize, causal: bool) -> Problem {
        Problem::new(1, HEADS, n, DIM).with_causal(causal)
    }

    /// The variants for the backends `available` (registry names), comparators first.
    pub fn variants(&self, available: &[&str]) -> Vec<Variant> {
        let seeded = BackendOptions { seed: SEED, ..Default::default() };
        let has = |n: &str| available.contains(&n);
        let mut names: Vec<&str> = available.iter().copied().filter(|n| !NOT_SWEPT.contains(n)).collect();
        names.sort_by_key(|n| COMPARATORS.iter().position(|c| c == n).unwrap_or(COMPARATORS.len()));
        let mut v: Vec<Variant> = names
            .into_iter()
            .map(|name| match name {
                "local" => Variant::new(name, format!("w={LOCAL_W}"), seeded.clone(), Some(LOCAL_W), false),
                _ => Variant::new(name, String::new(), seeded.clone(), None, false),
            })
            .collect();
        if !self.frontier {
            return v;
        }
        if has("nystrom") {
            for m in [32, 64, 128] {
                let o = BackendOptions { landmarks: Some(m), ..seeded.clone() };
                v.push(Variant::new("nystrom", format!("m={m}"), o, None, true));
            }
        }
        if has("linformer") {
            for (projection, k) in [(Projection::Pooled, 64), (Projection::Pooled, 256), (Projection::Gaussian, 256)] {
                let o = BackendOptions { proj_dim: Some(k), projection: Some(projection), ..seeded.clone() };
                let param =
                    if projection == Projection::default() { format!("k={k}") } else { format!("{projection},k={k}") };
                v.push(Variant::new("linformer", param, o, None, true));
            }
        }
        if has("performer") {
            for (kernel, m) in [(Kernel::Softmax, 64), (Kernel::Softmax, 256), (Kernel::Relu, 64), (Kernel::Relu, 256)]
            {
                let o = BackendOptions { features: Some(m), kernel: Some(kernel), ..seeded.clone() };
                let param = if kernel == Kernel::default() { format!("m={m}") } else { format!("{kernel},m={m}") };
                v.push(Variant::new("performer", param, o, None, true));
            }
        }
        if has("local") {
            for w in [64i64, 256] {
                v.push(Variant::new("local", format!("w={w}"), seeded.clone(), Some(w), true));
            }
        }
        v
    }

    /// Whether `var` runs in `cell` at all: sweep variants in every sweep cell, frontier variants
    /// only at [`FRONTIER_NS`] and non-causal; in another family's cells only the frontier
    /// variants and the comparators (the exact points of the frontier).
    pub fn runs_in(&self, var: &Variant, cell: &PlanCell) -> bool {
        let frontier_cell = FRONTIER_NS.contains(&cell.n) && !cell.causal;
        if cell.family != self.inputs {
            return frontier_cell && (var.frontier_only || var.is_comparator());
        }
        !var.frontier_only || frontier_cell
    }

    /// Why the plan leaves `var` out at `n` although it could run (the oracle's cap).
    pub fn plan_skip(&self, var: &Variant, n: usize) -> Option<String> {
        (var.backend == ORACLE && n > self.reference_max_n)
            .then(|| format!("reference (f64 oracle) is timed only up to N = {}", self.reference_max_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparators_first_local_windowed_auto_left_out() {
        let plan = SweepPlan::report(true);
        let vars = plan.variants(&["reference", "sdpa", "flash-cpu", "local", "auto", "linformer"]);
        let labels: Vec<&str> = vars.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(&labels[..5], ["flash-cpu", "sdpa", "reference", "local(w=256)", "linformer"]);
        assert!(!labels.contains(&"auto"));
        assert_eq!(
            labels[5..],
            ["linformer(k=64)", "linformer(k=256)", "linformer(gaussian,k=256)", "local(w=64)", "local(w=256)"]
        );
        let causal = vars[3].problem(&plan.base_problem(1024, true));
        assert_eq!(causal.window, Window::new(256, 0));
        assert!(vars[0].is_comparator() && !vars[2].is_comparator());
        assert!(plan.plan_skip(&vars[2], 1024).is_some() && plan.plan_skip(&vars[2], 512).is_none());
        let cell = |n, causal, family| PlanCell { n, causal, family };
        let normal = InputFamily::Normal;
        assert!(
            plan.runs_in(&vars[5], &cell(1024, false, normal)) && !plan.runs_in(&vars[5], &cell(2048, false, normal))
        );
        assert!(!plan.runs_in(&vars[5], &cell(1024, true, normal)), "the frontier is non-causal");
        let lg = cell(4096, false, InputFamily::LocalGlobal);
        let in_lg: Vec<&str> = vars.iter().filter(|v| plan.runs_in(v, &lg)).map(|v| v.label.as_str()).collect();
        assert_eq!(in_lg[..2], ["flash-cpu", "sdpa"], "comparators, then frontier variants only");
        assert_eq!(in_lg.len(), 7);
        assert_eq!(SweepPlan::scaling_bench().variants(&["local", "linformer"]).len(), 2);
    }

    #[test]
    fn other_families_get_non_causal_cells_at_the_frontier_n_in_range() {
        let mut plan = SweepPlan::report(true);
        let cells = plan.cells();
        assert_eq!(cells.len(), 2 * plan.ns.len() + 2 * FRONTIER_NS.len());
        assert!(cells[2 * plan.ns.len()..].iter().all(|c| !c.causal && c.family != InputFamily::Normal));
        plan.ns.retain(|&n| n <= 2048);
        assert_eq!(plan.cells().len(), 2 * plan.ns.len() + 2, "N = 4096 is beyond --max-n");
        assert_eq!(SweepPlan::scaling_bench().cells().len(), 10);
        let perf = plan.variants(&["performer"]);
        let labels: Vec<&str> = perf.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(
            labels,
            ["performer", "performer(m=64)", "performer(m=256)", "performer(relu,m=64)", "performer(relu,m=256)"]
        );
        assert_eq!(perf[3].opts.kernel, Some(Kernel::Relu));
    }
}
