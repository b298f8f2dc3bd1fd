//! `attnkit check`: every selected backend against the f64 oracle on seeded random inputs of
//! one input family, beside the mean-of-V baseline (uniform attention over the allowed keys);
//! with `--backward`, their gradients instead ([`super::check_backward`]).

use super::modifiers::ModifierArgs;
use super::{EXIT_NAMED_SKIPPED, ShapeArgs, resolve_backends};
use attnkit::approx_eval::{mean_of_v, rel_fro};
use attnkit::bench::{is_skip, skip_reason};
use attnkit::inputs::InputFamily;
use attnkit::validate::{Tolerance, compare, exact_tolerance, oracle};
use attnkit::{AttnArgs, AttnError, DType, Exactness};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Comma-separated backend names, or `all` (every registered backend).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub backends: Vec<String>,
    /// Query length N_q.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Key/value length N_k (default N_q).
    #[arg(long)]
    pub seq_kv: Option<usize>,
    /// Input family: normal, structured, structured:SHARPNESS or local-global (see
    /// `attnkit::inputs`).
    #[arg(long, default_value = "normal", value_parser = super::parse_named::<InputFamily>)]
    pub inputs: InputFamily,
    #[command(flatten)]
    pub shape: ShapeArgs,
    #[command(flatten)]
    pub mods: ModifierArgs,
    /// Check the backward pass instead: dQ, dK, dV (dσ with sinks, dB with --bias data) of every
    /// backend that has one, against the f64 oracle's gradients for a seeded random dO.
    #[arg(long)]
    pub backward: bool,
    #[command(flatten)]
    pub kv: super::kvcache::KvArgs,
}

pub fn run(a: &CheckArgs) -> Result<ExitCode, AttnError> {
    if a.kv.active() {
        return super::kvcache::check(&a.kv, &a.shape, &a.mods, a.inputs, a.seq_kv.unwrap_or(a.seq));
    }
    let (names, explicit) = resolve_backends(&a.backends, &[])?;
    if a.backward {
        return super::check_backward::run(a, &names, explicit);
    }
    let p = a.shape.problem(4, a.seq, a.seq_kv.unwrap_or(a.seq))?;
    let (p, pair) = a.mods.apply(p, a.shape.seed)?;
    let opts = a.shape.options();
    let (q, k, v) = attnkit::inputs::generate(a.inputs, &p, a.shape.seed);
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair.as_pair())?;
    let want = oracle(&args);
    let baseline = mean_of_v(&args);
    let base_err = rel_fro(&baseline, &want);
    // Tolerances per precision, computed on first use (the naive pass costs as much as the oracle).
    let mut tolerances: Vec<(DType, Tolerance)> = Vec::new();

    outln!("problem: {p}  seed={}  inputs={} ({})", a.shape.seed, a.inputs, a.inputs.description())?;
    outln!(
        "{:<12} {:<6} {:>11} {:>11} {:>11} {:>11}  result",
        "backend",
        "kind",
        "max_abs",
        "max_rel",
        "rel_err",
        "tolerance"
    )?;
    let base_stats = compare(&baseline.iter().map(|&x| x as f32).collect::<Vec<_>>(), &want);
    outln!(
        "{:<12} {:<6} {:>11.3e} {:>11.3e} {:>11.3e} {:>11}  uniform attention over each row's allowed keys",
        "mean-of-v",
        "base",
        base_stats.max_abs,
        base_stats.max_rel,
        base_err,
        "-"
    )?;
    let (mut failed, mut skipped_named) = (Vec::new(), Vec::new());
    for name in &names {
        let row = |kind: &str, rest: &str| outln!("{name:<12} {kind:<6} {rest}");
        let backend = match attnkit::backend_with(name, &opts) {
            Ok(b) => b,
            Err(e) => {
                row("-", &format!("{:>11} {:>11} {:>11} {:>11}  FAIL (cannot build: {e})", "-", "-", "-", "-"))?;
                failed.push(name.clone());
                continue;
            }
        };
        let kind = backend.exactness().to_string();
        let skip = |reason: String, skipped_named: &mut Vec<String>| {
            if explicit {
                skipped_named.push(name.clone());
            }
            row(&kind, &format!("{:>11} {:>11} {:>11} {:>11}  SKIP {reason}", "-", "-", "-", "-"))
        };
        if let Some(reason) = skip_reason(backend.as_ref(), &p) {
            skip(reason, &mut skipped_named)?;
            continue;
        }
        let got = match backend.forward(&args, false) {
            Ok(o) => o.out,
            Err(e) if is_skip(&e) => {
                skip(format!("({e})"), &mut skipped_named)?;
                continue;
            }
            Err(e) => {
                row(&kind, &format!("{:>11} {:>11} {:>11} {:>11}  FAIL ({e})", "-", "-", "-", "-"))?;
                failed.push(name.clone());
                continue;
            }
        };
        let stats = compare(&got, &want);
        let err = rel_fro(&got, &want);
        let nonfinite =
            if stats.non_finite > 0 { format!(" ({} non-finite values)", stats.non_finite) } else { String::new() };
        match backend.exactness() {
            Exactness::Exact => {
                let precision = backend.compute_precision(&args);
                let tol = match tolerances.iter().find(|(d, _)| *d == precision) {
                    Some((_, t)) => *t,
                    None => {
                        let t = exact_tolerance(&args, &want, precision);
                        tolerances.push((precision, t));
                        t
                    }
                };
                let pass = stats.within(tol.bound);
                let at = if precision != p.dtype { format!(" (judged at {precision})") } else { String::new() };
                row(
                    &kind,
                    &format!(
                        "{:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e}  {}{at}{nonfinite}",
                        stats.max_abs,
                        stats.max_rel,
                        err,
                        tol.bound,
                        if pass { "PASS" } else { "FAIL" }
                    ),
                )?;
                if !pass {
                    failed.push(name.clone());
                }
            }
            Exactness::Approximate => {
                // Not judged against a tolerance, but marked when the trivial answer does as well.
                let verdict = if stats.non_finite > 0 {
                    "FAIL".to_string()
                } else if err < base_err {
                    format!("approx, {:.1}x better than mean-of-v", base_err / err)
                } else {
                    "approx, NOT better than mean-of-v (!)".to_string()
                };
                row(
                    &kind,
                    &format!(
                        "{:>11.3e} {:>11.3e} {:>11.3e} {:>11}  {verdict}{nonfinite}",
                        stats.max_abs, stats.max_rel, err, "-"
                    ),
                )?;
                if stats.non_finite > 0 {
                    failed.push(name.clone());
                }
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("error: check failed for: {}", failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if !skipped_named.is_empty() {
        eprintln!("error: explicitly requested backend(s) skipped: {}", skipped_named.join(", "));
        return Ok(ExitCode::from(EXIT_NAMED_SKIPPED));
    }
    Ok(ExitCode::SUCCESS)
}
