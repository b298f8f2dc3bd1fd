//! The report's weight heatmaps (`weights_<family>.svg`): one N×N panel per backend, each with
//! query/key axes and its own colour bar (white = 0, blue = the panel's largest |weight|, red =
//! negative weights, which linformer and performer can produce), so a reader sees what a dark
//! cell is worth without the README.

use super::plots::{FONT, Heading, PlotResult, TICK_PX, centered, err, header, header_height, header_width};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Pixels per weight cell.
const CELL: u32 = 4;
/// Room left of a panel's cells (query axis) and right of them.
const LEFT: u32 = 56;
const RIGHT: u32 = 16;
/// Heights: caption, key axis under the cells, colour bar with its labels.
const CAPTION: u32 = 34;
const XAXIS: u32 = 44;
const BAR: u32 = 64;

/// The colour of a weight at `t` = weight ÷ the panel's largest |weight| (clamped to −1…1).
pub fn weight_color(t: f32) -> RGBColor {
    let a = t.abs().clamp(0.0, 1.0);
    let f = |x: f32| (255.0 * x) as u8;
    if t < 0.0 {
        RGBColor(255, f(1.0 - a), f(1.0 - a))
    } else {
        RGBColor(f(1.0 - a), f(1.0 - 0.6 * a), f(1.0 - 0.3 * a))
    }
}

/// A colour-bar label: two decimals, or two significant digits for small values.
fn bar_label(v: f32) -> String {
    if v == 0.0 || v.abs() >= 0.01 { format!("{v:.2}") } else { format!("{v:.1e}") }
}

/// One N×N heatmap per panel (row-major weights), each with its colour bar.
pub fn heatmaps(path: &Path, head: &Heading, n: usize, panels: &[(String, Vec<f32>)]) -> PlotResult {
    let side = n as u32 * CELL;
    let pw = side + LEFT + RIGHT;
    let count = panels.len().max(1) as u32;
    let width = (pw * count).max(header_width(head.title));
    let height = CAPTION + side + XAXIS + BAR + header_height(&head.notes, width);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let body = header(&root, head.title, &head.notes)?;
    // Panels left-aligned at their natural width; any spare width (a long note line) stays right.
    let mut rest = body;
    for (name, w) in panels {
        let (area, right) = rest.split_horizontally(pw);
        rest = right;
        panel(&area, name, n, w)?;
    }
    root.present().map_err(err)
}

fn panel(area: &DrawingArea<SVGBackend, Shift>, name: &str, n: usize, w: &[f32]) -> PlotResult {
    let side = n as u32 * CELL;
    let (top, bar) = area.split_vertically(CAPTION + side + XAXIS);
    let mut chart = ChartBuilder::on(&top)
        .caption(name, (FONT, 17))
        .margin_right(RIGHT)
        .x_label_area_size(XAXIS)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(0..n as i32, n as i32..0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(5)
        .y_labels(5)
        .x_desc("key j")
        .y_desc("query i")
        .axis_desc_style((FONT, 14))
        .label_style((FONT, TICK_PX))
        .draw()
        .map_err(err)?;
    let max = w.iter().filter(|x| x.is_finite()).fold(0.0f32, |m, &x| m.max(x.abs())).max(1e-12);
    chart
        .draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
            let x = w.get(i * n + j).copied().unwrap_or(0.0);
            // A non-finite weight is drawn at full strength (it is then also in the notes).
            let t = if x.is_finite() { x / max } else { 1.0 };
            Rectangle::new([(j as i32, i as i32), (j as i32 + 1, i as i32 + 1)], weight_color(t).filled())
        }))
        .map_err(err)?;
    let negative = w.iter().any(|x| *x < 0.0);
    colour_bar(&bar, max, negative)
}

/// A horizontal bar under the cells: 0 → max (and −max → 0 when a weight is negative).
fn colour_bar(area: &DrawingArea<SVGBackend, Shift>, max: f32, negative: bool) -> PlotResult {
    let (w, _) = area.dim_in_pixel();
    let (x0, x1) = (LEFT as i32, w as i32 - RIGHT as i32);
    let (y0, y1) = (6, 20);
    let lo = if negative { -1.0f32 } else { 0.0 };
    let steps = 64;
    for k in 0..steps {
        let t = lo + (1.0 - lo) * (k as f32 + 0.5) / steps as f32;
        let a = x0 + (x1 - x0) * k / steps;
        let b = x0 + (x1 - x0) * (k + 1) / steps;
        area.draw(&Rectangle::new([(a, y0), (b, y1)], weight_color(t).filled())).map_err(err)?;
    }
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1))).map_err(err)?;
    let mut ticks = vec![(x0, bar_label(lo * max)), (x1, bar_label(max))];
    if negative {
        ticks.push(((x0 + x1) / 2, "0".into()));
    }
    for (x, t) in ticks {
        area.draw(&PathElement::new(vec![(x, y1), (x, y1 + 4)], BLACK.stroke_width(1))).map_err(err)?;
        area.draw(&Text::new(t, (x, y1 + 6), centered(TICK_PX))).map_err(err)?;
    }
    let what = "weight (this panel's scale)";
    area.draw(&Text::new(what, ((x0 + x1) / 2, y1 + 26), centered(TICK_PX))).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_white_to_blue_and_red_for_negative() {
        assert_eq!(weight_color(0.0), RGBColor(255, 255, 255));
        assert_eq!(weight_color(1.0), RGBColor(0, 101, 178));
        assert_eq!(weight_color(-1.0), RGBColor(255, 0, 0));
        assert_eq!(weight_color(7.0), weight_color(1.0), "clamped");
        assert_eq!(
            (bar_label(0.5234), bar_label(0.0), bar_label(-0.004)),
            ("0.52".into(), "0.00".into(), "-4.0e-3".into())
        );
    }
}
