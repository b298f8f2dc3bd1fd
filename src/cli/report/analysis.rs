//! Reading the rows: series per variant, log-log slopes, crossovers and the plain-language
//! observations of the report's "Reading" section. Pure functions of the rows.

use super::results::Row;
use crate::cli::fmt_secs;
use attnkit::Exactness;
use attnkit::approx_eval::{FrontierPoint, crossover_at_error, pareto};
use attnkit::bench::Status;
use attnkit::bench::plan::{COMPARATORS, FRONTIER_NS};
use attnkit::inputs::InputFamily;

/// Error budgets (relative error) at which the frontier section races approximations against
/// the first comparator.
pub const ERROR_BUDGETS: [f64; 3] = [0.1, 0.01, 0.001];

/// The row with the smallest `f` (rows without one last).
fn smallest<'a>(rows: &[&'a Row], f: impl Fn(&Row) -> Option<f64>) -> Option<&'a Row> {
    rows.iter().copied().min_by(|a, b| f(a).unwrap_or(f64::MAX).total_cmp(&f(b).unwrap_or(f64::MAX)))
}

/// `1.23e-2`, or `–` when absent.
pub fn sci(x: Option<f64>) -> String {
    x.map(|e| format!("{e:.2e}")).unwrap_or_else(|| "–".into())
}

/// Least-squares slope of log y against log x over points with x ≥ `min_x` and y > 0.
pub fn loglog_slope(points: &[(f64, f64)], min_x: f64) -> Option<f64> {
    let pts: Vec<(f64, f64)> =
        points.iter().filter(|(x, y)| *x >= min_x && *y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Sweep rows (not frontier-only) for one label and causal flag, measured ones only, by N.
pub fn series<'a>(rows: &'a [Row], label: &str, causal: bool) -> Vec<&'a Row> {
    rows.iter().filter(|r| !r.frontier && r.label == label && r.rec.causal == causal && r.rec.status.is_ok()).collect()
}

pub fn sweep_labels(rows: &[Row]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| !r.frontier) {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
    }
    labels
}

/// The frontier rows of `family`: measured, non-causal, at [`FRONTIER_NS`], with a relative
/// error; the frontier variants and the comparators (the exact points), in row order.
pub fn frontier_rows(rows: &[Row], family: InputFamily) -> Vec<&Row> {
    rows.iter()
        .filter(|r| {
            r.rec.inputs == family
                && !r.rec.causal
                && FRONTIER_NS.contains(&r.rec.seq)
                && r.rec.status.is_ok()
                && r.rel_err.is_some()
                && (r.frontier || COMPARATORS.contains(&r.label.as_str()))
        })
        .collect()
}

/// The rows as frontier points (rows without a time or error are left out).
pub fn frontier_points(rows: &[&Row]) -> Vec<FrontierPoint> {
    rows.iter()
        .filter_map(|r| {
            Some(FrontierPoint {
                label: r.label.clone(),
                family: r.rec.inputs,
                seq: r.rec.seq,
                rel_err: r.rel_err?,
                seconds: r.rec.median_s?,
            })
        })
        .collect()
}

/// Where each method wins on `family`: per frontier N, the approximations on the accuracy–speed
/// frontier, and which approximations beat the mean-of-V baseline (the best by its gain), or
/// that none does.
pub fn wins(rows: &[Row], family: InputFamily) -> Vec<String> {
    let fr = frontier_rows(rows, family);
    let points = frontier_points(&fr);
    let on = pareto(&points);
    let mut out = Vec::new();
    for n in FRONTIER_NS {
        let at: Vec<usize> = (0..points.len()).filter(|&i| points[i].seq == n).collect();
        if at.is_empty() {
            continue;
        }
        let approx = |i: &&usize| fr[**i].approximates();
        let frontier: Vec<String> = at
            .iter()
            .filter(approx)
            .filter(|&&i| on[i])
            .map(|&i| format!("`{}`{}", points[i].label, fr[i].baseline_mark()))
            .collect();
        let mut beating: Vec<(f64, &str)> = at
            .iter()
            .filter(approx)
            .filter_map(|&i| fr[i].accuracy().filter(|a| a.beats_baseline()).map(|a| (a.gain(), fr[i].label.as_str())))
            .collect();
        beating.sort_by(|a, b| b.0.total_cmp(&a.0));
        let base = fr.iter().find(|r| r.rec.seq == n).and_then(|r| r.baseline_rel_err).unwrap_or(f64::NAN);
        let verdict = match beating.first() {
            None => format!("no approximation beats the mean-of-V baseline (rel. error {base:.3})"),
            Some(&(g, l)) => format!(
                "{} of {} approximations beat the mean-of-V baseline (rel. error {base:.3}); best `{l}`, {g:.2}× smaller error",
                beating.len(),
                at.iter().filter(approx).count()
            ),
        };
        let front = if frontier.is_empty() { "none".to_string() } else { frontier.join(", ") };
        out.push(format!("N = {n}: {verdict}. Approximations on the accuracy–speed frontier: {front}."));
    }
    out
}

/// Per error budget of [`ERROR_BUDGETS`], the first frontier N at which the fastest
/// approximation within it beats the first comparator measured on `family` (non-causal).
pub fn equal_error_crossovers(rows: &[Row], family: InputFamily) -> Vec<String> {
    let fr = frontier_rows(rows, family);
    let Some(exact) = COMPARATORS.iter().find(|c| fr.iter().any(|r| r.label == **c)) else {
        return vec!["no exact comparator measured on this family".into()];
    };
    // Only approximations compete, each beside the exact series.
    let pts: Vec<FrontierPoint> = frontier_points(&fr)
        .into_iter()
        .zip(&fr)
        .filter(|(p, r)| p.label == *exact || r.approximates())
        .map(|(p, _)| p)
        .collect();
    ERROR_BUDGETS
        .iter()
        .map(|&eps| match crossover_at_error(&pts, family, exact, eps) {
            Some((n, label)) => {
                let t = |l: &str| pts.iter().find(|p| p.seq == n && p.label == l).map_or(f64::NAN, |p| p.seconds);
                format!(
                    "error ≤ {eps}: `{label}` is faster than `{exact}` from N = {n} ({} vs {}, {:.1}×)",
                    fmt_secs(t(&label)),
                    fmt_secs(t(exact)),
                    t(exact) / t(&label)
                )
            }
            None => format!(
                "error ≤ {eps}: no approximation within it is faster than `{exact}` at N ∈ {{{}}}",
                FRONTIER_NS.map(|n| n.to_string()).join(", ")
            ),
        })
        .collect()
}

/// Approximations vs exact backends: from which N the approximation is faster.
pub fn crossovers(rows: &[Row]) -> Vec<String> {
    let labels = sweep_labels(rows);
    let exacts: Vec<&String> = labels.iter().filter(|l| COMPARATORS.contains(&l.as_str())).collect();
    let approx: Vec<&String> = labels
        .iter()
        .filter(|l| {
            rows.iter().any(|r| {
                &r.label == *l && (r.exactness == Some(Exactness::Approximate) || !r.rec.window.is_unbounded())
            })
        })
        .collect();
    let mut out = Vec::new();
    for a in &approx {
        for e in &exacts {
            for causal in [false, true] {
                let sa = series(rows, a, causal);
                let se = series(rows, e, causal);
                let common: Vec<(usize, f64, f64)> = sa
                    .iter()
                    .filter_map(|ra| {
                        let re = se.iter().find(|re| re.rec.seq == ra.rec.seq)?;
                        Some((ra.rec.seq, ra.rec.median_s?, re.rec.median_s?))
                    })
                    .collect();
                let mode = if causal { "causal" } else { "non-causal" };
                if common.is_empty() {
                    out.push(format!("{a} vs {e} ({mode}): no N where both were measured"));
                    continue;
                }
                // Smallest N from which the approximation is faster at every larger common N.
                let mut from = None;
                for (i, &(n, _, _)) in common.iter().enumerate() {
                    if common[i..].iter().all(|&(_, ta, te)| ta < te) {
                        from = Some(n);
                        break;
                    }
                }
                let (lo, hi) = (common[0].0, common[common.len() - 1].0);
                let line = match from {
                    Some(n) if n == lo => format!("{a} vs {e} ({mode}): {a} is faster at every measured N ({lo}–{hi})"),
                    Some(n) => format!("{a} vs {e} ({mode}): {a} overtakes {e} at N = {n} (measured {lo}–{hi})"),
                    None => format!("{a} vs {e} ({mode}): {e} stays faster or ties up to N = {hi}"),
                };
                out.push(line);
            }
        }
    }
    if out.is_empty() {
        out.push("no approximation and exact (flash-cpu/sdpa) pair was measured".into());
    }
    out
}

/// Plain-language observations generated from the numbers.
pub fn reading(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let ok: Vec<&Row> = rows.iter().filter(|r| r.rec.status.is_ok() && !r.frontier).collect();
    // Fastest exact at the largest N where ≥ 2 exact backends were measured (non-causal).
    let mut ns: Vec<usize> = ok.iter().map(|r| r.rec.seq).collect();
    ns.sort_unstable();
    ns.dedup();
    for &n in ns.iter().rev() {
        let mut ex: Vec<&&Row> = ok
            .iter()
            .filter(|r| {
                r.rec.seq == n && !r.rec.causal && r.exactness == Some(Exactness::Exact) && r.rec.window.is_unbounded()
            })
            .collect();
        if ex.len() >= 2 {
            ex.sort_by(|a, b| a.rec.median_s.unwrap_or(f64::MAX).total_cmp(&b.rec.median_s.unwrap_or(f64::MAX)));
            let (f, s) = (ex[0], ex[1]);
            out.push(format!(
                "At N = {n} (largest N with two exact backends measured, non-causal), `{}` took {} vs `{}` {} ({:.1}× faster).",
                f.label,
                fmt_secs(f.rec.median_s.unwrap_or(0.0)),
                s.label,
                fmt_secs(s.rec.median_s.unwrap_or(0.0)),
                s.rec.median_s.unwrap_or(0.0) / f.rec.median_s.unwrap_or(1.0)
            ));
            break;
        }
    }
    if let Some(best) = ok
        .iter()
        .filter(|r| r.exactness == Some(Exactness::Exact))
        .max_by(|a, b| a.rec.gemm_fraction.unwrap_or(0.0).total_cmp(&b.rec.gemm_fraction.unwrap_or(0.0)))
    {
        out.push(format!(
            "The highest fraction of the GEMM ceiling among exact backends is {:.0}% (`{}`, N = {}{}).",
            100.0 * best.rec.gemm_fraction.unwrap_or(0.0),
            best.label,
            best.rec.seq,
            if best.rec.causal { ", causal" } else { "" }
        ));
        if best.rec.gemm_fraction.unwrap_or(0.0) > 1.0 {
            out.push(
                "Above 100% means the fused attention kernel beat the square sgemm used as the ceiling in this run \
                 (its tiles stay in cache; machine noise between the two measurements also moves it by ±10%)."
                    .to_string(),
            );
        }
    }
    for l in sweep_labels(rows) {
        let t: Vec<(f64, f64)> =
            series(rows, &l, false).iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.median_s?))).collect();
        let m: Vec<(f64, f64)> =
            series(rows, &l, false).iter().filter_map(|r| Some((r.rec.seq as f64, r.rec.peak_bytes? as f64))).collect();
        if let Some(st) = loglog_slope(&t, 1024.0) {
            let kind = if st > 1.6 {
                "close to quadratic"
            } else if st < 1.4 {
                "close to linear"
            } else {
                "between linear and quadratic"
            };
            let mem = loglog_slope(&m, 1024.0).map(|sm| format!(", memory ∝ N^{sm:.2}")).unwrap_or_default();
            out.push(format!("`{l}` (non-causal): time ∝ N^{st:.2} over N ≥ 1024 ({kind}){mem}."));
        }
    }
    let skipped: Vec<String> = rows
        .iter()
        .filter(|r| matches!(&r.rec.status, Status::Skipped(why) if why.contains("would need")))
        .map(|r| format!("`{}` at N = {}{}", r.label, r.rec.seq, if r.rec.causal { " (causal)" } else { "" }))
        .collect();
    if !skipped.is_empty() {
        out.push(format!("Refused by the memory budget: {}.", skipped.join(", ")));
    }
    // The sweep family's frontier, by relative error beside the baseline's.
    if let Some(family) = rows.first().map(|r| r.rec.inputs) {
        let fr = frontier_rows(rows, family);
        for n in FRONTIER_NS {
            let at: Vec<&Row> = fr.iter().copied().filter(|r| r.rec.seq == n && r.approximates()).collect();
            let (Some(b), Some(f)) = (smallest(&at, |r| r.rel_err), smallest(&at, |r| r.rec.median_s)) else {
                continue;
            };
            out.push(format!(
                "At N = {n} (non-causal, `{family}` inputs), the most accurate approximation is `{}` (relative error {}{}, {}); \
                 the fastest is `{}` ({}, error {}{}); the mean of V has error {}.",
                b.label,
                sci(b.rel_err),
                b.baseline_mark(),
                fmt_secs(b.rec.median_s.unwrap_or(0.0)),
                f.label,
                fmt_secs(f.rec.median_s.unwrap_or(0.0)),
                sci(f.rel_err),
                f.baseline_mark(),
                sci(b.baseline_rel_err)
            ));
        }
    }
    if out.is_empty() {
        out.push("Too few measurements for any observation.".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::report::results::tests::row;
    use attnkit::Exactness::{Approximate, Exact};

    /// A frontier row on `family` at `n`: time `t`, relative error `err`, baseline error 0.5.
    fn fr(label: &str, exactness: Exactness, family: InputFamily, n: usize, t: f64, err: f64) -> Row {
        let mut r = row(label, exactness, n, false, Some(t), Some(err));
        r.rec.inputs = family;
        r.frontier = exactness == Approximate;
        r
    }

    #[test]
    fn wins_and_equal_error_crossovers_read_the_family_rows() {
        let s = InputFamily::Structured { sharpness: 8.0 };
        let mut rows = Vec::new();
        for (n, scale) in [(1024, 1.0), (4096, 16.0)] {
            rows.push(fr("flash-cpu", Exact, s, n, scale, 1e-7));
            rows.push(fr("nystrom(m=64)", Approximate, s, n, 2.0 * scale.sqrt(), 0.01));
            rows.push(fr("performer(m=64)", Approximate, s, n, 0.5 * scale.sqrt(), 0.8));
            rows.push(fr("performer(m=256)", Approximate, s, n, 3.0 * scale.sqrt(), 0.9));
            rows.push(fr("nystrom(m=64)", Approximate, InputFamily::Normal, n, 0.1, 0.9));
        }
        let w = wins(&rows, s);
        assert_eq!(w.len(), 2);
        assert!(
            w[1].starts_with("N = 4096: 1 of 3 approximations beat the mean-of-V baseline (rel. error 0.500); best `nystrom(m=64)`, 50.00× smaller"),
            "{w:?}"
        );
        assert!(
            w[1].ends_with("frontier: `nystrom(m=64)`, `performer(m=64)` (!)."),
            "dominated performer(m=256) left out, the one losing to the baseline marked: {w:?}"
        );
        assert!(
            wins(&rows, InputFamily::Normal)[0]
                .contains("no approximation beats the mean-of-V baseline (rel. error 0.500)")
        );
        let c = equal_error_crossovers(&rows, s);
        assert!(
            c[0].starts_with(
                "error ≤ 0.1: `nystrom(m=64)` is faster than `flash-cpu` from N = 4096 (8.00 s vs 16.00 s, 2.0×)"
            ),
            "{c:?}"
        );
        assert!(c[2].starts_with("error ≤ 0.001: no approximation within it"), "{c:?}");
        assert_eq!(equal_error_crossovers(&rows, InputFamily::Normal), ["no exact comparator measured on this family"]);
    }

    #[test]
    fn slope_of_power_law_is_its_exponent() {
        let pts: Vec<(f64, f64)> = [512.0, 1024.0, 2048.0, 4096.0].iter().map(|&n: &f64| (n, 3.0 * n * n)).collect();
        assert!((loglog_slope(&pts, 1024.0).unwrap() - 2.0).abs() < 1e-9);
        assert!(loglog_slope(&pts[..2], 1024.0).is_none());
        assert!(loglog_slope(&[(1024.0, 1.0), (1024.0, 2.0)], 1024.0).is_none(), "one x: no slope");
    }

    /// Before the fix a row whose output held NaN stayed "ok" and was drawn: the plots and the
    /// slopes read only `series`, which must leave failed rows out.
    #[test]
    fn series_leave_out_failed_and_skipped_rows() {
        let nan = row("sdpa", Exact, 2048, false, Some(2.0), Some(0.1));
        let nan = Row { rec: nan.rec.clone().failed("output has 8 non-finite values"), ..nan };
        let rows = [
            row("sdpa", Exact, 1024, false, Some(1.0), Some(1e-7)),
            nan,
            row("sdpa", Exact, 4096, false, None, None),
            row("sdpa", Exact, 1024, true, Some(0.5), None),
        ];
        let s = series(&rows, "sdpa", false);
        assert_eq!(s.iter().map(|r| r.rec.seq).collect::<Vec<_>>(), [1024]);
        assert_eq!(sweep_labels(&rows), ["sdpa"]);
    }

    #[test]
    fn crossover_is_the_first_n_from_which_the_approximation_stays_faster() {
        let mut rows = Vec::new();
        for (n, exact, approx) in [(1024, 1.0, 2.0), (2048, 4.0, 3.0), (4096, 16.0, 6.0)] {
            rows.push(row("flash-cpu", Exact, n, false, Some(exact), None));
            rows.push(row("performer", Approximate, n, false, Some(approx), None));
        }
        let lines = crossovers(&rows);
        assert!(lines[0].contains("performer overtakes flash-cpu at N = 2048 (measured 1024–4096)"), "{lines:?}");
        assert!(lines[1].contains("(causal): no N where both were measured"), "{lines:?}");
        rows[1] = row("performer", Approximate, 1024, false, Some(0.5), None);
        assert!(crossovers(&rows)[0].contains("faster at every measured N"));
        assert_eq!(crossovers(&rows[..1]), ["no approximation and exact (flash-cpu/sdpa) pair was measured"]);
    }

    #[test]
    fn reading_names_the_faster_exact_backend_and_the_slopes() {
        let rows: Vec<Row> = [1024usize, 2048, 4096]
            .iter()
            .flat_map(|&n| {
                let t = (n as f64 / 1024.0).powi(2);
                [row("flash-cpu", Exact, n, false, Some(t), None), row("sdpa", Exact, n, false, Some(3.0 * t), None)]
            })
            .collect();
        let lines = reading(&rows);
        assert!(
            lines[0].starts_with("At N = 4096")
                && lines[0].contains("`flash-cpu` took 16.00 s vs `sdpa` 48.00 s (3.0× faster)"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("`sdpa` (non-causal): time ∝ N^2.00") && l.contains("close to quadratic")),
            "{lines:?}"
        );
        assert_eq!(reading(&[]), ["Too few measurements for any observation."]);
    }
}
