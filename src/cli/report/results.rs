//! The report's rows and its raw data files, results.json and results.csv.

use super::meta::Meta;
use super::section::SectionRow;
use attnkit::approx_eval::Accuracy;
use attnkit::bench::BenchRecord;
use attnkit::{AttnError, Exactness};
use serde::{Serialize, Serializer};
use std::fmt::Write as _;
use std::path::Path;

/// One result row: the bench record plus error figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    /// "exact" / "approx", or "" when the backend could not be built.
    #[serde(serialize_with = "exactness_text")]
    pub exactness: Option<Exactness>,
    #[serde(flatten)]
    pub rec: BenchRecord,
    pub frontier: bool,
    pub err_max_abs: Option<f64>,
    pub err_max_rel: Option<f64>,
    /// Relative Frobenius error ‖O − O_ref‖/‖O_ref‖ (head 0), against the same reference.
    pub rel_err: Option<f64>,
    /// The same error of the mean-of-V baseline on the same cell (input, mask, head 0).
    pub baseline_rel_err: Option<f64>,
    pub err_vs: String,
}

impl Row {
    /// Whether the row approximates full attention: an approximate backend, or a window.
    pub fn approximates(&self) -> bool {
        self.exactness == Some(Exactness::Approximate) || !self.rec.window.is_unbounded()
    }

    /// Its error beside the baseline's, when both were measured.
    pub fn accuracy(&self) -> Option<Accuracy> {
        Some(Accuracy { rel_err: self.rel_err?, baseline_rel_err: self.baseline_rel_err? })
    }

    /// `(!)` on an approximation that does not beat the mean-of-V baseline, else "".
    pub fn baseline_mark(&self) -> &'static str {
        match self.accuracy() {
            Some(a) if self.approximates() && !a.beats_baseline() => " (!)",
            _ => "",
        }
    }
}

fn exactness_text<S: Serializer>(e: &Option<Exactness>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&e.map(|e| e.to_string()).unwrap_or_default())
}

/// results.json (`meta`, `results`, the extra sections' rows under `sections` and the backward
/// section's under `backward`), results.csv (the sweep) and sections.csv (the extra sections).
pub fn write_results(
    dir: &Path,
    meta: &Meta,
    rows: &[Row],
    sections: &[SectionRow],
    backward: &[super::backward::BackwardRow],
) -> Result<(), AttnError> {
    let json = serde_json::json!({ "meta": meta, "results": rows, "sections": sections, "backward": backward });
    let text = serde_json::to_string_pretty(&json).map_err(|e| AttnError::invalid(format!("json: {e}")))?;
    std::fs::write(dir.join("results.json"), text)?;
    std::fs::write(dir.join("results.csv"), csv(rows))?;
    std::fs::write(dir.join("sections.csv"), super::section::csv(sections))?;
    Ok(())
}

/// One header line and one line per row; text fields quoted, absent numbers empty.
pub fn csv(rows: &[Row]) -> String {
    let mut csv = String::from(
        "label,backend,variant,exactness,device,inputs,seq,seq_kv,dim,heads,batch,causal,window,dtype,threads,status,reps,timing,median_s,gflops,gemm_gflops,gemm_fraction,peak_bytes,err_max_abs,err_max_rel,rel_err,baseline_rel_err,err_vs,frontier,reason\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:e}")).unwrap_or_default();
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for r in rows {
        let c = &r.rec;
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            quote(&r.label),
            c.backend,
            quote(&c.variant),
            r.exactness.map(|e| e.to_string()).unwrap_or_default(),
            c.device.map(|d| d.to_string()).unwrap_or_default(),
            c.inputs,
            c.seq,
            c.seq_kv,
            c.dim,
            c.heads,
            c.batch,
            c.causal,
            quote(&c.window.to_string()),
            c.dtype,
            c.threads,
            c.status,
            c.reps,
            c.timing.map(|t| format!("{t:?}").to_lowercase()).unwrap_or_default(),
            opt(c.median_s),
            opt(c.gflops),
            opt(c.gemm_gflops),
            opt(c.gemm_fraction),
            c.peak_bytes.map(|b| b.to_string()).unwrap_or_default(),
            opt(r.err_max_abs),
            opt(r.err_max_rel),
            opt(r.rel_err),
            opt(r.baseline_rel_err),
            quote(&r.err_vs),
            r.frontier,
            quote(&reason(c)),
        );
    }
    csv
}

/// The status reason, plus a device-timing failure when there was one.
pub fn reason(c: &BenchRecord) -> String {
    match (&c.device_timing_error, c.status.reason()) {
        (Some(e), "") => format!("host-timed: device timing failed: {e}"),
        (Some(e), r) => format!("{r}; host-timed: device timing failed: {e}"),
        (None, r) => r.to_string(),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use attnkit::bench::{GemmCeiling, Measurement, Timing};
    use attnkit::{Device, Problem};

    /// A row of `label` at `n` with time `t` (None: skipped) and error `err`.
    pub fn row(label: &str, exactness: Exactness, n: usize, causal: bool, t: Option<f64>, err: Option<f64>) -> Row {
        let p = Problem::new(1, 8, n, 64).with_causal(causal);
        let rec = BenchRecord::new(label, "", &p, Some(Device::Cpu), 2);
        let g = GemmCeiling { m: 1, n: 1, k: 1, threads: 2, median_s: 1.0, gflops: 100.0 };
        let rec = match t {
            Some(t) => rec.with_measurement(
                &p,
                &Measurement {
                    times_s: vec![t],
                    median_s: t,
                    peak_bytes: Some(n as u64),
                    timing: Timing::Host,
                    device_timing_error: None,
                },
                Some(&g),
            ),
            None => rec.skipped("time budget"),
        };
        Row {
            label: label.into(),
            exactness: Some(exactness),
            rec,
            frontier: false,
            err_max_abs: err,
            err_max_rel: err,
            rel_err: err,
            baseline_rel_err: err.map(|_| 0.5),
            err_vs: String::new(),
        }
    }

    #[test]
    fn only_approximations_that_lose_to_the_baseline_are_marked() {
        let mut r = row("nystrom", Exactness::Approximate, 4096, false, Some(1e-3), Some(0.6));
        assert_eq!(r.baseline_mark(), " (!)", "0.6 ≥ the baseline's 0.5");
        r.rel_err = Some(0.01);
        assert_eq!((r.baseline_mark(), r.accuracy().map(|a| a.gain())), ("", Some(50.0)));
        let exact = row("flash-cpu", Exactness::Exact, 4096, false, Some(1e-3), Some(0.6));
        assert_eq!(exact.baseline_mark(), "", "exact backends are not judged against it");
        let mut local = exact.clone();
        local.rec.window = attnkit::Window::new(64, 64);
        assert_eq!(local.baseline_mark(), " (!)", "a window approximates full attention");
        let unmeasured = row("nystrom", Exactness::Approximate, 4096, false, None, None);
        assert_eq!(unmeasured.baseline_mark(), "");
    }

    #[test]
    fn json_and_csv_keep_their_words() {
        let r = row("sdpa", Exactness::Approximate, 256, true, Some(1e-3), Some(1e-6));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["exactness"].as_str(), v["status"].as_str(), v["window"].as_str()),
            (Some("approx"), Some("ok"), Some("-1,-1"))
        );
        let text = csv(&[r.clone(), Row { rec: r.rec.clone().failed("output has 3 non-finite values"), ..r }]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        // 30 columns; the window "L,R" is the one quoted field holding a comma.
        assert_eq!((lines[0].split(',').count(), lines[1].split(',').count()), (30, 31));
        assert!(lines[1].contains(",approx,cpu,normal,256,") && lines[1].contains(",ok,1,host,"), "{}", lines[1]);
        assert!(lines[1].contains(",1e-6,5e-1,"), "rel error then the baseline's: {}", lines[1]);
        assert!(
            lines[2].contains(",error,") && lines[2].ends_with("\"output has 3 non-finite values\""),
            "{}",
            lines[2]
        );
    }
}
