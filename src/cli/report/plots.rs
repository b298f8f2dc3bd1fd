//! SVG plots for `attnkit report` (plotters, SVG backend).

use plotters::prelude::*;
use std::path::Path;

/// One named line of (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

type PlotResult = Result<(), String>;

/// A panel title, its (label, relative error, seconds) points and the mean-of-V baseline's error.
pub type FrontierPanel = (String, Vec<(String, f64, f64)>, Option<f64>);

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Log-log range covering every positive value, padded a little.
fn log_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in vals.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.1, 10.0);
    }
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo / 1.5, hi * 1.5)
}

/// Side-by-side log-log panels, one line per series; legend in each panel.
pub fn loglog_panels(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    panels: &[(String, Vec<Series>)],
) -> PlotResult {
    let root = SVGBackend::new(path, (640 * panels.len().max(1) as u32, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let all_labels: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for (_, ss) in panels {
            for s in ss {
                if !v.contains(&s.label.as_str()) {
                    v.push(&s.label);
                }
            }
        }
        v
    };
    for ((name, series), area) in panels.iter().zip(areas.iter()) {
        let (x0, x1) = log_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = log_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        // N is swept in powers of two: label exactly those instead of plotters' decimal ticks.
        let pow2_ticks: Vec<f64> =
            (0..40).map(|e| 2f64.powi(e)).filter(|t| *t >= x0 * 0.999 && *t <= x1 * 1.001).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x0..x1).log_scale().with_key_points(pow2_ticks), (y0..y1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc(ylabel)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.1e}"))
            .draw()
            .map_err(err)?;
        for s in series {
            let i = all_labels.iter().position(|l| *l == s.label).unwrap_or(0);
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Error (x) vs time (y) scatter per panel, each point labelled; the baseline's error as a
/// dashed vertical line (points right of it lose to the mean of V).
pub fn frontier(path: &Path, panels: &[FrontierPanel]) -> PlotResult {
    let cols = 2;
    let rows = panels.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(path, (1280, 480 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "accuracy–speed frontier per input family: relative error (head 0) vs median time; dashed: mean of V",
            ("sans-serif", 20),
        )
        .map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    for ((name, pts, baseline), area) in panels.iter().zip(areas.iter()) {
        let (x0, x1) = log_range(pts.iter().map(|p| p.1).chain(*baseline));
        let (y0, y1) = log_range(pts.iter().map(|p| p.2));
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("relative error")
            .y_desc("seconds")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .y_label_formatter(&|y| format!("{y:.1e}"))
            .draw()
            .map_err(err)?;
        if let Some(b) = baseline.filter(|b| b.is_finite() && *b > 0.0) {
            let dashes = (0..24).map(|i| {
                let f = |t: f64| y0 * (y1 / y0).powf(t);
                PathElement::new(vec![(b, f(i as f64 / 24.0)), (b, f((i as f64 + 0.5) / 24.0))], BLACK.stroke_width(1))
            });
            chart.draw_series(dashes).map_err(err)?;
        }
        for (label, x, y) in pts {
            let backend = label.split('(').next().unwrap_or(label);
            let i = match backend {
                "linformer" => 1,
                "performer" => 2,
                "local" => 3,
                "nystrom" => 4,
                _ => 0,
            };
            let c = color(i);
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((*x, *y))
                        + Circle::new((0, 0), 4, c.filled())
                        + Text::new(label.clone(), (6, -6), ("sans-serif", 12)),
                ))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// One N×N heatmap per panel (row-major weights), shared colour scale per panel (max → dark).
pub fn heatmaps(path: &Path, n: usize, panels: &[(String, Vec<f32>)]) -> PlotResult {
    let cell = 5u32;
    let side = n as u32 * cell + 60;
    let root = SVGBackend::new(path, (side * panels.len().max(1) as u32, side + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled("effective attention weights (row i = query i, column j = key j)", ("sans-serif", 18))
        .map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((name, w), area) in panels.iter().zip(areas.iter()) {
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 16))
            .margin(8)
            .build_cartesian_2d(0..n as i32, n as i32..0)
            .map_err(err)?;
        chart.configure_mesh().disable_mesh().disable_axes().draw().map_err(err)?;
        let max = w.iter().filter(|x| x.is_finite()).fold(0.0f32, |m, &x| m.max(x.abs())).max(1e-12);
        chart
            .draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
                let x = w.get(i * n + j).copied().unwrap_or(0.0);
                let t = if x.is_finite() { (x.abs() / max).clamp(0.0, 1.0) } else { 1.0 };
                // Negative effective weights (possible for linformer/performer) in red.
                let c = if x < 0.0 {
                    RGBColor(255, (255.0 * (1.0 - t)) as u8, (255.0 * (1.0 - t)) as u8)
                } else {
                    RGBColor(
                        (255.0 * (1.0 - t)) as u8,
                        (255.0 * (1.0 - 0.6 * t)) as u8,
                        (255.0 * (1.0 - 0.3 * t)) as u8,
                    )
                };
                Rectangle::new([(j as i32, i as i32), (j as i32 + 1, i as i32 + 1)], c.filled())
            }))
            .map_err(err)?;
    }
    root.present().map_err(err)
}
