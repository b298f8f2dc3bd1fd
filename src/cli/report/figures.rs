//! The report's figures: what goes into each SVG (drawn by [`super::plots`]) and the inputs of
//! the weight heatmaps, one per input family.

use super::analysis::{frontier_points, frontier_rows, series, sweep_labels};
use super::frontier_plot::{self, FrontierMark, FrontierPanel};
use super::plots::{self, Axis, Heading, Series, Ticks};
use super::results::Row;
use attnkit::approx_eval::pareto;
use attnkit::bench::plan::{FRONTIER_NS, SEED};
use attnkit::inputs::{InputFamily, generate};
use attnkit::{AttnArgs, AttnError, BackendOptions, Problem, Window};
use std::path::Path;

/// `flash-cpu (exact)`, `nystrom (approximate)`: a sweep line's legend label, so a reader
/// knows which lines approximate full attention (a window does too).
fn legend_label(rows: &[Row], label: &str) -> String {
    let approx = rows.iter().find(|r| r.label == label).is_some_and(|r| r.approximates());
    format!("{label} ({})", if approx { "approximate" } else { "exact" })
}

/// The largest N whose error was taken against the f64 oracle (the comparator above it is
/// flash-cpu or sdpa). Causal rows only: the frontier N (non-causal) use the oracle at any N.
fn oracle_max_n(rows: &[Row]) -> Option<usize> {
    rows.iter().filter(|r| r.rec.causal && r.err_vs.starts_with("reference")).map(|r| r.rec.seq).max()
}

/// What a line plot reads off a row (None: not drawn).
type RowValue<'a> = dyn Fn(&Row) -> Option<f64> + 'a;

/// Only measured, finite rows are drawn: the series come from [`series`] (status ok), and the
/// frontier takes ok rows with a positive error.
pub fn write_plots(dir: &Path, rows: &[Row], heat: &[Heatmaps]) -> Result<Vec<String>, AttnError> {
    let labels = sweep_labels(rows);
    let mut notes = Vec::new();
    let mut note = |file: &str, r: plots::PlotResult| match r {
        Ok(()) => notes.push(file.to_string()),
        Err(e) => notes.push(format!("{file}: not drawn ({e})")),
    };
    let panel = |causal: bool, f: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        labels
            .iter()
            .map(|l| {
                let pts = series(rows, l, causal).iter().filter_map(|r| f(r).map(|y| (r.rec.seq as f64, y))).collect();
                Series::new(legend_label(rows, l), pts)
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let time = |r: &Row| r.rec.median_s;
    let mem = |r: &Row| r.rec.peak_bytes.map(|b| b as f64 / (1u64 << 20) as f64).filter(|m| *m > 0.0);
    let err = |r: &Row| r.err_max_abs.filter(|e| *e > 0.0);
    let shape = rows.iter().find(|r| !r.frontier).map_or(String::new(), |r| {
        format!("B = {}, H = {}, D = {}, {}, {} inputs", r.rec.batch, r.rec.heads, r.rec.dim, r.rec.dtype, r.rec.inputs)
    });
    let n_axis = Axis { label: "sequence length N = N_q = N_k (log)", ticks: Ticks::Pow2 };
    let comparator = match oracle_max_n(rows) {
        Some(n) => format!(
            "against the f64 oracle for N ≤ {n} and non-causal N ∈ {{{}}}, else against flash-cpu (or sdpa)",
            FRONTIER_NS.map(|n| n.to_string()).join(", ")
        ),
        None => "against flash-cpu (or sdpa)".into(),
    };
    let figures: [(&str, String, Vec<String>, Axis, &RowValue); 3] = [
        (
            "time_vs_n.svg",
            "Forward time vs sequence length, per backend".into(),
            vec![format!("{shape}; median of the reps of one call per point")],
            Axis { label: "median time per forward (log)", ticks: Ticks::Seconds },
            &time,
        ),
        (
            "memory_vs_n.svg",
            "Peak extra heap of one forward vs sequence length, per backend".into(),
            vec![format!("{shape}; heap allocated above what was live before the call (inputs and output excluded)")],
            Axis { label: "peak extra heap, MiB (log)", ticks: Ticks::Plain },
            &mem,
        ),
        (
            "error_vs_n.svg",
            "Max abs error vs sequence length, per backend".into(),
            vec![
                format!("{shape}; max |O − O_ref| over head 0, {comparator}"),
                "approximate backends and windows are compared with full attention, so theirs is the approximation error".into(),
            ],
            Axis { label: "max abs error, head 0 (log)", ticks: Ticks::Sci },
            &err,
        ),
    ];
    for (file, title, lines, y, f) in figures {
        let panels = vec![("non-causal".to_string(), panel(false, f)), ("causal".to_string(), panel(true, f))];
        let head = Heading { title: &title, notes: lines };
        note(file, plots::loglog_panels(&dir.join(file), &head, n_axis, y, &panels));
    }
    // One panel per (family, N), non-causal, with the family's mean-of-V error as a line.
    let mut frontier_panels: Vec<FrontierPanel> = Vec::new();
    for family in heat.iter().map(|h| h.family) {
        let fr = frontier_rows(rows, family);
        for n in FRONTIER_NS {
            let at: Vec<&Row> = fr
                .iter()
                .copied()
                .filter(|r| r.rec.seq == n && r.rel_err.is_some_and(|e| e > 0.0) && r.rec.median_s.is_some())
                .collect();
            if at.is_empty() {
                continue;
            }
            let on = pareto(&frontier_points(&at));
            let marks = at
                .iter()
                .zip(on)
                .filter_map(|(r, on_frontier)| {
                    Some(FrontierMark {
                        label: r.label.clone(),
                        rel_err: r.rel_err?,
                        seconds: r.rec.median_s?,
                        on_frontier,
                    })
                })
                .collect();
            let baseline = at.iter().find_map(|r| r.baseline_rel_err);
            frontier_panels.push(FrontierPanel { title: format!("{family} inputs, N = {n}"), marks, baseline });
        }
    }
    let head = Heading {
        title: "Accuracy vs speed of every approximation, per input family and N",
        notes: vec![
            format!(
                "{}; non-causal; exact sdpa and flash-cpu for comparison",
                shape.rsplit_once(", ").map_or("", |x| x.0)
            ),
            "frontier: no other point of the panel is both at least as fast and at least as accurate; \
             points right of the dashed line lose to the mean of V"
                .into(),
        ],
    };
    let (x, y) = frontier_plot::axes();
    note("error_vs_speed.svg", frontier_plot::frontier(&dir.join("error_vs_speed.svg"), &head, x, y, &frontier_panels));
    for h in heat.iter().filter(|h| !h.panels.is_empty()) {
        let file = heatmap_file(h.family);
        let title = format!("Effective attention weights on one {} input, N = D = 64, one head", h.family);
        let head = Heading {
            title: &title,
            notes: vec![
                "row i = query i, column j = key j (V = I, so output row i is the weight row i), through the public trait".into(),
                "white = 0, blue = positive, red = negative; each panel has its own scale (its bar)".into(),
            ],
        };
        note(&file, super::heatmap::heatmaps(&dir.join(&file), &head, h.n, &h.panels));
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
