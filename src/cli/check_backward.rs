//! `attnkit check --backward`: every selected backend's backward pass against the f64 oracle's
//! gradients ([`attnkit::grad::oracle::gradients_f64`]) on seeded random inputs and a seeded
//! random dO, one verdict per gradient: dQ, dK, dV, dσ when the problem has sinks, and dB when
//! it has `--bias` data.
//!
//! dQ, dK, dV and dσ are judged by the gradient tolerance rule
//! ([`attnkit::validate::gradient_tolerance`]: 2 × the naive same-precision backward's error
//! plus the floor). dB has no naive counterpart there: each of its elements is one dS, so it is
//! held to the bound tests/gradients.rs uses, 64 units of f32 roundoff of the largest |dB|.
//! Backends without a backward for the problem are SKIPs, with the same exit status as `check`.

use super::EXIT_NAMED_SKIPPED;
use super::check::CheckArgs;
use attnkit::approx_eval::rel_fro;
use attnkit::bench::backward::seeded_d_out;
use attnkit::bench::{is_skip, skip_reason};
use attnkit::grad::oracle::gradients_f64;
use attnkit::validate::{compare, gradient_tolerance};
use attnkit::{Attention, AttnArgs, AttnError, Exactness, Grads};
use std::process::ExitCode;

/// The dB bound: every element is one dS (a few roundings of P and dP), not a sum.
pub fn dbias_bound(oracle_dbias: &[f64]) -> f64 {
    let max_ref = oracle_dbias.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs()));
    64.0 * f32::EPSILON as f64 * max_ref.max(1e-3) + 1e-6
}

/// What one backend's backward came to: gradients, a skip reason, or an error.
enum Outcome {
    Ran(Grads),
    Skip(String),
    Fail(String),
}

fn forward_backward(b: &dyn Attention, args: &AttnArgs<'_>, d_out: &[f32], want_dbias: bool) -> Outcome {
    let p = args.problem();
    if let Some(reason) = skip_reason(b, p) {
        return Outcome::Skip(reason);
    }
    let reasons = b.backward_not_supported_reasons(p);
    if !reasons.is_empty() {
        return Outcome::Skip(format!("no backward ({})", reasons.join("; ")));
    }
    let run = || -> Result<Grads, AttnError> {
        let fwd = b.forward(args, true)?;
        let lse = fwd.lse.ok_or_else(|| AttnError::invalid("the forward returned no LSE"))?;
        b.backward(args, &fwd.out, &lse, d_out, want_dbias)
    };
    match run() {
        Ok(g) => Outcome::Ran(g),
        Err(e) if is_skip(&e) => Outcome::Skip(format!("({e})")),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

pub fn run(a: &CheckArgs, names: &[String], explicit: bool) -> Result<ExitCode, AttnError> {
    let p = a.shape.problem(4, a.seq, a.seq_kv.unwrap_or(a.seq))?;
    let (p, pair) = a.mods.apply(p, a.shape.seed)?;
    let opts = a.shape.options();
    let (q, k, v) = attnkit::inputs::generate(a.inputs, &p, a.shape.seed);
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair.as_pair())?;
    let d_out = seeded_d_out(&p, a.shape.seed);
    let want_dbias = p.mods.bias.is_some();
    let oracle = gradients_f64(&args, &d_out, want_dbias);
    let tol = gradient_tolerance(&args, &d_out, &oracle);

    outln!("problem: {p}  seed={}  inputs={} ({})", a.shape.seed, a.inputs, a.inputs.description())?;
    outln!("backward: dO seeded normal; gradients against the f64 oracle's (FlashAttention's rule per gradient)")?;
    outln!(
        "{:<12} {:<6} {:<6} {:>11} {:>11} {:>11} {:>11}  result",
        "backend",
        "kind",
        "grad",
        "max_abs",
        "max_rel",
        "rel_err",
        "tolerance"
    )?;
    let dash = format!("{:>11} {:>11} {:>11} {:>11}", "-", "-", "-", "-");
    let (mut failed, mut skipped_named) = (Vec::new(), Vec::new());
    for name in names {
        let row = |kind: &str, grad: &str, rest: &str| outln!("{name:<12} {kind:<6} {grad:<6} {rest}");
        let backend = match attnkit::backend_with(name, &opts) {
            Ok(b) => b,
            Err(e) => {
                row("-", "-", &format!("{dash}  FAIL (cannot build: {e})"))?;
                failed.push(name.clone());
                continue;
            }
        };
        let kind = backend.exactness().to_string();
        let grads = match forward_backward(backend.as_ref(), &args, &d_out, want_dbias) {
            Outcome::Ran(g) => g,
            Outcome::Skip(reason) => {
                if explicit {
                    skipped_named.push(name.clone());
                }
                row(&kind, "-", &format!("{dash}  SKIP {reason}"))?;
                continue;
            }
            Outcome::Fail(e) => {
                row(&kind, "-", &format!("{dash}  FAIL ({e})"))?;
                failed.push(name.clone());
                continue;
            }
        };
        let judged = backend.exactness() == Exactness::Exact;
        let mut verdicts: Vec<(&str, &[f32], &[f64], f64)> = vec![
            ("dq", &grads.dq, &oracle.dq, tol.dq.bound),
            ("dk", &grads.dk, &oracle.dk, tol.dk.bound),
            ("dv", &grads.dv, &oracle.dv, tol.dv.bound),
        ];
        if let (Some(g), Some(o), Some(t)) = (&grads.dsinks, &oracle.dsinks, tol.dsinks) {
            verdicts.push(("dsinks", g, o, t.bound));
        }
        if let (Some(g), Some(o)) = (&grads.dbias, &oracle.dbias) {
            verdicts.push(("dbias", g, o, dbias_bound(o)));
        }
        let mut ok = true;
        for (grad, got, want, bound) in verdicts {
            let stats = compare(got, want);
            // An approximation is not held to the exact rule; it fails only on non-finite values.
            let pass = if judged { stats.within(bound) } else { stats.non_finite == 0 };
            ok &= pass;
            let nonfinite =
                if stats.non_finite > 0 { format!(" ({} non-finite values)", stats.non_finite) } else { String::new() };
            let verdict = match (pass, judged) {
                (true, true) => "PASS",
                (true, false) => "approx (not judged)",
                (false, _) => "FAIL",
            };
            row(
                &kind,
                grad,
                &format!(
                    "{:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e}  {verdict}{nonfinite}",
                    stats.max_abs,
                    stats.max_rel,
                    rel_fro(got, want),
                    bound
                ),
            )?;
        }
        if !ok {
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        eprintln!("error: backward check failed for: {}", failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if !skipped_named.is_empty() {
        eprintln!("error: explicitly requested backend(s) skipped: {}", skipped_named.join(", "));
        return Ok(ExitCode::from(EXIT_NAMED_SKIPPED));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dbias_bound_scales_with_the_largest_finite_element() {
        let b = super::dbias_bound(&[0.5, -2.0, f64::NAN]);
        assert!((b - (64.0 * f32::EPSILON as f64 * 2.0 + 1e-6)).abs() < 1e-15);
        assert!(super::dbias_bound(&[]) > 0.0, "an empty or all-zero dB still gets the floor");
    }
}
