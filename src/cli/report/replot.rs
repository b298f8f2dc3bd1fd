//! `attnkit report --replot`: redraws the SVGs of a report folder from its results.json,
//! without measuring anything, so a change to the plots does not cost a 13-minute sweep that
//! occupies every core. The weight heatmaps are recomputed (seeded N = 64 forwards, untimed);
//! README.md and the raw files are left as they are.
//!
//! The reader takes back what [`super::results::write_results`] wrote: the sweep rows
//! (`results`), the sections' rows (`sections`), the backward section's rows (`backward`,
//! absent from older files) and the frontier families (`meta.families`).
//! A file written before section rows carried `rounds` gets it inferred: every section but the
//! decode sweep was measured in alternated rounds then.

use super::backward::{self, Backward, BackwardRow};
use super::decode;
use super::decode_common::Decode;
use super::figures;
use super::results::Row;
use super::section::SectionRow;
use attnkit::bench::backward::BackwardRecord;
use attnkit::bench::{BenchRecord, Status, Timing};
use attnkit::ceiling::{BandwidthCeiling, DecodeRate};
use attnkit::inputs::InputFamily;
use attnkit::{AttnError, DType, Device, Exactness, Problem, Window};
use serde_json::Value;
use std::path::Path;

/// What results.json holds that the plots need.
pub struct Loaded {
    pub rows: Vec<Row>,
    pub sections: Vec<SectionRow>,
    pub families: Vec<InputFamily>,
    /// The backward section's rows (empty in a file written before it existed).
    pub backward: Vec<BackwardRow>,
}

fn bad(what: &str) -> AttnError {
    AttnError::invalid(format!("results.json: {what}"))
}

fn text<'a>(v: &'a Value, k: &str) -> Result<&'a str, AttnError> {
    v[k].as_str().ok_or_else(|| bad(&format!("`{k}` is not a string")))
}

fn uint(v: &Value, k: &str) -> Result<usize, AttnError> {
    v[k].as_u64().map(|x| x as usize).ok_or_else(|| bad(&format!("`{k}` is not a count")))
}

fn parsed<T: std::str::FromStr>(v: &Value, k: &str) -> Result<T, AttnError> {
    text(v, k)?.parse().map_err(|_| bad(&format!("`{k}` = {:?} does not parse", v[k])))
}

/// One [`BenchRecord`] back from its JSON object (the fields `record.rs` serializes).
fn record(v: &Value) -> Result<BenchRecord, AttnError> {
    let mut p = Problem::new(uint(v, "batch")?, uint(v, "heads")?, uint(v, "seq")?, uint(v, "dim")?)
        .with_kv_heads(uint(v, "kv_heads")?)
        .with_seq_k(uint(v, "seq_kv")?)
        .with_causal(v["causal"].as_bool().ok_or_else(|| bad("`causal` is not a bool"))?)
        .with_dtype(parsed::<DType>(v, "dtype")?);
    p.window = parsed::<Window>(v, "window")?;
    let device = match v["device"].as_str() {
        Some("cpu") => Some(Device::Cpu),
        Some("cuda") => Some(Device::Cuda),
        _ => None,
    };
    let mut r = BenchRecord::new(text(v, "backend")?, text(v, "variant")?, &p, device, uint(v, "threads")?);
    r.inputs = parsed::<InputFamily>(v, "inputs")?;
    r.status = status(v)?;
    r.reps = uint(v, "reps")?;
    r.timing = match v["timing"].as_str() {
        Some("host") => Some(Timing::Host),
        Some("device") => Some(Timing::Device),
        _ => None,
    };
    r.device_timing_error = v["device_timing_error"].as_str().map(str::to_string);
    (r.median_s, r.gflops, r.gemm_gflops) = (v["median_s"].as_f64(), v["gflops"].as_f64(), v["gemm_gflops"].as_f64());
    (r.gemm_fraction, r.bandwidth_gb_per_s) = (v["gemm_fraction"].as_f64(), v["bandwidth_gb_per_s"].as_f64());
    r.peak_bytes = v["peak_bytes"].as_u64();
    let d = &v["decode"];
    r.decode = match (d["bytes"].as_u64(), d["gb_per_s"].as_f64(), d["fraction_of_ceiling"].as_f64()) {
        (Some(bytes), Some(gb_per_s), Some(fraction_of_ceiling)) => {
            Some(DecodeRate { bytes, gb_per_s, fraction_of_ceiling })
        }
        _ => None,
    };
    Ok(r)
}

fn row(v: &Value) -> Result<Row, AttnError> {
    Ok(Row {
        label: text(v, "label")?.to_string(),
        exactness: match v["exactness"].as_str() {
            Some("exact") => Some(Exactness::Exact),
            Some("approx") => Some(Exactness::Approximate),
            _ => None,
        },
        rec: record(v)?,
        frontier: v["frontier"].as_bool().unwrap_or(false),
        err_max_abs: v["err_max_abs"].as_f64(),
        err_max_rel: v["err_max_rel"].as_f64(),
        rel_err: v["rel_err"].as_f64(),
        baseline_rel_err: v["baseline_rel_err"].as_f64(),
        err_vs: v["err_vs"].as_str().unwrap_or("").to_string(),
    })
}

fn section_row(v: &Value) -> Result<SectionRow, AttnError> {
    let section = match text(v, "section")? {
        "decode" => "decode",
        "prefill-bf16" => "prefill-bf16",
        "masks" => "masks",
        s if s == super::decode_target::SECTION => super::decode_target::SECTION,
        s if s == super::decode_kvcache::SECTION => super::decode_kvcache::SECTION,
        s => return Err(bad(&format!("unknown section `{s}`"))),
    };
    let mut r = SectionRow::new(section, text(v, "label")?, record(v)?);
    r.ratio = v["ratio"].as_f64();
    r.ratio_to = v["ratio_to"].as_str().unwrap_or("").to_string();
    r.torch_median_s = v["torch_median_s"].as_f64();
    r.rounds = match v.get("rounds") {
        Some(x) => x.as_u64().map(|n| n as usize),
        None if section == "decode" => None,
        None => r.rec.status.is_ok().then_some(r.rec.reps),
    };
    Ok(r)
}

/// The status of a row from its `status` and `reason` fields.
fn status(v: &Value) -> Result<Status, AttnError> {
    let reason = v["reason"].as_str().unwrap_or("").to_string();
    Ok(match text(v, "status")? {
        "ok" => Status::Ok,
        "skipped" => Status::Skipped(reason),
        "error" => Status::Failed(reason),
        s => return Err(bad(&format!("unknown status `{s}`"))),
    })
}

/// One backward row back from its JSON object (what [`BackwardRecord`] serializes).
fn backward_row(v: &Value) -> Result<BackwardRow, AttnError> {
    let p = Problem::new(uint(v, "batch")?, uint(v, "heads")?, uint(v, "seq")?, uint(v, "dim")?)
        .with_kv_heads(uint(v, "kv_heads")?)
        .with_seq_k(uint(v, "seq_kv")?)
        .with_causal(v["causal"].as_bool().ok_or_else(|| bad("`causal` is not a bool"))?)
        .with_dtype(parsed::<DType>(v, "dtype")?)
        .with_window(parsed::<Window>(v, "window")?);
    let mut r = BackwardRecord::new(text(v, "backend")?, &p, uint(v, "threads")?);
    r.status = status(v)?;
    r.reps = uint(v, "reps")?;
    let f = |k: &str| v[k].as_f64();
    (r.fwd_s, r.bwd_s, r.fwdbwd_s) = (f("fwd_s"), f("bwd_s"), f("fwdbwd_s"));
    (r.fwd_gflops, r.bwd_gflops, r.fwdbwd_gflops) = (f("fwd_gflops"), f("bwd_gflops"), f("fwdbwd_gflops"));
    (r.gemm_gflops, r.fwd_gemm_fraction) = (f("gemm_gflops"), f("fwd_gemm_fraction"));
    (r.bwd_gemm_fraction, r.fwdbwd_gemm_fraction) = (f("bwd_gemm_fraction"), f("fwdbwd_gemm_fraction"));
    r.peak_bytes = v["peak_bytes"].as_u64();
    Ok(BackwardRow { rec: r, torch_fwdbwd_s: f("torch_fwdbwd_s") })
}

/// Reads `dir/results.json`.
pub fn load(dir: &Path) -> Result<Loaded, AttnError> {
    let path = dir.join("results.json");
    let body = std::fs::read_to_string(&path)
        .map_err(|e| AttnError::invalid(format!("--replot reads {}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| bad(&e.to_string()))?;
    let list = |k: &str| v[k].as_array().ok_or_else(|| bad(&format!("no `{k}` list")));
    let rows = list("results")?.iter().map(row).collect::<Result<Vec<_>, _>>()?;
    let sections = list("sections")?.iter().map(section_row).collect::<Result<Vec<_>, _>>()?;
    let families = v["meta"]["families"]
        .as_array()
        .ok_or_else(|| bad("no `meta.families`"))?
        .iter()
        .map(|f| f.as_str().ok_or_else(|| bad("a family is not a string"))?.parse::<InputFamily>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("`meta.families` holds an unknown family"))?;
    let backward = match v.get("backward") {
        None => Vec::new(),
        Some(b) => b
            .as_array()
            .ok_or_else(|| bad("`backward` is not a list"))?
            .iter()
            .map(backward_row)
            .collect::<Result<_, _>>()?,
    };
    Ok(Loaded { rows, sections, families, backward })
}

/// Redraws every SVG of `dir`; returns the one-line summary.
pub fn run(dir: &Path) -> Result<String, AttnError> {
    let l = load(dir)?;
    let infos = attnkit::list_backends();
    let available: Vec<&str> =
        infos.iter().filter(|b| b.unavailable_reason.is_none()).map(|b| b.name.as_str()).collect();
    let heat: Vec<figures::Heatmaps> = l.families.iter().map(|&f| figures::heatmaps(&available, f)).collect();
    let mut notes = figures::write_plots(dir, &l.rows, &heat)?;
    // The plot reads only the ceiling's rate, which every decode row carries.
    let gb_per_s = l.sections.iter().find_map(|r| r.rec.bandwidth_gb_per_s);
    let bandwidth = gb_per_s.map(|gb_per_s| BandwidthCeiling { bytes: 0, threads: 0, median_s: 0.0, gb_per_s });
    let dec = Decode { rows: l.sections, bandwidth, dot: None, torch_note: None, elapsed_s: 0.0 };
    let drawn = decode::plot(dir, &dec);
    notes.push(if drawn.starts_with("![") { decode::PLOT_FILE.to_string() } else { drawn });
    if !l.backward.is_empty() {
        // Every ok row counts its rounds in `reps`; the plot's note names the most.
        let rounds = l.backward.iter().filter(|r| r.rec.status.is_ok()).map(|r| r.rec.reps).max().unwrap_or(0);
        let bwd = Backward { rows: l.backward, rounds, torch_note: None, elapsed_s: 0.0 };
        let drawn = backward::plot(dir, &bwd);
        notes.push(if drawn.starts_with("![") { backward::PLOT_FILE.to_string() } else { drawn });
    }
    Ok(format!("replotted from {}: {}", dir.join("results.json").display(), notes.join(", ")))
}
