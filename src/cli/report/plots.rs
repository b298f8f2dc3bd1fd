//! SVG plots for `attnkit report` (plotters, SVG backend): log-log line panels with one legend
//! beside them, and what every figure shares: colours, marker shapes, a title with note lines,
//! tick positions with readable labels (`20 ms`, `1K`, `1e-3`) and the legend box.
//!
//! Layout rule: every legend sits in its own column right of the panels, sized from its longest
//! label, so no legend covers data and no label runs past the edge. Ticks are placed by hand
//! (decades, plus 2 and 5 on short ranges): plotters' own log ticks print two labels that round
//! to the same text and draw bands of minor lines.

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One named line of (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (a peer's line, or a ceiling).
    pub dashed: bool,
    /// A fixed colour (a ceiling in grey); otherwise the palette colour of the label's index.
    pub color: Option<RGBColor>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { label: label.into(), points, dashed: false, color: None }
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
    pub fn color(mut self, c: RGBColor) -> Self {
        self.color = Some(c);
        self
    }
}

pub type PlotResult = Result<(), String>;

pub fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

pub const FONT: &str = "sans-serif";
/// Font sizes: figure title, note lines and legend, panel caption, axis description, tick labels.
pub const TITLE_PX: u32 = 22;
pub const NOTE_PX: u32 = 14;
pub const CAPTION_PX: u32 = 17;
pub const DESC_PX: u32 = 15;
pub const TICK_PX: u32 = 13;
pub const GREY: RGBColor = RGBColor(90, 90, 90);

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    // Grey last: the frontier line and ceilings are grey.
    RGBColor(127, 127, 127),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Width in pixels that `text` takes at `px` (0.6 em per character: a little more than
/// DejaVu/Liberation Sans average, so sizes computed from it leave room).
pub fn text_width(text: &str, px: u32) -> i32 {
    (text.chars().count() as f64 * 0.6 * px as f64).ceil() as i32
}

fn style(px: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, px).into_font())
}

/// A text style anchored at its top centre.
pub fn centered(px: u32) -> TextStyle<'static> {
    style(px).pos(Pos::new(HPos::Center, VPos::Top))
}

/// A text style anchored at its left middle.
pub fn left(px: u32) -> TextStyle<'static> {
    style(px).pos(Pos::new(HPos::Left, VPos::Center))
}

/// Draws marker `shape` (0 circle, 1 triangle, 2 square, 3 diamond, then again) centred at
/// pixel `(x, y)` of `area`, filled or as an outline; the same shapes in plots and legends.
/// (Pixel space, so one function serves every chart and the legend.)
pub fn draw_marker(
    area: &DrawingArea<SVGBackend, Shift>,
    shape: usize,
    (x, y): (i32, i32),
    c: RGBColor,
    filled: bool,
) -> PlotResult {
    let s = if filled { c.filled() } else { c.stroke_width(2) };
    let poly: &[(i32, i32)] = match shape % 4 {
        0 => return area.draw(&Circle::new((x, y), 4, s)).map_err(err),
        1 => &[(0, -6), (5, 3), (-5, 3)],
        2 => &[(-4, -4), (4, -4), (4, 4), (-4, 4)],
        _ => &[(0, -6), (5, 0), (0, 6), (-5, 0)],
    };
    let mut pts: Vec<(i32, i32)> = poly.iter().map(|(dx, dy)| (x + dx, y + dy)).collect();
    if filled {
        area.draw(&Polygon::new(pts, s)).map_err(err)
    } else {
        pts.push(pts[0]);
        area.draw(&PathElement::new(pts, s)).map_err(err)
    }
}

/// How a legend entry is drawn: a line (solid or dashed) and/or a marker.
pub struct LegendEntry {
    pub label: String,
    pub color: RGBColor,
    pub line: Option<bool>,
    /// Marker shape and whether it is filled.
    pub marker: Option<(usize, bool)>,
}

/// Row height and sample width of a legend, and the width it needs for `entries`.
const LEGEND_ROW: i32 = 22;
const LEGEND_SAMPLE: i32 = 34;
pub fn legend_width(entries: &[LegendEntry], heading: &str) -> u32 {
    let widest = entries.iter().map(|e| LEGEND_SAMPLE + 8 + text_width(&e.label, NOTE_PX)).max().unwrap_or(0);
    (widest.max(text_width(heading, NOTE_PX)) + 28) as u32
}

/// The legend box at the top of `area` (a column of its own), headed by `heading`.
pub fn draw_legend(area: &DrawingArea<SVGBackend, Shift>, heading: &str, entries: &[LegendEntry]) -> PlotResult {
    let (w, _) = area.dim_in_pixel();
    let x0 = 8;
    let h = LEGEND_ROW * (entries.len() as i32 + 1) + 12;
    area.draw(&Rectangle::new([(x0, 0), (w as i32 - 6, h)], BLACK.stroke_width(1))).map_err(err)?;
    area.draw(&Text::new(heading.to_string(), (x0 + 8, LEGEND_ROW / 2 + 6), left(NOTE_PX))).map_err(err)?;
    for (i, e) in entries.iter().enumerate() {
        let y = LEGEND_ROW * (i as i32 + 1) + LEGEND_ROW / 2 + 6;
        let (a, b) = (x0 + 8, x0 + 8 + LEGEND_SAMPLE);
        match e.line {
            Some(true) => area.draw(&DashedPathElement::new(vec![(a, y), (b, y)], 6, 4, e.color.stroke_width(2))),
            Some(false) => area.draw(&PathElement::new(vec![(a, y), (b, y)], e.color.stroke_width(2))),
            None => Ok(()),
        }
        .map_err(err)?;
        if let Some((shape, filled)) = e.marker {
            draw_marker(area, shape, ((a + b) / 2, y), e.color, filled)?;
        }
        area.draw(&Text::new(e.label.clone(), (b + 8, y), left(NOTE_PX))).map_err(err)?;
    }
    Ok(())
}

/// `notes` broken at spaces into lines that fit `width` pixels at the note size.
pub fn wrap(notes: &[String], width: u32) -> Vec<String> {
    let room = width as i32 - 40;
    let mut out = Vec::new();
    for n in notes {
        let mut line = String::new();
        for w in n.split(' ') {
            let next = if line.is_empty() { w.to_string() } else { format!("{line} {w}") };
            if text_width(&next, NOTE_PX) > room && !line.is_empty() {
                out.push(std::mem::replace(&mut line, w.to_string()));
            } else {
                line = next;
            }
        }
        out.push(line);
    }
    out
}

/// Fills `root`, writes the title and the note lines under it (wrapped to the figure's width),
/// and returns the area below.
pub fn header<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    title: &str,
    notes: &[String],
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, String> {
    root.fill(&WHITE).map_err(err)?;
    let (w, _) = root.dim_in_pixel();
    let cx = w as i32 / 2;
    root.draw(&Text::new(title.to_string(), (cx, 10), centered(TITLE_PX))).map_err(err)?;
    let lines = wrap(notes, w);
    for (i, n) in lines.iter().enumerate() {
        root.draw(&Text::new(n.clone(), (cx, 42 + 20 * i as i32), centered(NOTE_PX).color(&GREY))).map_err(err)?;
    }
    Ok(root.split_vertically(48 + 20 * lines.len() as u32).1)
}

/// The header's height in a figure `width` pixels wide.
pub fn header_height(notes: &[String], width: u32) -> u32 {
    48 + 20 * wrap(notes, width).len() as u32
}

/// The width a figure needs so that the title fits (note lines are wrapped to the width).
pub fn header_width(title: &str) -> u32 {
    text_width(title, TITLE_PX) as u32 + 40
}

/// Log-range padding: the data range widened by 1.5× each way.
pub fn log_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
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

/// What an axis's ticks are and how they read.
#[derive(Clone, Copy, Debug)]
pub enum Ticks {
    /// Powers of two, `256`, `1K`, `64K`.
    Pow2,
    /// Seconds as `500 µs`, `20 ms`, `2 s`.
    Seconds,
    /// Plain numbers, `0.5`, `20`, `1000`.
    Plain,
    /// Scientific, `1e-3`.
    Sci,
}

/// `x` with at most 3 significant digits and no trailing zeros (`0.5`, `20`, `1000`).
fn num(x: f64) -> String {
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

impl Ticks {
    pub fn format(self, v: f64) -> String {
        match self {
            Ticks::Pow2 => {
                let n = v.round() as u64;
                if n >= 1024 && n.is_multiple_of(1024) { format!("{}K", n / 1024) } else { n.to_string() }
            }
            Ticks::Seconds if v < 1e-3 => format!("{} µs", num(v * 1e6)),
            Ticks::Seconds if v < 1.0 => format!("{} ms", num(v * 1e3)),
            Ticks::Seconds => format!("{} s", num(v)),
            Ticks::Plain => num(v),
            Ticks::Sci => format!("{v:.0e}"),
        }
    }

    /// (labelled, light) tick positions inside `lo..hi` (a log axis).
    pub fn positions(self, lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
        let inside = |v: &f64| *v >= lo * 0.999 && *v <= hi * 1.001;
        if let Ticks::Pow2 = self {
            let all: Vec<f64> = (0..48).map(|e| 2f64.powi(e)).filter(inside).collect();
            // At most 12 labels: every other power beyond that.
            let step = if all.len() > 12 { 2 } else { 1 };
            let bold = all.iter().copied().step_by(step).collect();
            return (bold, vec![]);
        }
        let span = (hi / lo).log10();
        let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let at = |ms: &[f64]| -> Vec<f64> {
            (d0..=d1).flat_map(|d| ms.iter().map(move |m| m * 10f64.powi(d))).filter(inside).collect()
        };
        let mut bold = at(if span <= 2.5 { &[1.0, 2.0, 5.0] } else { &[1.0] });
        // Over many decades, label every other decade so labels keep apart.
        if bold.len() > 9 {
            bold = bold.into_iter().step_by(2).collect();
        }
        if bold.len() < 2 {
            bold = at(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        }
        let light = if span <= 4.0 {
            at(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).into_iter().filter(|v| !bold.contains(v)).collect()
        } else {
            vec![]
        };
        (bold, light)
    }
}

/// An axis: its description (with units) and tick style.
#[derive(Clone, Copy)]
pub struct Axis<'a> {
    pub label: &'a str,
    pub ticks: Ticks,
}

/// A figure's title and the note lines under it.
pub struct Heading<'a> {
    pub title: &'a str,
    pub notes: Vec<String>,
}

/// The legend entries of `series`: one per distinct label, its colour and marker that of the
/// label's index (so a label looks the same in every panel).
fn legend_entries(panels: &[(String, Vec<Series>)]) -> Vec<LegendEntry> {
    let mut out: Vec<LegendEntry> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.1) {
        if out.iter().all(|e| e.label != s.label) {
            let i = out.len();
            out.push(LegendEntry {
                label: s.label.clone(),
                color: s.color.unwrap_or(color(i)),
                line: Some(s.dashed),
                marker: (s.points.len() > 2 || s.color.is_none()).then_some((i, true)),
            });
        }
    }
    out
}

/// Side-by-side log-log panels, one line per series, one legend right of the panels.
pub fn loglog_panels(path: &Path, head: &Heading, x: Axis, y: Axis, panels: &[(String, Vec<Series>)]) -> PlotResult {
    let entries = legend_entries(panels);
    let legend_heading = "lines (the same in each panel):";
    let lw = legend_width(&entries, legend_heading);
    let n = panels.len().max(1) as u32;
    let width = (600 * n + lw).max(header_width(head.title));
    let height = 500 + header_height(&head.notes, width);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let body = header(&root, head.title, &head.notes)?;
    let (plots, legend) = body.split_horizontally(width - lw);
    draw_legend(&legend.margin(30, 0, 0, 0), legend_heading, &entries)?;
    for ((name, series), area) in panels.iter().zip(plots.split_evenly((1, n as usize)).iter()) {
        let (x0, x1) = log_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = log_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let (xb, xl) = x.ticks.positions(x0, x1);
        let (yb, yl) = y.ticks.positions(y0, y1);
        let mut chart = ChartBuilder::on(area)
            .caption(name, (FONT, CAPTION_PX))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(78)
            .build_cartesian_2d(
                (x0..x1).log_scale().with_key_points(xb).with_light_points(xl),
                (y0..y1).log_scale().with_key_points(yb).with_light_points(yl),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x.label)
            .y_desc(y.label)
            .axis_desc_style((FONT, DESC_PX))
            .label_style((FONT, TICK_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .x_label_formatter(&|v| x.ticks.format(*v))
            .y_label_formatter(&|v| y.ticks.format(*v))
            .draw()
            .map_err(err)?;
        for s in series {
            let i = entries.iter().position(|e| e.label == s.label).unwrap_or(0);
            let e = &entries[i];
            let pts = s.points.iter().copied();
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts, 6, 4, e.color.stroke_width(2))).map_err(err)?;
            } else {
                chart.draw_series(LineSeries::new(pts, e.color.stroke_width(2))).map_err(err)?;
            }
            if let Some((shape, filled)) = e.marker {
                for p in &s.points {
                    draw_marker(&root, shape, chart.backend_coord(p), e.color, filled)?;
                }
            }
        }
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_read_as_units_and_never_repeat() {
        assert_eq!(Ticks::Seconds.format(2e-2), "20 ms");
        assert_eq!(Ticks::Seconds.format(5e-4), "500 µs");
        assert_eq!(Ticks::Seconds.format(2.0), "2 s");
        assert_eq!((Ticks::Pow2.format(65536.0), Ticks::Pow2.format(512.0)), ("64K".into(), "512".into()));
        assert_eq!((Ticks::Plain.format(0.5), Ticks::Plain.format(1000.0)), ("0.5".into(), "1000".into()));
        assert_eq!(Ticks::Sci.format(1e-7), "1e-7");
        // The committed error_vs_speed.svg printed `1.0e-2` twice on a 1 ms … 40 ms axis.
        for (t, lo, hi) in [
            (Ticks::Seconds, 6.5e-4, 6e-2),
            (Ticks::Seconds, 3e-3, 0.4),
            (Ticks::Plain, 0.6, 90.0),
            (Ticks::Sci, 5e-9, 5.0),
            (Ticks::Pow2, 170.0, 98304.0),
        ] {
            let (bold, light) = t.positions(lo, hi);
            let labels: Vec<String> = bold.iter().map(|v| t.format(*v)).collect();
            let mut uniq = labels.clone();
            uniq.dedup();
            assert!(bold.len() >= 2 && bold.len() <= 12, "{t:?}: {labels:?}");
            assert_eq!(labels, uniq, "{t:?}");
            assert!(bold.iter().chain(&light).all(|v| *v >= lo * 0.999 && *v <= hi * 1.001), "{t:?}");
        }
        assert_eq!(Ticks::Sci.positions(5e-9, 5.0).1, Vec::<f64>::new(), "no minor lines over 9 decades");
    }
}
