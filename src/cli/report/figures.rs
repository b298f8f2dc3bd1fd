//! The report's figures: what goes into each SVG (drawn by [`super::plots`]) and the
//! structured input of the weight heatmaps.

use super::analysis::{series, sweep_labels};
use super::plots::{self, Series};
use super::results::Row;
use attnkit::bench::plan::{FRONTIER_NS, ORACLE};
use attnkit::{AttnArgs, AttnError, BackendOptions, Exactness, Problem, Window};
use std::path::Path;

/// Only measured, finite rows are drawn: the series come from [`series`] (status ok), and the
/// frontier takes ok rows with a positive error.
pub fn write_plots(dir: &Path, rows: &[Row], heat: &Heatmaps) -> Result<Vec<String>, AttnError> {
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
    let frontier_panels: Vec<plots::FrontierPanel> = FRONTIER_NS
        .iter()
        .flat_map(|&n| [(n, false), (n, true)])
        .map(|(n, causal)| {
            let pts = rows
                .iter()
                .filter(|r| {
                    r.rec.seq == n
                        && r.rec.causal == causal
                        && r.rec.status.is_ok()
                        && (r.frontier || r.exactness == Some(Exactness::Exact))
                        && r.rec.backend != ORACLE
                })
                .filter_map(|r| Some((r.label.clone(), r.err_max_abs.filter(|e| *e > 0.0)?, r.rec.median_s?)))
                .collect();
            (format!("N={n}{}", if causal { ", causal" } else { "" }), pts)
        })
        .collect();
    match plots::frontier(&dir.join("error_vs_speed.svg"), &frontier_panels) {
        Ok(()) => notes.push("error_vs_speed.svg".into()),
        Err(e) => notes.push(format!("error_vs_speed.svg: not drawn ({e})")),
    }
    if !heat.panels.is_empty() {
        match plots::heatmaps(&dir.join("weights_heatmap.svg"), heat.n, &heat.panels) {
            Ok(()) => notes.push("weights_heatmap.svg".into()),
            Err(e) => notes.push(format!("weights_heatmap.svg: not drawn ({e})")),
        }
    }
    Ok(notes)
}

pub struct Heatmaps {
    pub n: usize,
    pub panels: Vec<(String, Vec<f32>)>,
    pub notes: Vec<String>,
}

/// Structured N = D = 64 input: q_i = k_i = sinusoidal position features (dot product peaks at
/// i = j and decays with |i − j|) plus a "sink" block that makes every query attend key 0.
/// V = I, so output row i is the backend's effective attention-weight row i.
pub fn heatmaps(available: &[&str]) -> Heatmaps {
    const N: usize = 64;
    let p = Problem::new(1, 1, N, N).with_scale(1.0);
    let (mut q, mut k) = (vec![0.0f32; N * N], vec![0.0f32; N * N]);
    let pairs = 28;
    for i in 0..N {
        for t in 0..pairs {
            let w = 0.03 + 0.012 * t as f32;
            let (s, c) = (w * i as f32).sin_cos();
            let a = 0.42;
            q[i * N + 2 * t] = a * c;
            q[i * N + 2 * t + 1] = a * s;
            k[i * N + 2 * t] = a * c;
            k[i * N + 2 * t + 1] = a * s;
        }
        for t in 2 * pairs..N {
            q[i * N + t] = 0.6;
        }
    }
    k[2 * pairs..N].fill(0.6);
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
    Heatmaps { n: N, panels, notes }
}
