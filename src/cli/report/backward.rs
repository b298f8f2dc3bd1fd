//! The report's *Backward* section: forward + backward time against N for the exact backends
//! with a backward (`flash-cpu`, FlashAttention-2's algorithm; `sdpa`, the materialized
//! textbook backward) at D = 64, H = 8, B = 1, f32, non-causal and causal; the backward's
//! fraction of the f32 GEMM ceiling measured in the same run (FLOPs by FlashAttention's
//! convention, 2.5× the forward's); and PyTorch's CPU SDPA forward + backward on the same shapes
//! (`torch_bwd.py` of `ATTNKIT_PEERS`, with `ATTNKIT_TORCH_PYTHON`, as the decode section finds
//! its peer). Per N, every backend and PyTorch run in turn, round after round; each row is the
//! median over rounds ([`attnkit::bench::backward::run_backward_cell`] per backend and round).

use super::decode_common::torch_env;
use super::plots::{self, Axis, Series, Ticks};
use super::section::Scale;
use crate::cli::fmt_secs;
use attnkit::bench::backward::{BackwardRecord, BackwardTimes, run_backward_cell};
use attnkit::bench::plan::{DIM, HEADS, SEED};
use attnkit::bench::{LazyCeiling, LazyInputs, Policy, median};
use attnkit::inputs::InputFamily;
use attnkit::{AttnError, Problem};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// The exact backends the section times (`reference` is the f64 oracle, `auto` forwards).
pub const BACKENDS: [&str; 2] = ["flash-cpu", "sdpa"];
pub const PLOT_FILE: &str = "backward.svg";
/// Timed reps per backend and round (after one warm-up), and PyTorch's per round: one rep per
/// round scattered by 10× at N = 256 on a loaded machine.
pub const REPS: usize = 3;

/// N = 256 … 4096 (… 2048 with `quick`), powers of two, up to `--max-n` (at least 256).
pub fn ns(sc: &Scale) -> Vec<usize> {
    let top = sc.n(4096, 2048).max(256);
    (8..=12).map(|e| 1usize << e).filter(|&n| n <= top).collect()
}

/// One row: a backend's medians over rounds, or PyTorch's (`backend` = "pytorch").
#[derive(Clone, Debug, Serialize)]
pub struct BackwardRow {
    #[serde(flatten)]
    pub rec: BackwardRecord,
    /// PyTorch CPU SDPA forward + backward on the same shape, median over the same rounds.
    pub torch_fwdbwd_s: Option<f64>,
}

/// What the section measured.
pub struct Backward {
    pub rows: Vec<BackwardRow>,
    pub rounds: usize,
    /// Why the PyTorch column is empty, when it is.
    pub torch_note: Option<String>,
    pub elapsed_s: f64,
}

/// The problem of one row.
pub fn problem(n: usize, causal: bool) -> Problem {
    Problem::new(1, HEADS, n, DIM).with_causal(causal)
}

/// PyTorch's forward + backward seconds on `p` (`torch_bwd.py`, same thread count).
fn torch_fwdbwd(py: &str, peers: &str, p: &Problem) -> Result<f64, String> {
    let threads = rayon::current_num_threads().to_string();
    let args = [p.seq_q, p.seq_k, p.head_dim, p.heads, p.kv_heads].map(|x| x.to_string());
    let mut cmd = std::process::Command::new(py);
    cmd.arg(Path::new(peers).join("torch_bwd.py")).args(args).arg(p.dtype.to_string());
    cmd.args(["--reps", &REPS.to_string(), "--threads", &threads]).env("OMP_NUM_THREADS", &threads);
    if p.causal {
        cmd.arg("--causal");
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    parse_torch_bwd(&String::from_utf8_lossy(&out.stdout))
}

/// `fwdbwd_s` of the peer's last JSON line.
pub fn parse_torch_bwd(stdout: &str) -> Result<f64, String> {
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or("no JSON line")?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    v["fwdbwd_s"].as_f64().filter(|t| *t > 0.0).ok_or_else(|| format!("no fwdbwd_s in {line}"))
}

pub fn run(sc: &Scale, ceiling: &LazyCeiling) -> Result<Backward, AttnError> {
    let started = std::time::Instant::now();
    let rounds = if sc.quick { 2 } else { 3 };
    let policy = Policy { reps: REPS, max_measure_s: 10.0, max_predicted_s: if sc.quick { 10.0 } else { 60.0 } };
    let torch = torch_env();
    let backends = BACKENDS.iter().map(|n| attnkit::backend(n)).collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    for causal in [false, true] {
        let mut last: Vec<Option<(usize, f64)>> = vec![None; backends.len()];
        for n in ns(sc) {
            let p = problem(n, causal);
            let inputs = LazyInputs::new(&p, InputFamily::Normal, SEED);
            let mut per_round: Vec<Vec<BackwardRecord>> = vec![Vec::new(); backends.len()];
            let mut torch_s = Vec::new();
            for _ in 0..rounds {
                for (i, b) in backends.iter().enumerate() {
                    // A backend refused or failed once is not run again at this N.
                    if per_round[i].last().is_some_and(|r| !r.status.is_ok()) {
                        continue;
                    }
                    per_round[i].push(run_backward_cell(b.as_ref(), &p, &inputs, SEED, ceiling, &policy, last[i])?);
                }
                if let Ok((py, peers)) = &torch {
                    torch_s.extend(torch_fwdbwd(py, peers, &p).ok());
                }
            }
            let torch_median = (!torch_s.is_empty()).then(|| median(&torch_s));
            for (i, recs) in per_round.into_iter().enumerate() {
                let rec = over_rounds(&p, recs, ceiling.measured().map(|c| c.gflops));
                if let (true, Some(t)) = (rec.status.is_ok(), rec.fwdbwd_s) {
                    last[i] = Some((n, t));
                }
                rows.push(BackwardRow { rec, torch_fwdbwd_s: torch_median });
            }
        }
    }
    Ok(Backward { rows, rounds, torch_note: torch.err(), elapsed_s: started.elapsed().as_secs_f64() })
}

/// One record from a backend's per-round records: the medians over the rounds that measured
/// (each round's own median of its reps), or the first record that did not.
fn over_rounds(p: &Problem, recs: Vec<BackwardRecord>, gemm: Option<f64>) -> BackwardRecord {
    if let Some(bad) = recs.iter().find(|r| !r.status.is_ok()) {
        return bad.clone();
    }
    let pick = |f: fn(&BackwardRecord) -> Option<f64>| recs.iter().filter_map(f).collect::<Vec<f64>>();
    let t = BackwardTimes {
        fwd_s: pick(|r| r.fwd_s),
        bwd_s: pick(|r| r.bwd_s),
        fwdbwd_s: pick(|r| r.fwdbwd_s),
        peak_bytes: recs.iter().filter_map(|r| r.peak_bytes).max(),
        non_finite: 0,
    };
    let first = recs.into_iter().next();
    first.map_or_else(|| BackwardRecord::new("?", p, 0).skipped("no round ran"), |r| r.with_times(p, &t, gemm))
}

/// The reading line: at the largest N each backend measured, forward + backward time, the
/// backward's fraction of the ceiling and PyTorch's ratio, per mask.
pub fn reading(b: &Backward) -> String {
    let mut parts = Vec::new();
    for causal in [false, true] {
        for name in BACKENDS {
            let Some(r) =
                b.rows.iter().rev().find(|r| r.rec.backend == name && r.rec.causal == causal && r.rec.status.is_ok())
            else {
                continue;
            };
            let (Some(fb), Some(frac)) = (r.rec.fwdbwd_s, r.rec.bwd_gemm_fraction) else { continue };
            let torch = r.torch_fwdbwd_s.map(|t| format!(", {:.2}× PyTorch's speed", t / fb)).unwrap_or_default();
            parts.push(format!(
                "{name} {} N = {}: forward + backward {}, backward at {:.0}% of the ceiling{torch}",
                if causal { "causal" } else { "non-causal" },
                r.rec.seq,
                fmt_secs(fb),
                100.0 * frac
            ));
        }
    }
    if parts.is_empty() { "No backward row was measured.".into() } else { format!("{}.", parts.join("; ")) }
}

/// The section's markdown.
pub fn markdown(b: &Backward, plot_note: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Backward\n");
    let _ = writeln!(
        s,
        "Forward (with LSE) then backward from a seeded dO into preallocated gradients, D = {DIM}, H = {HEADS}, B = 1, f32, \
         seeded normal inputs. Per N, every backend (and PyTorch) runs in turn, {} rounds, each run one warm-up and the \
         median of {REPS} reps; each figure is the median over rounds. GFLOP/s by FlashAttention's convention: forward 4·D per allowed pair × H, backward 2.5× that, \
         forward + backward 3.5×; % of ceiling = the backward's rate ÷ the f32 GEMM ceiling measured in this run. \
         The section took {}.\n",
        b.rounds,
        fmt_secs(b.elapsed_s)
    );
    let _ = writeln!(s, "- {}", reading(b));
    if let Some(note) = &b.torch_note {
        let _ = writeln!(s, "- PyTorch: {note}.");
    }
    let _ = writeln!(s, "\n{plot_note}\n");
    let _ = writeln!(
        s,
        "| backend | causal | N | forward | backward | fwd + bwd | bwd GFLOP/s | bwd % of ceiling | PyTorch fwd + bwd | speed ÷ PyTorch's | status |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &b.rows {
        let c = &r.rec;
        let secs = |t: Option<f64>| t.map_or("–".into(), fmt_secs);
        let torch = match (&b.torch_note, r.torch_fwdbwd_s) {
            (Some(_), _) => "not measured".to_string(),
            (None, Some(t)) => fmt_secs(t),
            (None, None) => "failed".to_string(),
        };
        let ratio = r.torch_fwdbwd_s.zip(c.fwdbwd_s).map_or("–".into(), |(t, f)| format!("{:.2}×", t / f));
        let status = match c.status.is_ok() {
            true => format!("ok ({} rounds)", c.reps),
            false => format!("{}: {}", c.status, c.status.reason()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {torch} | {ratio} | {status} |",
            c.backend,
            c.causal,
            c.seq,
            secs(c.fwd_s),
            secs(c.bwd_s),
            secs(c.fwdbwd_s),
            c.bwd_gflops.map_or("–".into(), |g| format!("{g:.1}")),
            c.bwd_gemm_fraction.map_or("–".into(), |f| format!("{:.0}%", 100.0 * f)),
        );
    }
    s.push('\n');
    s
}

/// The plot: forward + backward time against N, one panel per mask, one solid line per backend
/// and PyTorch dashed. Returns the markdown line (image, or why not drawn).
pub fn plot(dir: &Path, b: &Backward) -> String {
    let panels: Vec<(String, Vec<Series>)> = [false, true]
        .into_iter()
        .map(|causal| {
            let rows = |name: &str| -> Vec<&BackwardRow> {
                b.rows
                    .iter()
                    .filter(|r| r.rec.backend == name && r.rec.causal == causal && r.rec.status.is_ok())
                    .collect()
            };
            let mut ss: Vec<Series> = BACKENDS
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let pts = rows(name).iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.fwdbwd_s?))).collect();
                    Series::new(*name, pts).color(plots::color(i))
                })
                .collect();
            let torch: Vec<(f64, f64)> =
                rows(BACKENDS[0]).iter().filter_map(|r| Some((r.rec.seq as f64, r.torch_fwdbwd_s?))).collect();
            ss.push(Series::new("PyTorch CPU SDPA", torch).color(plots::GREY).dashed());
            ss.retain(|s| !s.points.is_empty());
            (if causal { "causal".to_string() } else { "non-causal".to_string() }, ss)
        })
        .collect();
    if panels.iter().all(|p| p.1.is_empty()) {
        return format!("- {PLOT_FILE}: not drawn (no backward row was measured)");
    }
    let head = plots::Heading {
        title: "forward + backward time vs N (D = 64, H = 8, B = 1, f32, seeded normal inputs)",
        notes: vec![format!(
            "each point: forward with LSE then backward, median over {} alternated rounds of {REPS} reps each; PyTorch dashed where measured",
            b.rounds
        )],
    };
    let x = Axis { label: "sequence length N = N_q = N_k (log)", ticks: Ticks::Pow2 };
    let y = Axis { label: "median forward + backward time (log)", ticks: Ticks::Seconds };
    match plots::loglog_panels(&dir.join(PLOT_FILE), &head, x, y, &panels) {
        Ok(()) => format!("![{PLOT_FILE}]({PLOT_FILE})"),
        Err(e) => format!("- {PLOT_FILE}: not drawn ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stop_at_4096_or_2048_quick_and_keep_one_point_under_a_cap() {
        assert_eq!(ns(&Scale { quick: false, cap: None }), [256, 512, 1024, 2048, 4096]);
        assert_eq!(ns(&Scale { quick: true, cap: None }).last().copied(), Some(2048));
        assert_eq!(ns(&Scale { quick: true, cap: Some(64) }), [256]);
    }

    /// The section on a tiny N: both backends measured per mask, medians over rounds, the
    /// ceiling fraction filled in, markdown and plot written; PyTorch marked not measured.
    #[test]
    fn a_tiny_section_measures_both_backends_and_draws() {
        let sc = Scale { quick: true, cap: Some(256) };
        let b = run(&sc, &LazyCeiling::new(64, 1)).unwrap();
        assert_eq!(b.rows.len(), 4, "2 backends × 2 masks at N = 256");
        for r in &b.rows {
            assert!(r.rec.status.is_ok(), "{:?}", r.rec.status);
            assert_eq!(r.rec.reps, 2);
            let frac = r.rec.bwd_gemm_fraction.unwrap();
            assert!(frac > 0.0 && frac.is_finite());
        }
        let dir = std::env::temp_dir().join(format!("attnkit-bwd-section-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let note = plot(&dir, &b);
        assert_eq!(note, format!("![{PLOT_FILE}]({PLOT_FILE})"));
        let svg = std::fs::read_to_string(dir.join(PLOT_FILE)).unwrap();
        assert!(svg.contains("flash-cpu") && svg.contains("non-causal"));
        let md = markdown(&b, &note);
        assert_eq!(md.matches("| flash-cpu |").count(), 2, "{md}");
        assert!(md.contains("flash-cpu non-causal N = 256: forward + backward"), "{md}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn torch_json_gives_fwdbwd() {
        let out = "{\"peer\": \"torch-sdpa-cpu\", \"fwd_s\": 0.2, \"fwdbwd_s\": 0.9, \"bwd_s\": 0.7}\n";
        assert_eq!(parse_torch_bwd(out), Ok(0.9));
        assert!(parse_torch_bwd("{\"fwd_s\": 1}").is_err());
    }

    #[test]
    fn rounds_take_medians_and_a_failed_round_wins() {
        let p = problem(256, false);
        let rec = |t: f64| {
            let times =
                BackwardTimes { fwd_s: vec![t], bwd_s: vec![2.0 * t], fwdbwd_s: vec![3.0 * t], ..Default::default() };
            BackwardRecord::new("flash-cpu", &p, 2).with_times(&p, &times, None)
        };
        let r = over_rounds(&p, vec![rec(1.0), rec(5.0), rec(2.0)], Some(100.0));
        assert_eq!((r.fwd_s, r.fwdbwd_s, r.reps), (Some(2.0), Some(6.0), 3));
        assert!(r.bwd_gemm_fraction.is_some());
        let bad = BackwardRecord::new("flash-cpu", &p, 2).failed("boom");
        assert!(!over_rounds(&p, vec![rec(1.0), bad], None).status.is_ok());
    }
}
