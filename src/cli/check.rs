//! `attnkit check`: every selected backend against the f64 oracle on seeded random inputs.

use super::modifiers::ModifierArgs;
use super::{ShapeArgs, resolve_backends};
use attnkit::bench::{is_skip, skip_reason};
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
    #[command(flatten)]
    pub shape: ShapeArgs,
    #[command(flatten)]
    pub mods: ModifierArgs,
}

/// Exit code when a backend named explicitly on the command line was skipped.
const EXIT_NAMED_SKIPPED: u8 = 3;

pub fn run(a: &CheckArgs) -> Result<ExitCode, AttnError> {
    let (names, explicit) = resolve_backends(&a.backends, &[])?;
    let p = a.shape.problem(4, a.seq, a.seq_kv.unwrap_or(a.seq))?;
    let (p, pair) = a.mods.apply(p, a.shape.seed)?;
    let opts = a.shape.options();
    let (q, k, v) = attnkit::seeded::normal_qkv(&p, a.shape.seed);
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair.as_pair())?;
    let want = oracle(&args);
    // Tolerances per precision, computed on first use (the naive pass costs as much as the oracle).
    let mut tolerances: Vec<(DType, Tolerance)> = Vec::new();

    println!("problem: {p}  seed={}", a.shape.seed);
    println!("{:<12} {:<6} {:>11} {:>11} {:>11}  result", "backend", "kind", "max_abs", "max_rel", "tolerance");
    let (mut failed, mut skipped_named) = (Vec::new(), Vec::new());
    for name in &names {
        let row = |kind: &str, rest: &str| println!("{name:<12} {kind:<6} {rest}");
        let backend = match attnkit::backend_with(name, &opts) {
            Ok(b) => b,
            Err(e) => {
                row("-", &format!("{:>11} {:>11} {:>11}  FAIL (cannot build: {e})", "-", "-", "-"));
                failed.push(name.clone());
                continue;
            }
        };
        let kind = backend.exactness().to_string();
        let skip = |reason: String, skipped_named: &mut Vec<String>| {
            row(&kind, &format!("{:>11} {:>11} {:>11}  SKIP {reason}", "-", "-", "-"));
            if explicit {
                skipped_named.push(name.clone());
            }
        };
        if let Some(reason) = skip_reason(backend.as_ref(), &p) {
            skip(reason, &mut skipped_named);
            continue;
        }
        let got = match backend.forward(&args, false) {
            Ok(o) => o.out,
            Err(e) if is_skip(&e) => {
                skip(format!("({e})"), &mut skipped_named);
                continue;
            }
            Err(e) => {
                row(&kind, &format!("{:>11} {:>11} {:>11}  FAIL ({e})", "-", "-", "-"));
                failed.push(name.clone());
                continue;
            }
        };
        let stats = compare(&got, &want);
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
                        "{:>11.3e} {:>11.3e} {:>11.3e}  {}{at}{nonfinite}",
                        stats.max_abs,
                        stats.max_rel,
                        tol.bound,
                        if pass { "PASS" } else { "FAIL" }
                    ),
                );
                if !pass {
                    failed.push(name.clone());
                }
            }
            Exactness::Approximate => {
                let verdict = if stats.non_finite > 0 { "FAIL" } else { "approx (error reported, not judged)" };
                row(
                    &kind,
                    &format!("{:>11.3e} {:>11.3e} {:>11}  {verdict}{nonfinite}", stats.max_abs, stats.max_rel, "-"),
                );
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
