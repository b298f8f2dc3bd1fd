//! The report's figures: what goes into each SVG (drawn by [`super::plots`]) and the inputs of
//! the weight heatmaps, one per input family.

use super::analysis::{frontier_rows, series, sweep_labels};
use super::plots::{self, Series};
use super::results::Row;
use attnkit::bench::plan::{FRONTIER_NS, SEED};
use attnkit::inputs::{InputFamily, generate};
use attnkit::{AttnArgs, AttnError, BackendOptions, Problem, Window};
use std::path::Path;

/// Only measured, finite rows are drawn: the series come from [`series`] (status ok), and the
/// frontier takes ok rows with a positive error.
pub fn write_plots(dir: &Path, rows: &[Row], heat: &[Heatmaps]) -> Result<Vec<String>, AttnError> {
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
    // One panel per (family, N), non-causal, with the family's mean-of-V error as a line.
    let mut frontier_panels: Vec<plots::FrontierPanel> = Vec::new();
    for family in heat.iter().map(|h| h.family) {
        let fr = frontier_rows(rows, family);
        for n in FRONTIER_NS {
            let at: Vec<&&Row> = fr.iter().filter(|r| r.rec.seq == n).collect();
            if at.is_empty() {
                continue;
            }
            let pts = at
                .iter()
                .filter_map(|r| Some((r.label.clone(), r.rel_err.filter(|e| *e > 0.0)?, r.rec.median_s?)))
                .collect();
            let baseline = at.iter().find_map(|r| r.baseline_rel_err);
            frontier_panels.push((format!("{family}, N={n}"), pts, baseline));
        }
    }
    match plots::frontier(&dir.join("error_vs_speed.svg"), &frontier_panels) {
        Ok(()) => notes.push("error_vs_speed.svg".into()),
        Err(e) => notes.push(format!("error_vs_speed.svg: not drawn ({e})")),
    }
    for h in heat.iter().filter(|h| !h.panels.is_empty()) {
        let file = heatmap_file(h.family);
        match plots::heatmaps(&dir.join(&file), h.n, &h.panels) {
            Ok(()) => notes.push(file),
            Err(e) => notes.push(format!("{file}: not drawn ({e})")),
        }
    }
    Ok(notes)
}

/// The effective weights of one input family: one N×N panel per backend.
pub struct Heatmaps {
    pub family: InputFamily,
    pub n: usize,
    pub panels: Vec<(String, Vec<f32>)>,
    pub notes: Vec<String>,
}

/// The heatmap's file name for `family` (`weights_structured.svg`; `:` of a sharpness → `-`).
pub fn heatmap_file(family: InputFamily) -> String {
    format!("weights_{}.svg", family.to_string().replace(':', "-"))
}

/// Q and K of `family` (seed [`SEED`]) at N = D = 64, one head, and V = I, so output row i is
/// the backend's effective attention-weight row i.
pub fn heatmaps(available: &[&str], family: InputFamily) -> Heatmaps {
    const N: usize = 64;
    let p = Problem::new(1, 1, N, N);
    let (q, k, _) = generate(family, &p, SEED);
    let (q, k) = (q.to_f32(), k.to_f32());
    let mut v = vec![0.0f32; N * N];
    for i in 0..N {
        v[i * N + i] = 1.0;
    }
    let mut panels = Vec::new();
    let mut notes = Vec::new();
    let has = |n: &str| available.contains(&n);
    let cases: Vec<(&str, String, BackendOptions, Option<Window>)> = vec![
        ("reference", "exact".into(), BackendOptions::default(), None),
        ("local", "local (w=8)".into(), BackendOptions::default(), Some(Window::new(8, 8))),
        ("nystrom", "nystrom (m=8)".into(), BackendOptions { landmarks: Some(8), ..Default::default() }, None),
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
    Heatmaps { family, n: N, panels, notes }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact panel of every family is a row-stochastic weight matrix, and the families
    /// differ where they claim to: normal is near uniform, structured peaks at the diagonal,
    /// local-global at the diagonal and at the sink key 0.
    #[test]
    fn family_heatmaps_are_weights_with_the_family_shape() {
        let n = 64;
        for family in InputFamily::ALL {
            let h = heatmaps(&["reference"], family);
            assert_eq!((h.panels.len(), h.notes.len()), (1, 4), "{family}: {:?}", h.notes);
            let w = &h.panels[0].1;
            for row in w.chunks(n) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4 && row.iter().all(|x| *x >= 0.0), "{family}");
            }
            let diag = (0..n).map(|i| w[i * n + i]).sum::<f32>() / n as f32;
            let sink = (8..n).map(|i| w[i * n]).sum::<f32>() / (n - 8) as f32;
            // Measured once: normal 0.015 / 0.015 (uniform is 1/64 = 0.016), structured 0.69 /
            // 3e-4, local-global 0.70 / 0.043.
            let ok = match family {
                InputFamily::Normal => diag < 0.05 && sink < 0.05,
                InputFamily::Structured { .. } => diag > 0.3 && sink < 0.01,
                InputFamily::LocalGlobal => diag > 0.3 && sink > 0.02,
            };
            assert!(ok, "{family}: mean diagonal weight {diag}, mean weight on key 0 {sink}");
        }
        assert_eq!(heatmap_file(InputFamily::Structured { sharpness: 2.5 }), "weights_structured-2.5.svg");
    }
}
