//! What the report's two extra sections ([`super::decode`], [`super::masks`]) share: their row
//! type (a `flash-cpu` [`BenchRecord`] plus a ratio and a PyTorch time), running a case through
//! [`run_cell`], alternating cases round by round so ratios compare runs taken side by side on
//! a shared machine, and the rows' CSV.

use attnkit::attention::PairOwned;
use attnkit::bench::plan::SEED;
use attnkit::bench::{BenchRecord, Cell, LazyCeiling, LazyInputs, Policy, median, run_cell};
use attnkit::inputs::InputFamily;
use attnkit::{AttnError, Problem};
use serde::Serialize;
use std::fmt::Write as _;

/// How big the sections run: `--quick` picks the smaller sizes, and `--max-n` caps every
/// section's N as it caps the sweep's (so a tiny test report stays tiny).
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub quick: bool,
    pub cap: Option<usize>,
}

impl Scale {
    /// `full` or, with `--quick`, `quick`, capped by `--max-n`.
    pub fn n(&self, full: usize, quick: usize) -> usize {
        let n = if self.quick { quick } else { full };
        self.cap.map_or(n, |c| n.min(c))
    }
}

/// The one backend the sections time.
pub const BACKEND: &str = "flash-cpu";

/// One row of a section: which section, its label, the record, and what it is compared with.
#[derive(Clone, Debug, Serialize)]
pub struct SectionRow {
    /// `decode`, `prefill-bf16` or `masks`.
    pub section: &'static str,
    pub label: String,
    #[serde(flatten)]
    pub rec: BenchRecord,
    /// Median over rounds of this row's time ÷ the time of `ratio_to` in the same round.
    pub ratio: Option<f64>,
    pub ratio_to: String,
    /// PyTorch CPU SDPA on the same shape in the same run (decode rows), when measured.
    pub torch_median_s: Option<f64>,
    /// `Some(rounds measured)` when the time is the median over rounds of cases run in turn
    /// ([`alternate`]); `None` when it is one call's (the median of that call's reps).
    pub rounds: Option<usize>,
}

impl SectionRow {
    pub fn new(section: &'static str, label: impl Into<String>, rec: BenchRecord) -> Self {
        SectionRow {
            section,
            label: label.into(),
            rec,
            ratio: None,
            ratio_to: String::new(),
            torch_median_s: None,
            rounds: None,
        }
    }

    /// Marks a row built from [`alternate`]'s record (whose `reps` counts the rounds).
    pub fn alternated(mut self) -> Self {
        self.rounds = self.rec.status.is_ok().then_some(self.rec.reps);
        self
    }

    /// [`super::markdown::status_of`], counting rounds instead of reps when alternated.
    pub fn status(&self) -> String {
        let s = super::markdown::status_of(&self.rec);
        if self.rounds.is_some() { s.replace("reps", "rounds") } else { s }
    }
}

/// One case of an alternating comparison: one or more problems run back to back whose times
/// add up (the "8 sequences run separately" case has eight).
pub struct Case {
    pub label: String,
    pub parts: Vec<(Problem, LazyInputs)>,
}

impl Case {
    /// A one-problem case on seeded normal inputs, with the bias/mask data `pair`.
    pub fn single(label: impl Into<String>, p: Problem, pair: PairOwned) -> Self {
        let inputs = LazyInputs::new(&p, InputFamily::Normal, SEED).with_pair(pair);
        Case { label: label.into(), parts: vec![(p, inputs)] }
    }
}

/// Runs one `flash-cpu` cell (skip → memory → measure, as everywhere in the report).
pub fn run_one(
    p: &Problem,
    inputs: &LazyInputs,
    ceiling: &LazyCeiling,
    policy: &Policy,
) -> Result<BenchRecord, AttnError> {
    let b = attnkit::backend(BACKEND)?;
    let cell = Cell { backend: b.as_ref(), variant: "", problem: p, plan_skip: None, previous: None };
    Ok(run_cell(&cell, inputs, ceiling, policy)?.record)
}

/// Runs every case `rounds` times in turn (case 0, 1, …, then again), each part a [`run_one`]
/// with `policy`; a case whose part is not ok stops being run. Returns per case its record
/// (the first part's, with the median over rounds of all parts' summed time, their
/// summed FLOPs and `reps` = the rounds measured) and its per-round times.
pub fn alternate(
    cases: &[Case],
    rounds: usize,
    ceiling: &LazyCeiling,
    policy: &Policy,
) -> Result<Vec<(BenchRecord, Vec<f64>)>, AttnError> {
    let mut out: Vec<(Option<BenchRecord>, Vec<f64>)> = cases.iter().map(|_| (None, Vec::new())).collect();
    for _ in 0..rounds.max(1) {
        for (case, (rec, times)) in cases.iter().zip(out.iter_mut()) {
            if rec.as_ref().is_some_and(|r| !r.status.is_ok()) {
                continue;
            }
            let (mut total, mut first) = (0.0, None);
            for (p, inputs) in &case.parts {
                let r = run_one(p, inputs, ceiling, policy)?;
                let ok = r.status.is_ok();
                total += r.median_s.unwrap_or(0.0);
                first.get_or_insert(r.clone());
                if !ok {
                    first = Some(r);
                    break;
                }
            }
            let first = first.ok_or_else(|| AttnError::invalid(format!("case `{}` has no problem", case.label)))?;
            if first.status.is_ok() {
                times.push(total);
            }
            *rec = Some(first);
        }
    }
    Ok(cases
        .iter()
        .zip(out)
        .map(|(case, (rec, times))| {
            let mut rec = rec.expect("every case ran at least once");
            if rec.status.is_ok() {
                // One timed call per round: the row's time is the median over rounds, its rate
                // that of all parts together, and `reps` counts the rounds.
                let flops: f64 = case.parts.iter().map(|(p, _)| p.flops()).sum();
                let t = median(&times);
                rec.median_s = Some(t);
                rec.reps = times.len();
                rec.gflops = Some(flops / t / 1e9);
                rec.gemm_fraction = rec.gemm_gflops.map(|g| flops / t / 1e9 / g);
            }
            (rec, times)
        })
        .collect())
}

/// Median over the rounds both were measured in of `a[i] / b[i]`; `None` when none was.
pub fn round_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let r: Vec<f64> = a.iter().zip(b).filter(|(x, y)| **x > 0.0 && **y > 0.0).map(|(x, y)| x / y).collect();
    (!r.is_empty()).then(|| median(&r))
}

/// A target verdict: `measured 1.07× (target ≤ 1.15×): pass`.
pub fn verdict(ratio: Option<f64>, target: f64, at_most: bool) -> String {
    let cmp = if at_most { "≤" } else { "≥" };
    match ratio {
        None => format!("not measured (target {cmp} {target}×)"),
        Some(r) => {
            let pass = if at_most { r <= target } else { r >= target };
            format!("measured {r:.2}× (target {cmp} {target}×): {}", if pass { "pass" } else { "not met" })
        }
    }
}

/// The sections' rows as CSV: one header line, then one line per row (text quoted).
pub fn csv(rows: &[SectionRow]) -> String {
    let mut s = String::from(
        "section,label,backend,seq,seq_kv,dim,heads,kv_heads,dtype,causal,threads,status,reps,median_s,gflops,bytes_moved,gb_per_s,bandwidth_fraction,bandwidth_gb_per_s,ratio,ratio_to,torch_median_s,reason\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:e}")).unwrap_or_default();
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for r in rows {
        let c = &r.rec;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.section,
            quote(&r.label),
            c.backend,
            c.seq,
            c.seq_kv,
            c.dim,
            c.heads,
            c.kv_heads,
            c.dtype,
            c.causal,
            c.threads,
            c.status,
            c.reps,
            opt(c.median_s),
            opt(c.gflops),
            c.decode.map(|d| d.bytes.to_string()).unwrap_or_default(),
            opt(c.decode.map(|d| d.gb_per_s)),
            opt(c.decode.map(|d| d.fraction_of_ceiling)),
            opt(c.bandwidth_gb_per_s),
            opt(r.ratio),
            quote(&r.ratio_to),
            opt(r.torch_median_s),
            quote(c.status.reason()),
        );
    }
    s
}

/// A CPU `flash-cpu` record of `p` timed at `t` seconds (the sections' tests, and rows timed
/// outside [`run_one`], such as the KV-cache decode rows).
pub fn timed_record(p: &Problem, t: f64) -> BenchRecord {
    use attnkit::bench::{Measurement, Timing};
    let m = Measurement {
        times_s: vec![t],
        median_s: t,
        peak_bytes: None,
        timing: Timing::Host,
        device_timing_error: None,
    };
    BenchRecord::new(BACKEND, "", p, Some(attnkit::Device::Cpu), 2).with_measurement(p, &m, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ratio_is_the_median_of_same_round_ratios() {
        assert_eq!(round_ratio(&[2.0, 3.0, 10.0], &[1.0, 1.0, 1.0]), Some(3.0));
        assert_eq!(round_ratio(&[2.0, 4.0], &[1.0]), Some(2.0), "only rounds both ran in");
        assert_eq!(round_ratio(&[], &[1.0]), None);
    }

    /// Two rounds of a one-part and a two-part case: each measured every round, the two-part
    /// case's FLOPs summed, a refused case run once and left out of later rounds.
    #[test]
    fn alternate_runs_every_case_each_round_and_sums_parts() {
        let p = Problem::new(1, 1, 32, 8);
        let inputs = || LazyInputs::new(&p, InputFamily::Normal, SEED);
        let bad = Problem::new(1, 1, 32, 1024);
        let cases = [
            Case::single("one", p.clone(), PairOwned::default()),
            Case { label: "two".into(), parts: vec![(p.clone(), inputs()), (p.clone(), inputs())] },
            Case::single("refused", bad, PairOwned::default()),
        ];
        let policy = Policy { reps: 1, max_measure_s: 1.0, max_predicted_s: 10.0 };
        let out = alternate(&cases, 2, &LazyCeiling::new(32, 1), &policy).unwrap();
        assert_eq!(out.iter().map(|(_, t)| t.len()).collect::<Vec<_>>(), [2, 2, 0]);
        let (two, times) = &out[1];
        assert_eq!(two.reps, 2);
        let want = 2.0 * p.flops() / median(times) / 1e9;
        assert!((two.gflops.unwrap() - want).abs() <= 1e-9 * want, "{two:?}");
        assert!(!out[2].0.status.is_ok(), "D = 1024 is beyond flash-cpu's head dimension");
    }

    #[test]
    fn scale_picks_quick_then_caps() {
        let s = |quick, cap| Scale { quick, cap };
        assert_eq!((s(false, None).n(4096, 512), s(true, None).n(4096, 512)), (4096, 512));
        assert_eq!(s(true, Some(256)).n(4096, 512), 256);
    }

    #[test]
    fn verdict_states_measured_target_and_outcome() {
        assert_eq!(verdict(Some(1.07), 1.15, true), "measured 1.07× (target ≤ 1.15×): pass");
        assert_eq!(verdict(Some(4.0), 5.0, false), "measured 4.00× (target ≥ 5×): not met");
        assert_eq!(verdict(None, 1.2, true), "not measured (target ≤ 1.2×)");
    }

    #[test]
    fn csv_has_one_line_per_row_and_a_stable_width() {
        let p = Problem::new(1, 2, 1, 64).with_seq_k(4096);
        let rec = BenchRecord::new(BACKEND, "", &p, None, 1).skipped("why, \"quoted\"");
        let mut r = SectionRow::new("decode", "MHA f32", rec);
        r.ratio = Some(1.5);
        let text = csv(&[r.clone(), r]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].split(',').count(), 23);
        assert!(lines[1].starts_with("decode,\"MHA f32\",flash-cpu,1,4096,64,2,2,f32,false,"), "{}", lines[1]);
        assert!(lines[1].ends_with(",1.5e0,\"\",,\"why, \"\"quoted\"\"\""), "{}", lines[1]);
    }
}
