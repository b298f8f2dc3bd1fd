//! The report's check of the decode targets on their own shape: one query row over
//! N_k = 32768 keys, D = 128, 32 query heads over 8 KV heads, causal. f32 and bf16 `flash-cpu`
//! and PyTorch's CPU SDPA (f32) run in turn, round after round in the same run, and the
//! section states: f32 decode as a fraction of the streaming-read ceiling (target ≥ 60%), its
//! speed-up over PyTorch (≥ 4×) and bf16's over f32 (≥ 1.8×), each a median over rounds of
//! same-round ratios.

use super::decode_common::{Decode, torch_env, torch_time};
use super::section::{Case, Scale, SectionRow, alternate, round_ratio, verdict};
use crate::cli::fmt_secs;
use attnkit::attention::PairOwned;
use attnkit::bench::{LazyCeiling, Policy, median};
use attnkit::ceiling::LazyBandwidth;
use attnkit::{AttnError, DType, Problem};
use std::fmt::Write as _;

/// The rows' section name.
pub const SECTION: &str = "decode-target";
/// Rounds of (f32, bf16, PyTorch f32).
const ROUNDS: usize = 5;

/// The decode target shape with `nk` keys in `dtype`.
pub fn target_problem(nk: usize, dtype: DType) -> Problem {
    Problem::new(1, 32, 1, 128).with_kv_heads(8).with_seq_k(nk).with_causal(true).with_dtype(dtype)
}

/// Measures the f32 and bf16 rows (each with `ratio` = its time ÷ f32's, and PyTorch's f32
/// median on the f32 row when PyTorch is configured).
pub fn run(sc: &Scale, ceiling: &LazyCeiling, bw: &LazyBandwidth) -> Result<Vec<SectionRow>, AttnError> {
    let nk = sc.n(1 << 15, 1 << 15);
    let cases = [DType::F32, DType::BF16].map(|t| {
        let label = format!("decode 1×{nk} H=32/8 D=128 causal {t}");
        Case::single(label, target_problem(nk, t), PairOwned::default())
    });
    let policy = Policy { reps: 3, max_measure_s: 3.0, max_predicted_s: 30.0 };
    let torch = torch_env().ok();
    let (mut recs, mut times) = (vec![None; cases.len()], vec![Vec::new(); cases.len()]);
    let mut torch_times = Vec::new();
    for _ in 0..if sc.quick { 2 } else { ROUNDS } {
        for (i, (rec, t)) in alternate(&cases, 1, ceiling, &policy)?.into_iter().enumerate() {
            times[i].extend(t);
            recs[i] = Some(rec);
        }
        if let Some((py, peers)) = &torch {
            torch_times.extend(torch_time(py, peers, &target_problem(nk, DType::F32), policy.reps).ok());
        }
    }
    let mut rows = Vec::new();
    for (i, (case, rec)) in cases.iter().zip(recs).enumerate() {
        let mut rec = rec.expect("every case ran at least once");
        let p = &case.parts[0].0;
        if rec.status.is_ok() && !times[i].is_empty() {
            let t = median(&times[i]);
            (rec.median_s, rec.reps, rec.gflops) = (Some(t), times[i].len(), Some(p.flops() / t / 1e9));
            rec = rec.with_bandwidth(p, bw.get()?);
        }
        let mut row = SectionRow::new(SECTION, case.label.clone(), rec).alternated();
        row.ratio = round_ratio(&times[i], &times[0]);
        row.ratio_to = cases[0].label.clone();
        if i == 0 && !torch_times.is_empty() {
            row.torch_median_s = Some(median(&torch_times));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The subsection: the three targets, then the rows.
pub fn markdown(d: &Decode) -> String {
    let rows: Vec<&SectionRow> = d.rows.iter().filter(|r| r.section == SECTION).collect();
    let Some(f32_row) = rows.iter().find(|r| r.rec.dtype == DType::F32) else {
        return String::new();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Decode targets: f32 ≥ 60% of the read ceiling, ≥ 4× PyTorch, bf16 ≥ 1.8× f32 (N_q = 1, N_k = {}, D = 128, H = 32 over 8 KV heads, causal)\n",
        f32_row.rec.seq_kv
    );
    let _ = writeln!(
        s,
        "f32 and bf16 `flash-cpu` and PyTorch CPU SDPA (f32) run in turn, {} rounds in the same run; each row's time is the median over rounds, each ratio the median of same-round ratios (PyTorch's: of the medians).\n",
        f32_row.rec.reps
    );
    let frac_text = f32_row.rec.decode.map_or("not measured (target ≥ 60% of the ceiling)".into(), |x| {
        let pct = 100.0 * x.fraction_of_ceiling;
        format!(
            "{:.1} GB/s = {pct:.0}% of the {:.1} GB/s ceiling measured in this run (target ≥ 60%): {}",
            x.gb_per_s,
            x.gb_per_s / x.fraction_of_ceiling,
            if pct >= 60.0 { "pass" } else { "not met" }
        )
    });
    let _ = writeln!(s, "- f32 decode {frac_text}");
    let over_torch = f32_row.torch_median_s.zip(f32_row.rec.median_s).map(|(t, a)| t / a);
    let _ = writeln!(s, "- f32 decode speed-up over PyTorch: {}", verdict(over_torch, 4.0, false));
    let bf16 = rows.iter().find(|r| r.rec.dtype == DType::BF16).and_then(|r| r.ratio).map(|x| 1.0 / x);
    let _ = writeln!(s, "- bf16 decode speed-up over f32: {}\n", verdict(bf16, 1.8, false));
    let _ =
        writeln!(s, "| case | median over rounds | GB/s | % of ceiling | time ÷ f32 time | PyTorch median | status |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in &rows {
        let c = &r.rec;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            c.median_s.map_or("–".into(), fmt_secs),
            c.decode.map_or("–".into(), |x| format!("{:.2}", x.gb_per_s)),
            c.decode.map_or("–".into(), |x| format!("{:.0}%", 100.0 * x.fraction_of_ceiling)),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            r.torch_median_s.map_or("–".into(), fmt_secs),
            super::markdown::status_of(c).replace("reps", "rounds")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnkit::ceiling::{BandwidthCeiling, bytes_moved};

    fn row(dtype: DType, t: f64, ratio: f64, torch: Option<f64>, bw: &BandwidthCeiling) -> SectionRow {
        let p = target_problem(1 << 15, dtype);
        let rec = super::super::section::timed_record(&p, t);
        let mut r = SectionRow::new(SECTION, format!("{dtype}"), rec.with_bandwidth(&p, bw));
        (r.ratio, r.torch_median_s) = (Some(ratio), torch);
        r
    }

    /// Each target line passes or fails on its own figure, and nothing is claimed unmeasured.
    #[test]
    fn targets_are_judged_from_the_rows() {
        let bw = BandwidthCeiling { bytes: 1 << 30, threads: 2, median_s: 0.02, gb_per_s: 30.0 };
        let bytes = bytes_moved(&target_problem(1 << 15, DType::F32)) as f64;
        let t70 = bytes / (0.7 * 30e9); // 70% of the ceiling
        let decode = |rows| Decode { rows, bandwidth: Some(bw), dot: None, torch_note: None, elapsed_s: 0.0 };
        let good =
            decode(vec![row(DType::F32, t70, 1.0, Some(5.0 * t70), &bw), row(DType::BF16, t70 / 2.0, 0.5, None, &bw)]);
        let md = markdown(&good);
        assert!(md.contains("= 70% of the 30.0 GB/s ceiling measured in this run (target ≥ 60%): pass"), "{md}");
        assert!(md.contains("over PyTorch: measured 5.00× (target ≥ 4×): pass"), "{md}");
        assert!(md.contains("over f32: measured 2.00× (target ≥ 1.8×): pass"), "{md}");
        let bad = decode(vec![row(DType::F32, 1.4 * t70, 1.0, None, &bw), row(DType::BF16, t70, 0.7, None, &bw)]);
        let md = markdown(&bad);
        assert!(md.contains("= 50% of the") && md.contains("not met"), "{md}");
        assert!(
            md.contains("over PyTorch: not measured") && md.contains("measured 1.43× (target ≥ 1.8×): not met"),
            "{md}"
        );
        assert_eq!(markdown(&decode(vec![])), "", "no rows, no subsection");
    }
}
