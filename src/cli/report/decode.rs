//! The report's *Decode and bf16* section: `flash-cpu` decode (N_q = 1,
//! non-causal, which for one query row equals bottom-right causal) against N_k, f32 and bf16,
//! for an MHA shape (H = 4, D = 64) and a GQA shape (H = 8 over 2 KV heads, D = 128), each
//! row's GB/s ([`attnkit::ceiling::bytes_moved`] over the median) beside the streaming-read
//! ceiling measured in the same run; PyTorch CPU SDPA on the same shapes when
//! `ATTNKIT_TORCH_PYTHON` and `ATTNKIT_PEERS` are set; and bf16 vs f32 prefill at N = 4096
//! (D = 64, H = 8) measured alternately, beside the bf16 dot-product ceiling when the CPU has
//! AVX512_BF16. The heads are fewer than the target shape's 32/8 so the largest cache (N_k = 256K)
//! stays at 512 MiB of f32 K/V and the section at about a minute on 2 cores; the decode
//! target shape (32/8 at N_k = 32768) and its targets are [`super::decode_target`], the KV-cache
//! rows on that shape (paged 16/256, bf16 and int8 caches beside contiguous f32)
//! [`super::decode_kvcache`].

use super::decode_common::Decode;
use super::decode_common::{torch_env, torch_time};
use super::plots::{self, Axis, Series, Ticks};
use super::section::{Case, Scale, SectionRow, alternate, round_ratio, verdict};
use crate::cli::fmt_secs;
use attnkit::attention::PairOwned;
use attnkit::bench::{LazyCeiling, Policy};
use attnkit::ceiling::{DotCeiling, LazyBandwidth, bf16_dot_ceiling};
use attnkit::{AttnError, DType, Problem};
use std::fmt::Write as _;
use std::path::Path;

/// (label, H, H_kv, D) of the decode shapes.
pub const SHAPES: [(&str, usize, usize, usize); 2] = [("MHA H=4 D=64", 4, 4, 64), ("GQA H=8/2 D=128", 8, 2, 128)];
/// The prefill comparison: N, D, H.
pub const PREFILL: (usize, usize, usize) = (4096, 64, 8);
pub const PLOT_FILE: &str = "decode_bandwidth.svg";

/// N_k = 1K … 256K (… 32K with `quick`), powers of two, up to `--max-n` (at least 1K).
pub fn decode_nks(sc: &Scale) -> Vec<usize> {
    let top = sc.n(1 << 18, 1 << 15).max(1 << 10);
    (10..=18).map(|e| 1usize << e).filter(|&n| n <= top).collect()
}

/// The decode problem of `shape` at `nk` in `dtype`.
pub fn decode_problem(h: usize, hkv: usize, d: usize, nk: usize, dtype: DType) -> Problem {
    Problem::new(1, h, 1, d).with_kv_heads(hkv).with_seq_k(nk).with_dtype(dtype)
}

/// Rounds of the N_k sweep, and reps per call in each round (as the targets' rows).
pub const SWEEP_ROUNDS: usize = 5;
pub const REPS_PER_ROUND: usize = 3;

pub fn run(sc: &Scale, ceiling: &LazyCeiling) -> Result<Decode, AttnError> {
    let started = std::time::Instant::now();
    let bw = LazyBandwidth::default();
    let policy = Policy { reps: REPS_PER_ROUND, max_measure_s: 3.0, max_predicted_s: 60.0 };
    let torch = torch_env();
    let mut rows = Vec::new();
    // Per N_k, every shape and dtype in turn, round after round, each row the median over
    // rounds (as the targets are measured): one call per row scattered by 2× on a shared
    // machine (GQA f32 read 39–43% of the ceiling at 32K–64K where alternated rounds read
    // 87–100%). Grouping by N_k keeps one N_k's inputs (≤ 1.5 GiB) alive at a time.
    for &nk in &decode_nks(sc) {
        let cases: Vec<Case> = SHAPES
            .iter()
            .flat_map(|&(label, h, hkv, d)| {
                [DType::F32, DType::BF16].map(|t| {
                    Case::single(format!("{label} {t}"), decode_problem(h, hkv, d, nk, t), PairOwned::default())
                })
            })
            .collect();
        let timed = alternate(&cases, if sc.quick { 2 } else { SWEEP_ROUNDS }, ceiling, &policy)?;
        for (case, (rec, _)) in cases.iter().zip(timed) {
            let p = &case.parts[0].0;
            let rec = if rec.wants_bandwidth(p) { rec.with_bandwidth(p, bw.get()?) } else { rec };
            let mut row = SectionRow::new("decode", case.label.clone(), rec).alternated();
            if let Ok((py, peers)) = &torch {
                row.torch_median_s = torch_time(py, peers, p, policy.reps).ok();
            }
            rows.push(row);
        }
    }
    // The table reads per shape and dtype, by N_k.
    let order = |r: &SectionRow| SHAPES.iter().position(|s| r.label.starts_with(s.0)).unwrap_or(0);
    rows.sort_by_key(|r| (order(r), r.rec.dtype != DType::F32, r.rec.seq_kv));
    rows.extend(super::decode_target::run(sc, ceiling, &bw)?);
    rows.extend(super::decode_kvcache::run(sc, &bw)?);
    let (n, d, h) = (sc.n(PREFILL.0, PREFILL.0), PREFILL.1, PREFILL.2);
    let prefill = |dtype| {
        Case::single(
            format!("prefill N={n} D={d} H={h} {dtype}"),
            Problem::new(1, h, n, d).with_dtype(dtype),
            PairOwned::default(),
        )
    };
    let cases = [prefill(DType::F32), prefill(DType::BF16)];
    let pol = Policy { reps: if sc.quick { 1 } else { 2 }, ..policy };
    let timed = alternate(&cases, if sc.quick { 2 } else { 3 }, ceiling, &pol)?;
    let f32_times = timed[0].1.clone();
    for (case, (rec, times)) in cases.iter().zip(timed) {
        let mut row = SectionRow::new("prefill-bf16", case.label.clone(), rec).alternated();
        row.ratio = round_ratio(&times, &f32_times);
        row.ratio_to = cases[0].label.clone();
        rows.push(row);
    }
    let (dot, elapsed_s) = (bf16_dot_ceiling(3), started.elapsed().as_secs_f64());
    Ok(Decode { rows, bandwidth: bw.measured().copied(), dot, torch_note: torch.err(), elapsed_s })
}

/// GB/s of the peer's time on the row's shape (the same bytes as the row's).
fn torch_gbs(r: &SectionRow) -> Option<f64> {
    Some(r.rec.decode?.bytes as f64 / r.torch_median_s? / 1e9)
}

/// The decode rows of `label` (shape and dtype) that were measured, by N_k.
fn series<'a>(rows: &'a [SectionRow], label: &str) -> Vec<&'a SectionRow> {
    rows.iter().filter(|r| r.section == "decode" && r.label == label && r.rec.decode.is_some()).collect()
}

/// The reading line: per shape and dtype, GB/s and the fraction of the ceiling at the largest
/// measured N_k, and PyTorch's GB/s there when measured.
pub fn reading(d: &Decode) -> String {
    let Some(bw) = d.bandwidth else {
        return "No decode row was measured, so the bandwidth ceiling was not measured either.".into();
    };
    let parts: Vec<String> = SHAPES
        .iter()
        .flat_map(|s| [DType::F32, DType::BF16].map(|t| format!("{} {t}", s.0)))
        .filter_map(|label| {
            let r = *series(&d.rows, &label).last()?;
            let rate = r.rec.decode?;
            let torch = torch_gbs(r).map(|g| format!(", PyTorch {g:.1} GB/s")).unwrap_or_default();
            Some(format!(
                "{label}: {:.1} GB/s = {:.0}% ({}{torch})",
                rate.gb_per_s,
                100.0 * rate.fraction_of_ceiling,
                fmt_secs(r.rec.median_s.unwrap_or(0.0))
            ))
        })
        .collect();
    let nk = d.rows.iter().filter(|r| r.rec.decode.is_some()).map(|r| r.rec.seq_kv).max().unwrap_or(0);
    format!(
        "Decode at the largest N_k = {nk}, as a fraction of the {:.1} GB/s streaming-read ceiling measured in this run: {}.",
        bw.gb_per_s,
        parts.join("; ")
    )
}

/// The section's markdown.
pub fn markdown(d: &Decode, plot_note: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Decode and bf16 (`flash-cpu`)\n");
    let bw = d.bandwidth.map_or("not measured".into(), |b| {
        format!(
            "{:.1} GB/s ({} MiB streamed, {} thread(s), median {})",
            b.gb_per_s,
            b.bytes >> 20,
            b.threads,
            fmt_secs(b.median_s)
        )
    });
    let _ = writeln!(
        s,
        "N_q = 1 over N_k keys, B = 1, non-causal (for one query row the same as bottom-right causal), seeded normal inputs. \
         GB/s = bytes moved (Q, K, V read once in their dtype, O written in f32) ÷ median time. Streaming-read ceiling: {bw}. The section took {}.\n",
        fmt_secs(d.elapsed_s)
    );
    let _ = writeln!(s, "- {}", reading(d));
    if d.rows.iter().any(|r| r.rec.decode.is_some_and(|x| x.fraction_of_ceiling > 1.0)) {
        let _ = writeln!(
            s,
            "- Rows above 100% read K and V from cache: at small N_k they fit in the last-level cache (the ceiling streams 512 MiB)."
        );
    }
    let _ = writeln!(s, "- {}", timing_note(d));
    if let Some(note) = &d.torch_note {
        let _ = writeln!(s, "- PyTorch: {note}.");
    }
    let _ = writeln!(s, "\n{plot_note}\n");
    let _ =
        writeln!(s, "| shape | dtype | N_k | median | GB/s | % of ceiling | PyTorch median | PyTorch GB/s | status |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in d.rows.iter().filter(|r| r.section == "decode") {
        let c = &r.rec;
        let torch = match (&d.torch_note, r.torch_median_s) {
            (Some(_), _) => "not measured".to_string(),
            (None, Some(t)) => fmt_secs(t),
            (None, None) => "failed".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {torch} | {} | {} |",
            r.label.rsplit_once(' ').map_or(r.label.as_str(), |x| x.0),
            c.dtype,
            c.seq_kv,
            c.median_s.map_or("–".into(), fmt_secs),
            c.decode.map_or("–".into(), |x| format!("{:.2}", x.gb_per_s)),
            c.decode.map_or("–".into(), |x| format!("{:.0}%", 100.0 * x.fraction_of_ceiling)),
            torch_gbs(r).map_or("–".into(), |g| format!("{g:.2}")),
            r.status(),
        );
    }
    s.push_str(&super::decode_target::markdown(d));
    s.push_str(&super::decode_kvcache::markdown(d));
    let pre: Vec<&SectionRow> = d.rows.iter().filter(|r| r.section == "prefill-bf16").collect();
    let (n, dim, h) = pre.first().map_or(PREFILL, |r| (r.rec.seq, r.rec.dim, r.rec.heads));
    let _ = writeln!(s, "\n### bf16 vs f32 prefill (N = {n}, D = {dim}, H = {h}, non-causal, measured alternately)\n");
    let _ = writeln!(s, "| case | median over rounds | GFLOP/s | time ÷ f32 time | status |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for r in &pre {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.label,
            r.rec.median_s.map_or("–".into(), fmt_secs),
            r.rec.gflops.map_or("–".into(), |g| format!("{g:.1}")),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            super::markdown::status_of(&r.rec).replace("reps", "rounds")
        );
    }
    let _ = writeln!(s, "\n- {}\n", prefill_reading(&pre, d.dot.as_ref()));
    s
}

/// bf16's speed-up over f32 against the ≥ 1.6× target, and the bf16 dot ceiling.
fn prefill_reading(pre: &[&SectionRow], dot: Option<&DotCeiling>) -> String {
    let bf16 = pre.iter().find(|r| r.rec.dtype == DType::BF16);
    let speedup = bf16.and_then(|r| r.ratio).map(|x| 1.0 / x);
    let dot_text = match (dot, bf16.and_then(|r| r.rec.gflops)) {
        (Some(c), Some(g)) => format!(
            "bf16 dot-product ceiling (`vdpbf16ps`, {} thread(s)) {:.0} GFLOP/s, bf16 prefill at {:.0}% of it",
            c.threads,
            c.gflops,
            100.0 * g / c.gflops
        ),
        (Some(c), None) => format!("bf16 dot-product ceiling {:.0} GFLOP/s", c.gflops),
        (None, _) => "bf16 dot-product ceiling not measured (this CPU lacks AVX512_BF16)".into(),
    };
    format!("bf16 prefill speed-up over f32 {}; {dot_text}.", verdict(speedup, 1.6, false))
}

/// How the sweep's rows were timed: alternated rounds, or (a report from before they were)
/// one call each, which the reader must know to weigh their scatter.
pub fn timing_note(d: &Decode) -> String {
    let sweep: Vec<&SectionRow> = d.rows.iter().filter(|r| r.section == "decode" && r.rec.status.is_ok()).collect();
    match sweep.iter().filter_map(|r| r.rounds).max() {
        Some(n) if sweep.iter().all(|r| r.rounds.is_some()) => format!(
            "flash-cpu rows: the median over {n} rounds; in each round every shape and dtype at that N_k runs in turn \
             (one warm-up, then the median of {REPS_PER_ROUND} reps), as the targets below are measured. PyTorch: one call per row \
             (the median of its reps)."
        ),
        _ => "flash-cpu and PyTorch rows: one call each (one warm-up, then the median of its reps), not alternated with \
              the others, so on a shared machine they scatter; the alternated rounds of the targets below are the steadier figure."
            .into(),
    }
}

/// `MHA: 4 heads, D = 64` / `GQA: 8 query heads over 2 KV heads, D = 128`.
fn shape_title(&(label, h, hkv, d): &(&str, usize, usize, usize)) -> String {
    let kind = label.split(' ').next().unwrap_or(label);
    if h == hkv {
        format!("{kind}: {h} heads, D = {d}")
    } else {
        format!("{kind}: {h} query heads over {hkv} KV heads, D = {d}")
    }
}

/// The plot: GB/s against N_k per shape, one line per dtype (solid: flash-cpu, dashed:
/// PyTorch when measured), the ceiling as a flat grey dashed line. Returns the markdown line
/// (image or why not drawn).
pub fn plot(dir: &Path, d: &Decode) -> String {
    let nks: Vec<f64> = d.rows.iter().filter(|r| r.rec.decode.is_some()).map(|r| r.rec.seq_kv as f64).collect();
    let (lo, hi) = nks.iter().fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
    let ceiling_label = d.bandwidth.map(|b| format!("streaming-read ceiling ({:.1} GB/s)", b.gb_per_s));
    let panels: Vec<(String, Vec<Series>)> = SHAPES
        .iter()
        .map(|shape| {
            let mut ss = Vec::new();
            for (i, t) in [DType::F32, DType::BF16].into_iter().enumerate() {
                let rows = series(&d.rows, &format!("{} {t}", shape.0));
                let pts = |f: &dyn Fn(&SectionRow) -> Option<f64>| -> Vec<(f64, f64)> {
                    rows.iter().filter_map(|r| Some((r.rec.seq_kv as f64, f(r)?))).collect()
                };
                let c = plots::color(i);
                ss.push(Series::new(format!("flash-cpu {t}"), pts(&|r| Some(r.rec.decode?.gb_per_s))).color(c));
                ss.push(Series::new(format!("PyTorch CPU SDPA {t}"), pts(&torch_gbs)).color(c).dashed());
            }
            if let (Some(b), Some(l), true) = (d.bandwidth, &ceiling_label, hi > 0.0) {
                let flat = vec![(lo, b.gb_per_s), (hi, b.gb_per_s)];
                ss.push(Series::new(l.clone(), flat).color(plots::GREY).dashed());
            }
            ss.retain(|s| !s.points.is_empty());
            (shape_title(shape), ss)
        })
        .collect();
    if nks.is_empty() {
        return format!("- {PLOT_FILE}: not drawn (no decode row was measured)");
    }
    let head = plots::Heading {
        title: "flash-cpu decode: read bandwidth vs cached keys (one query row, B = 1, seeded normal inputs)",
        notes: vec![
            "GB/s = bytes of Q, K, V read once and O written ÷ median time; above the grey ceiling, K and V came from cache".into(),
            timing_note(d),
        ],
    };
    let x = Axis { label: "cached keys N_k (log)", ticks: Ticks::Pow2 };
    let y = Axis { label: "GB/s (log)", ticks: Ticks::Plain };
    match plots::loglog_panels(&dir.join(PLOT_FILE), &head, x, y, &panels) {
        Ok(()) => format!("![{PLOT_FILE}]({PLOT_FILE})"),
        Err(e) => format!("- {PLOT_FILE}: not drawn ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnkit::ceiling::{BandwidthCeiling, bytes_moved};

    fn decode_row(label: &str, nk: usize, t: f64, bw: &BandwidthCeiling) -> SectionRow {
        let (shape, dtype) = label.rsplit_once(' ').unwrap();
        let &(_, h, hkv, d) = SHAPES.iter().find(|s| s.0 == shape).unwrap();
        let dtype = if dtype == "bf16" { DType::BF16 } else { DType::F32 };
        let p = decode_problem(h, hkv, d, nk, dtype);
        let rec = super::super::section::timed_record(&p, t);
        SectionRow::new("decode", label, rec.with_bandwidth(&p, bw))
    }

    #[test]
    fn sizes_follow_the_issue_and_quick_stops_at_32k() {
        let nks = |quick, cap| decode_nks(&Scale { quick, cap });
        assert_eq!(nks(false, None).first().copied(), Some(1024));
        assert_eq!(nks(false, None).last().copied(), Some(256 << 10));
        assert_eq!(nks(true, None).last().copied(), Some(32 << 10));
        assert_eq!(nks(true, Some(256)), [1024], "--max-n keeps one point");
        let p = decode_problem(8, 2, 128, 1 << 18, DType::F32);
        assert_eq!(bytes_moved(&p) >> 20, 512, "K and V of the largest GQA cache: 512 MiB");
        assert!(attnkit::ceiling::is_decode_shaped(&p));
    }

    #[test]
    fn reading_takes_the_largest_measured_nk_per_series() {
        let bw = BandwidthCeiling { bytes: 1 << 30, threads: 2, median_s: 0.1, gb_per_s: 10.0 };
        let mut small = decode_row("MHA H=4 D=64 f32", 1024, 1.0, &bw);
        small.torch_median_s = Some(2.0);
        let big = decode_row("MHA H=4 D=64 f32", 4096, 1e-4, &bw);
        let gbs = big.rec.decode.unwrap().gb_per_s;
        let d = Decode { rows: vec![small, big], bandwidth: Some(bw), dot: None, torch_note: None, elapsed_s: 0.0 };
        let line = reading(&d);
        assert!(line.contains("largest N_k = 4096") && line.contains("10.0 GB/s streaming-read ceiling"), "{line}");
        assert!(line.contains(&format!("MHA H=4 D=64 f32: {gbs:.1} GB/s = {:.0}%", 10.0 * gbs)), "{line}");
        assert!(!line.contains("PyTorch") && !line.contains("GQA"), "{line}");
        let none = Decode { rows: vec![], bandwidth: None, dot: None, torch_note: None, elapsed_s: 0.0 };
        assert!(reading(&none).starts_with("No decode row"));
    }
}
