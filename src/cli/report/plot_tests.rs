//! Tests of the report's figures as files: a small synthetic result set is written as
//! results.json, redrawn through `--replot`'s path, and every SVG is read back to check that
//! nothing (text at its estimated width, markers, lines) lies outside the drawing, the defect
//! of the old frontier plot whose labels ran past its right edge. Also: results.json reads back
//! to the same rows, and an empty result set draws without panicking.

use super::decode::{self, SHAPES, decode_problem};
use super::decode_common::Decode;
use super::figures;
use super::replot;
use super::results::{Row, tests::row};
use super::section::{SectionRow, timed_record};
use attnkit::ceiling::BandwidthCeiling;
use attnkit::inputs::InputFamily;
use attnkit::{DType, Exactness, Window};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnkit-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sweep rows of three backends at three N, both masks, and frontier rows (long labels) at
/// both frontier N.
fn sweep_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for causal in [false, true] {
        for (i, n) in [256, 1024, 4096].into_iter().enumerate() {
            let t = 1e-3 * 4f64.powi(i as i32);
            rows.push(row("flash-cpu", Exactness::Exact, n, causal, Some(t), Some(3e-7)));
            rows.push(row("nystrom", Exactness::Approximate, n, causal, Some(t / 3.0), Some(0.2)));
            let mut local = row("local(w=256)", Exactness::Exact, n, causal, Some(t / 4.0), Some(0.4));
            local.rec.window = Window::new(256, if causal { 0 } else { 256 });
            rows.push(local);
        }
    }
    rows.push(row("sdpa", Exactness::Exact, 256, false, None, None));
    for n in [1024, 4096] {
        for (label, t, e) in [
            ("linformer(gaussian,k=256)", 2e-2, 4.5),
            ("performer(relu,m=256)", 1e-2, 0.99),
            ("nystrom(m=32)", 5e-3, 0.3),
            ("local(w=64)", 3e-3, 0.5),
        ] {
            let mut r = row(label, Exactness::Approximate, n, false, Some(t), Some(e));
            r.frontier = true;
            rows.push(r);
        }
    }
    rows
}

/// Decode rows for every shape and dtype at two N_k (one with PyTorch's time), and a prefill row.
fn section_rows() -> Vec<SectionRow> {
    let bw = BandwidthCeiling { bytes: 1 << 29, threads: 2, median_s: 0.02, gb_per_s: 30.0 };
    let mut out = Vec::new();
    for &(label, h, hkv, d) in &SHAPES {
        for dtype in [DType::F32, DType::BF16] {
            for nk in [1024, 4096] {
                let p = decode_problem(h, hkv, d, nk, dtype);
                let rec = timed_record(&p, 1e-5 * nk as f64 / 1024.0).with_bandwidth(&p, &bw);
                let mut r = SectionRow::new("decode", format!("{label} {dtype}"), rec);
                r.torch_median_s = (nk == 4096).then_some(1e-4);
                out.push(r);
            }
        }
    }
    let p = attnkit::Problem::new(1, 8, 256, 64);
    out.push(SectionRow::new("prefill-bf16", "prefill", timed_record(&p, 1e-3)).alternated());
    out
}

fn write_json(dir: &Path, rows: &[Row], sections: &[SectionRow]) {
    let json = serde_json::json!({ "meta": { "families": ["normal"] }, "results": rows, "sections": sections });
    std::fs::write(dir.join("results.json"), serde_json::to_string(&json).unwrap()).unwrap();
}

/// Rows compared through their JSON (what results.json holds).
fn json<T: serde::Serialize>(xs: &[T]) -> Vec<serde_json::Value> {
    xs.iter().map(|x| serde_json::to_value(x).unwrap()).collect()
}

/// Equal row by row and field by field (nested too), numbers to 1e-12 relative: serde_json's
/// default float parsing may differ from the written value in the last bit.
fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w))),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| close(v, w)),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(p), Some(q)) => (p - q).abs() <= 1e-12 * p.abs().max(q.abs()),
            _ => a == b,
        },
    }
}

fn same(a: &[serde_json::Value], b: &[serde_json::Value]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!(close(x, y), "reads back as\n{x}\nwas\n{y}");
    }
}

fn attr(tag: &str, name: &str) -> Option<f64> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[start..].split('"').next()?.parse().ok()
}

/// Everything drawn outside the SVG's width × height: text at 0.55 em per character from its
/// anchor (a rotated axis title along y), circles, and the points of lines and polygons.
fn outside(svg: &str) -> Vec<String> {
    let head = &svg[..svg.find('>').unwrap()];
    let (w, h) = (attr(head, "width").unwrap(), attr(head, "height").unwrap());
    let inside = |x: f64, y: f64| (-0.5..=w + 0.5).contains(&x) && (-0.5..=h + 0.5).contains(&y);
    let mut bad = Vec::new();
    for part in svg.split('<').skip(1) {
        let tag = part.split('>').next().unwrap_or("");
        let name = tag.split(' ').next().unwrap_or("");
        match name {
            "text" => {
                let content = part.split('>').nth(1).unwrap_or("").trim();
                let chars = content.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").chars().count();
                let (x, y, px) = (attr(tag, "x").unwrap(), attr(tag, "y").unwrap(), attr(tag, "font-size").unwrap());
                let len = chars as f64 * 0.55 * px;
                let before = if tag.contains("text-anchor=\"middle\"") {
                    len / 2.0
                } else if tag.contains("text-anchor=\"end\"") {
                    len
                } else {
                    0.0
                };
                let ok = if tag.contains("rotate(") {
                    inside(x, y + before) && inside(x, y + before - len)
                } else {
                    inside(x - before, y) && inside(x - before + len, y + px)
                };
                if !ok {
                    bad.push(format!("text {content:?} at ({x}, {y})"));
                }
            }
            "circle" => {
                let (x, y, r) = (attr(tag, "cx").unwrap(), attr(tag, "cy").unwrap(), attr(tag, "r").unwrap());
                if !inside(x - r, y - r) || !inside(x + r, y + r) {
                    bad.push(format!("circle at ({x}, {y})"));
                }
            }
            "polyline" | "polygon" => {
                let pts = tag.split("points=\"").nth(1).unwrap_or("").split('"').next().unwrap_or("");
                for p in pts.split_whitespace() {
                    let (x, y) = p.split_once(',').unwrap();
                    if !inside(x.parse().unwrap(), y.parse().unwrap()) {
                        bad.push(format!("{name} point {p}"));
                    }
                }
            }
            _ => {}
        }
    }
    bad
}

#[test]
fn every_plot_draws_inside_its_figure() {
    let dir = scratch("inside");
    let (rows, sections) = (sweep_rows(), section_rows());
    write_json(&dir, &rows, &sections);
    let summary = replot::run(&dir).unwrap();
    assert!(!summary.contains("not drawn"), "{summary}");
    let files = [
        "time_vs_n.svg",
        "memory_vs_n.svg",
        "error_vs_n.svg",
        "error_vs_speed.svg",
        "weights_normal.svg",
        decode::PLOT_FILE,
    ];
    for f in files {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(svg.matches("<text").count() > 10, "{f} has hardly any text");
        assert_eq!(outside(&svg), Vec::<String>::new(), "{f}");
    }
    let decode_svg = std::fs::read_to_string(dir.join(decode::PLOT_FILE)).unwrap();
    assert!(decode_svg.contains("one call each"), "single-call rows are said to be single calls");
    let frontier = std::fs::read_to_string(dir.join("error_vs_speed.svg")).unwrap();
    assert!(frontier.contains("linformer(gaussian,k=256)"), "the legend names every variant");
    // The check itself catches what the old plot did: a label running past the right edge.
    let cut = "<svg width=\"100\" height=\"50\"><text x=\"90\" y=\"5\" font-size=\"12\">linformer</text></svg>";
    assert_eq!(outside(cut).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn results_json_reads_back_to_the_same_rows() {
    let dir = scratch("json");
    let (rows, mut sections) = (sweep_rows(), section_rows());
    sections[0].rounds = Some(5);
    write_json(&dir, &rows, &sections);
    let l = replot::load(&dir).unwrap();
    same(&json(&l.rows), &json(&rows));
    same(&json(&l.sections), &json(&sections));
    assert_eq!(l.families, [InputFamily::Normal]);
    // A file from before `rounds`: decode sweep rows were single calls, the others alternated.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    for s in v["sections"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("rounds");
    }
    std::fs::write(dir.join("results.json"), v.to_string()).unwrap();
    let old = replot::load(&dir).unwrap();
    assert!(old.sections.iter().all(|r| (r.section == "decode") == r.rounds.is_none()));
    std::fs::write(dir.join("results.json"), "{\"results\": 3}").unwrap();
    assert!(replot::load(&dir).is_err(), "a malformed file is an error, not a panic");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_empty_result_set_draws_without_panicking() {
    let dir = scratch("empty");
    let notes = figures::write_plots(&dir, &[], &[]).unwrap();
    assert_eq!(notes.len(), 4, "{notes:?}");
    let d = Decode { rows: vec![], bandwidth: None, dot: None, torch_note: None, elapsed_s: 0.0 };
    assert!(decode::plot(&dir, &d).contains("not drawn"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_decode_note_says_how_the_rows_were_timed() {
    let mut rows = section_rows();
    let d = |rows: Vec<SectionRow>| Decode { rows, bandwidth: None, dot: None, torch_note: None, elapsed_s: 0.0 };
    assert!(decode::timing_note(&d(rows.clone())).starts_with("flash-cpu and PyTorch rows: one call each"));
    for r in rows.iter_mut().filter(|r| r.section == "decode") {
        r.rounds = Some(5);
    }
    let note = decode::timing_note(&d(rows.clone()));
    assert!(note.starts_with("flash-cpu rows: the median over 5 rounds"), "{note}");
    rows[0].rounds = None;
    assert!(decode::timing_note(&d(rows)).contains("one call each"), "one single-call row makes the note say so");
}
