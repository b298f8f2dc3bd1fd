//! The report's accuracy–speed figure (`error_vs_speed.svg`): per (input family, N) a panel of
//! relative error against median time, one point per variant.
//!
//! Points carry no text: clusters of variants with the same error (every approximation near
//! the mean-of-V error) made their labels overprint and run off the panel. Instead each
//! backend kind has a colour and each of its variants a marker shape, listed in one legend
//! beside the panels; points on the accuracy–speed frontier are filled and joined by a grey
//! line, the others hollow.

use super::plots::{
    Axis, GREY, Heading, LegendEntry, PlotResult, Ticks, color, draw_legend, draw_marker, err, header, header_height,
    header_width, legend_width, log_range,
};
use plotters::prelude::*;
use std::path::Path;

/// One variant's point in a panel.
pub struct FrontierMark {
    pub label: String,
    pub rel_err: f64,
    pub seconds: f64,
    /// No other point of the panel is both at least as fast and at least as accurate.
    pub on_frontier: bool,
}

/// A panel: its title, points and the mean-of-V baseline's error.
pub struct FrontierPanel {
    pub title: String,
    pub marks: Vec<FrontierMark>,
    pub baseline: Option<f64>,
}

/// The kind a variant's colour stands for: the label without its size parameters
/// (`performer(relu,m=64)` → `performer(relu)`, `nystrom(m=32)` → `nystrom`).
pub fn kind(label: &str) -> String {
    let Some((name, args)) = label.split_once('(') else {
        return label.to_string();
    };
    let kept: Vec<&str> = args.trim_end_matches(')').split(',').filter(|a| !a.contains('=')).collect();
    if kept.is_empty() { name.to_string() } else { format!("{name}({})", kept.join(",")) }
}

/// Per label (in order of first appearance): its colour index (by kind) and marker shape (its
/// index within the kind).
pub fn styles(panels: &[FrontierPanel]) -> Vec<(String, usize, usize)> {
    let (mut kinds, mut out): (Vec<String>, Vec<(String, usize, usize)>) = (Vec::new(), Vec::new());
    for m in panels.iter().flat_map(|p| &p.marks) {
        if out.iter().any(|o| o.0 == m.label) {
            continue;
        }
        let k = kind(&m.label);
        let ci = kinds.iter().position(|x| *x == k).unwrap_or_else(|| {
            kinds.push(k.clone());
            kinds.len() - 1
        });
        let shape = out.iter().filter(|o| o.1 == ci).count();
        out.push((m.label.clone(), ci, shape));
    }
    out
}

const COLS: usize = 2;
const PANEL: (u32, u32) = (560, 420);

pub fn frontier(path: &Path, head: &Heading, x: Axis, y: Axis, panels: &[FrontierPanel]) -> PlotResult {
    let st = styles(panels);
    let mut entries: Vec<LegendEntry> = st
        .iter()
        .map(|(l, ci, shape)| LegendEntry {
            label: l.clone(),
            color: color(*ci),
            line: None,
            marker: Some((*shape, true)),
        })
        .collect();
    entries.extend([
        LegendEntry {
            label: "filled: on the frontier".into(),
            color: GREY,
            line: Some(false),
            marker: Some((0, true)),
        },
        LegendEntry {
            label: "hollow: slower and less accurate".into(),
            color: GREY,
            line: None,
            marker: Some((0, false)),
        },
        LegendEntry { label: "mean-of-V error (baseline)".into(), color: BLACK, line: Some(true), marker: None },
    ]);
    let heading = "variant (colour: kind, shape: size):";
    let lw = legend_width(&entries, heading);
    let rows = panels.len().div_ceil(COLS).max(1) as u32;
    let width = (PANEL.0 * COLS as u32 + lw).max(header_width(head.title));
    let root = SVGBackend::new(path, (width, PANEL.1 * rows + header_height(&head.notes, width))).into_drawing_area();
    let body = header(&root, head.title, &head.notes)?;
    let (grid, legend) = body.split_horizontally(width - lw);
    draw_legend(&legend.margin(30, 0, 0, 0), heading, &entries)?;
    for (p, area) in panels.iter().zip(grid.split_evenly((rows as usize, COLS)).iter()) {
        let (x0, x1) = log_range(p.marks.iter().map(|m| m.rel_err).chain(p.baseline));
        let (y0, y1) = log_range(p.marks.iter().map(|m| m.seconds));
        let (xb, xl) = x.ticks.positions(x0, x1);
        let (yb, yl) = y.ticks.positions(y0, y1);
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, (super::plots::FONT, super::plots::CAPTION_PX))
            .margin(14)
            .x_label_area_size(48)
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
            .axis_desc_style((super::plots::FONT, super::plots::DESC_PX))
            .label_style((super::plots::FONT, super::plots::TICK_PX))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(205, 205, 205))
            .x_label_formatter(&|v| x.ticks.format(*v))
            .y_label_formatter(&|v| y.ticks.format(*v))
            .draw()
            .map_err(err)?;
        if let Some(b) = p.baseline.filter(|b| b.is_finite() && *b > 0.0) {
            chart.draw_series(DashedLineSeries::new([(b, y0), (b, y1)], 6, 5, BLACK.stroke_width(1))).map_err(err)?;
        }
        let mut front: Vec<(f64, f64)> =
            p.marks.iter().filter(|m| m.on_frontier).map(|m| (m.rel_err, m.seconds)).collect();
        front.sort_by(|a, b| a.1.total_cmp(&b.1));
        chart.draw_series(LineSeries::new(front, GREY.stroke_width(1))).map_err(err)?;
        for m in &p.marks {
            let &(_, ci, shape) = st.iter().find(|s| s.0 == m.label).expect("styles() covers every label");
            draw_marker(&root, shape, chart.backend_coord(&(m.rel_err, m.seconds)), color(ci), m.on_frontier)?;
        }
    }
    root.present().map_err(err)
}

/// The axes the report uses.
pub fn axes() -> (Axis<'static>, Axis<'static>) {
    (
        Axis { label: "relative error ‖O − O_exact‖ / ‖O_exact‖, head 0 (log)", ticks: Ticks::Sci },
        Axis { label: "median time per forward (log)", ticks: Ticks::Seconds },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_one_kind_share_a_colour_and_differ_in_shape() {
        assert_eq!(kind("performer(relu,m=64)"), "performer(relu)");
        assert_eq!(kind("linformer(gaussian,k=256)"), "linformer(gaussian)");
        assert_eq!((kind("nystrom(m=32)"), kind("sdpa")), ("nystrom".into(), "sdpa".into()));
        let mark = |l: &str| FrontierMark { label: l.into(), rel_err: 0.1, seconds: 0.1, on_frontier: false };
        let panels = [
            FrontierPanel { title: "a".into(), marks: vec![mark("sdpa"), mark("nystrom(m=32)")], baseline: None },
            FrontierPanel {
                title: "b".into(),
                marks: vec![mark("nystrom(m=64)"), mark("sdpa"), mark("performer(relu,m=64)")],
                baseline: None,
            },
        ];
        let s = styles(&panels);
        let got: Vec<(&str, usize, usize)> = s.iter().map(|(l, c, m)| (l.as_str(), *c, *m)).collect();
        assert_eq!(
            got,
            [("sdpa", 0, 0), ("nystrom(m=32)", 1, 0), ("nystrom(m=64)", 1, 1), ("performer(relu,m=64)", 2, 0)]
        );
    }
}
