//! Accuracy of the approximate backends, judged against the trivial answer.
//!
//! An approximation is only worth its error if it beats **uniform attention over each row's
//! allowed keys**, i.e. returning the mean of V over `Problem::key_range(i)` for every row
//! ([`mean_of_v`]): that costs O(N·D) and needs no scores at all. Every accuracy figure here
//! is the relative Frobenius error ‖O − O_exact‖_F / ‖O_exact‖_F ([`rel_fro`]) and comes with the
//! baseline's error on the same inputs, so a table can mark every approximation that does not
//! beat it ([`Accuracy::beats_baseline`]).
//!
//! [`FrontierPoint`] and [`pareto`] give the accuracy–speed frontier per input family (a point is
//! on it when no other point is both at least as fast and at least as accurate),
//! [`crossover_n`] the first N at which one backend's measured time drops below another's, and
//! [`crossover_at_error`] that N for the fastest approximation within an error budget.

use crate::attention::{Attention, AttnArgs};
use crate::error::Result;
use crate::inputs::InputFamily;
use serde::Serialize;

/// Uniform attention over each row's allowed keys, in f64, (B, H, N_q, D); rows with no key
/// get 0 (the contract's empty-row output). O(B·H·(N_q + N_k)·D) through prefix sums of V.
pub fn mean_of_v(args: &AttnArgs<'_>) -> Vec<f64> {
    let p = args.problem();
    let (d, nk, nq) = (p.head_dim, p.seq_k, p.seq_q);
    let mut out = vec![0.0f64; p.out_len()];
    let mut prefix = vec![0.0f64; (nk + 1) * d];
    let mut row = vec![0.0f32; d];
    for b in 0..p.batch {
        for g in 0..p.kv_heads {
            let base = (b * p.kv_heads + g) * nk * d;
            for j in 0..nk {
                args.v().read_f32(base + j * d, &mut row);
                for c in 0..d {
                    prefix[(j + 1) * d + c] = prefix[j * d + c] + row[c] as f64;
                }
            }
            for h in (g * p.group_size())..((g + 1) * p.group_size()) {
                let o = &mut out[(b * p.heads + h) * nq * d..(b * p.heads + h + 1) * nq * d];
                for (i, oi) in o.chunks_mut(d).enumerate() {
                    let (lo, hi) = p.key_range(i);
                    if lo == hi {
                        continue;
                    }
                    let n = (hi - lo) as f64;
                    for (c, x) in oi.iter_mut().enumerate() {
                        *x = (prefix[hi * d + c] - prefix[lo * d + c]) / n;
                    }
                }
            }
        }
    }
    out
}

/// ‖got − want‖_F / ‖want‖_F (∞ when `got` has a non-finite value where `want` is finite, NaN
/// when `want` is all zeros).
pub fn rel_fro<T: Copy + Into<f64>>(got: &[T], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !w.is_finite() {
            continue;
        }
        let g: f64 = g.into();
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    if den == 0.0 { f64::NAN } else { (num / den).sqrt() }
}

/// One approximation's error on one input, beside the mean-of-V baseline's.
#[derive(Clone, Debug, Serialize)]
pub struct Accuracy {
    /// Relative Frobenius error of the backend's output.
    pub rel_err: f64,
    /// Relative Frobenius error of [`mean_of_v`] on the same input.
    pub baseline_rel_err: f64,
}

impl Accuracy {
    /// Strictly smaller error than the mean of V.
    pub fn beats_baseline(&self) -> bool {
        self.rel_err < self.baseline_rel_err
    }
    /// Baseline error over the backend's (> 1: better than the baseline by that factor).
    pub fn gain(&self) -> f64 {
        self.baseline_rel_err / self.rel_err
    }
}

/// Runs `backend` on `args` and scores it against `exact` (the oracle's output, or an exact
/// backend's when the f64 oracle is too slow) and the baseline error `baseline_rel_err`
/// (`rel_fro(&mean_of_v(args), exact)`, computed once per input).
pub fn accuracy(
    backend: &dyn Attention,
    args: &AttnArgs<'_>,
    exact: &[f64],
    baseline_rel_err: f64,
) -> Result<Accuracy> {
    let got = backend.forward(args, false)?.out;
    Ok(Accuracy { rel_err: rel_fro(&got, exact), baseline_rel_err })
}

/// One point of the accuracy–speed frontier.
#[derive(Clone, Debug, Serialize)]
pub struct FrontierPoint {
    /// Backend and settings, e.g. `nystrom (m=64)`.
    pub label: String,
    #[serde(serialize_with = "family_name")]
    pub family: InputFamily,
    pub seq: usize,
    pub rel_err: f64,
    pub seconds: f64,
}

fn family_name<S: serde::Serializer>(f: &InputFamily, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&f.to_string())
}

/// For each point, whether it is on the frontier of the points of its own (family, N): no other
/// point there has error ≤ and time ≤ with one of them strictly smaller. Non-finite errors are
/// never on it.
pub fn pareto(points: &[FrontierPoint]) -> Vec<bool> {
    points
        .iter()
        .map(|a| {
            a.rel_err.is_finite()
                && !points.iter().any(|b| {
                    b.family == a.family
                        && b.seq == a.seq
                        && b.rel_err.is_finite()
                        && b.rel_err <= a.rel_err
                        && b.seconds <= a.seconds
                        && (b.rel_err < a.rel_err || b.seconds < a.seconds)
                })
        })
        .collect()
}

/// The smallest N measured for both at which `fast` takes less time than `slow`, given
/// (N, seconds) series; `None` if it never does.
pub fn crossover_n(fast: &[(usize, f64)], slow: &[(usize, f64)]) -> Option<usize> {
    let mut ns: Vec<usize> = fast.iter().map(|x| x.0).filter(|n| slow.iter().any(|s| s.0 == *n)).collect();
    ns.sort_unstable();
    ns.into_iter().find(|n| {
        let t = |series: &[(usize, f64)]| series.iter().find(|x| x.0 == *n).map_or(f64::NAN, |x| x.1);
        t(fast) < t(slow)
    })
}

/// The first N at which an approximation within the error budget `max_err` runs faster than
/// `exact` (a label) on `family`: at each N where `exact` was measured, the fastest other point
/// with rel_err ≤ `max_err` races it ([`crossover_n`]). Returns (N, that point's label); `None`
/// when no point within the budget is faster at any measured N. This is the crossover "at equal
/// error": exact attention's own error is ~1e-7, so the comparison fixes the error a reader
/// accepts and asks from which N an approximation delivers it faster.
pub fn crossover_at_error(
    points: &[FrontierPoint],
    family: InputFamily,
    exact: &str,
    max_err: f64,
) -> Option<(usize, String)> {
    let of_family = || points.iter().filter(|p| p.family == family);
    let slow: Vec<(usize, f64)> = of_family().filter(|p| p.label == exact).map(|p| (p.seq, p.seconds)).collect();
    let fastest_at = |n: usize| {
        of_family()
            .filter(|p| p.seq == n && p.label != exact && p.rel_err <= max_err)
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
    };
    let fast: Vec<(usize, f64)> = slow.iter().filter_map(|&(n, _)| fastest_at(n).map(|p| (n, p.seconds))).collect();
    let n = crossover_n(&fast, &slow)?;
    fastest_at(n).map(|p| (n, p.label.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(label: &str, family: InputFamily, rel_err: f64, seconds: f64) -> FrontierPoint {
        FrontierPoint { label: label.into(), family, seq: 4096, rel_err, seconds }
    }

    #[test]
    fn pareto_keeps_only_undominated_points_per_family() {
        let (n, s) = (InputFamily::Normal, InputFamily::Structured { sharpness: 4.0 });
        let pts = [
            pt("fast-rough", n, 0.5, 1.0),
            pt("slow-exact", n, 1e-6, 10.0),
            pt("dominated", n, 0.6, 2.0),
            pt("tie", n, 0.5, 1.0),
            pt("other-family", s, 0.9, 5.0),
            pt("nan", n, f64::NAN, 0.1),
        ];
        assert_eq!(pareto(&pts), vec![true, true, false, true, true, false]);
    }

    #[test]
    fn crossover_is_the_first_common_n_where_fast_wins() {
        let fast = [(1024, 2.0), (4096, 3.0), (8192, 4.0)];
        let slow = [(1024, 1.0), (2048, 2.0), (4096, 8.0), (8192, 30.0)];
        assert_eq!(crossover_n(&fast, &slow), Some(4096));
        assert_eq!(crossover_n(&slow, &fast), Some(1024));
        assert_eq!(crossover_n(&fast[..1], &slow), None);
    }

    #[test]
    fn crossover_at_error_races_the_fastest_point_within_the_budget() {
        let s = InputFamily::Structured { sharpness: 8.0 };
        let at = |label: &str, family, seq, rel_err, seconds| FrontierPoint {
            label: label.into(),
            family,
            seq,
            rel_err,
            seconds,
        };
        let pts = [
            at("flash-cpu", s, 1024, 1e-7, 1.0),
            at("flash-cpu", s, 4096, 1e-7, 16.0),
            at("rough", s, 1024, 0.2, 0.1),
            at("rough", s, 4096, 0.2, 0.4),
            at("fine", s, 1024, 0.005, 2.0),
            at("fine", s, 4096, 0.005, 8.0),
            at("finer-but-slow", s, 4096, 0.004, 9.0),
            at("fine", InputFamily::Normal, 1024, 0.001, 0.01),
        ];
        assert_eq!(crossover_at_error(&pts, s, "flash-cpu", 0.5), Some((1024, "rough".into())));
        assert_eq!(crossover_at_error(&pts, s, "flash-cpu", 0.01), Some((4096, "fine".into())));
        assert_eq!(crossover_at_error(&pts, s, "flash-cpu", 1e-3), None, "nothing that accurate but exact");
        assert_eq!(crossover_at_error(&pts, InputFamily::Normal, "flash-cpu", 0.5), None, "no exact series");
    }

    #[test]
    fn rel_fro_flags_non_finite_output() {
        assert_eq!(rel_fro(&[1.0f32, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_fro(&[0.0f32, 0.0], &[3.0, 4.0]) - 1.0).abs() < 1e-15);
        assert_eq!(rel_fro(&[f32::NAN, 2.0], &[1.0, 2.0]), f64::INFINITY);
    }
}
