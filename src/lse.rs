//! Merging partial attention results computed over disjoint key ranges.
//!
//! If O₁, L₁ are attention over key set S₁ and O₂, L₂ over a disjoint S₂, then over S₁ ∪ S₂
//!
//! ```text
//! L = ln(e^L₁ + e^L₂) = max + ln(e^(L₁−max) + e^(L₂−max))
//! O = e^(L₁−L) · O₁ + e^(L₂−L) · O₂
//! ```
//!
//! This is the building block for split-KV (flash-decoding) and for spreading keys across
//! workers. An empty part has L = −∞ and contributes nothing; two empty parts stay empty (O = 0).

use crate::error::{AttnError, Result};

/// Adds attention sinks to a finished result: each row's sink logit σ_h joins the softmax
/// denominator as a key with no value, i.e. a part with O = 0 and LSE = σ merged into the row
/// (`O ← O·e^(L−L')`, `L' = ln(e^L + e^σ)`; a row with no key keeps O = 0 and gets LSE = σ).
/// Exact whenever `lse` is the log-normalizer the rows were divided by, so the approximations
/// whose LSE is their own softmax's (linformer, FAVOR+ performer) take sinks through it.
pub fn add_sinks(p: &crate::problem::Problem, out: &mut [f32], lse: &mut [f32]) {
    let Some(sinks) = &p.mods.sinks else { return };
    let d = p.head_dim;
    for (row, (o, l)) in out.chunks_mut(d).zip(lse.iter_mut()).enumerate() {
        let sigma = sinks[(row / p.seq_q) % p.heads];
        let m = l.max(sigma);
        let new = m + ((*l - m).exp() + (sigma - m).exp()).ln();
        let w = (*l - new).exp();
        o.iter_mut().for_each(|x| *x *= w);
        *l = new;
    }
}

/// Runs `rows` (a backend's computation without sinks) and adds the problem's sinks, if any,
/// through [`add_sinks`]; the LSE is computed into scratch when the caller did not ask for it.
pub fn compute_with_sinks(
    p: &crate::problem::Problem,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    rows: impl FnOnce(&mut [f32], Option<&mut [f32]>) -> Result<()>,
) -> Result<()> {
    if p.mods.sinks.is_none() {
        return rows(out, lse);
    }
    let mut scratch;
    let l = match lse {
        Some(l) => l,
        None => {
            scratch = vec![0.0f32; p.lse_len()];
            &mut scratch
        }
    };
    rows(out, Some(&mut *l))?;
    add_sinks(p, out, l);
    Ok(())
}

/// Merges part `b` into part `a` in place. `a_out`/`b_out` are rows×`head_dim`, `a_lse`/`b_lse`
/// have one natural-log LSE per row (−∞ for a row that saw no key).
pub fn merge_partials(
    a_out: &mut [f32],
    a_lse: &mut [f32],
    b_out: &[f32],
    b_lse: &[f32],
    head_dim: usize,
) -> Result<()> {
    let rows = a_lse.len();
    if head_dim == 0 || b_lse.len() != rows || a_out.len() != rows * head_dim || b_out.len() != rows * head_dim {
        return Err(AttnError::shape(format!(
            "merge_partials: a_out={}, a_lse={}, b_out={}, b_lse={}, head_dim={head_dim} are inconsistent",
            a_out.len(),
            a_lse.len(),
            b_out.len(),
            b_lse.len()
        )));
    }
    for r in 0..rows {
        let (la, lb) = (a_lse[r], b_lse[r]);
        let row_a = &mut a_out[r * head_dim..(r + 1) * head_dim];
        let row_b = &b_out[r * head_dim..(r + 1) * head_dim];
        // A NaN LSE is a row a NaN score poisoned: the merged row is NaN whatever the other part
        // holds (`f32::max` would drop the NaN, and an empty partner, −∞, turned the row into
        // zeros: the fuzzer found it through the decode path's key chunks).
        if la.is_nan() || lb.is_nan() {
            row_a.fill(f32::NAN);
            a_lse[r] = f32::NAN;
            continue;
        }
        let m = la.max(lb);
        if m == f32::NEG_INFINITY {
            row_a.fill(0.0);
            continue;
        }
        let (ea, eb) = ((la - m).exp(), (lb - m).exp());
        let sum = ea + eb;
        let (wa, wb) = (ea / sum, eb / sum);
        for (x, &y) in row_a.iter_mut().zip(row_b) {
            // A weight of 0 must not turn a non-finite partner row into NaN (0·∞).
            *x = if wb == 0.0 {
                *x
            } else if wa == 0.0 {
                y
            } else {
                wa * *x + wb * y
            };
        }
        a_lse[r] = m + sum.ln();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN part (a row a NaN score reached) stays NaN merged with an empty part, a finite
    /// part or another NaN part, in either order.
    #[test]
    fn a_nan_part_poisons_the_merged_row() {
        for (la, lb) in [(f32::NAN, f32::NEG_INFINITY), (f32::NEG_INFINITY, f32::NAN), (f32::NAN, 0.5), (0.5, f32::NAN)]
        {
            let (mut a, mut al) = (vec![if la.is_nan() { f32::NAN } else { 1.0 }; 2], vec![la]);
            let b = vec![if lb.is_nan() { f32::NAN } else { 2.0 }; 2];
            merge_partials(&mut a, &mut al, &b, &[lb], 2).unwrap();
            assert!(a.iter().all(|x| x.is_nan()) && al[0].is_nan(), "{la} {lb}: {a:?} {al:?}");
        }
    }

    #[test]
    fn merge_with_empty_part_is_identity() {
        let mut a = vec![1.0, 2.0];
        let mut la = vec![0.5];
        merge_partials(&mut a, &mut la, &[9.0, 9.0], &[f32::NEG_INFINITY], 2).unwrap();
        assert_eq!(a, vec![1.0, 2.0]);
        assert_eq!(la, vec![0.5]);
        let mut e = vec![0.0, 0.0];
        let mut le = vec![f32::NEG_INFINITY];
        merge_partials(&mut e, &mut le, &[f32::NAN, 1.0], &[f32::NEG_INFINITY], 2).unwrap();
        assert_eq!(e, vec![0.0, 0.0]);
    }

    #[test]
    fn merge_rejects_bad_lengths() {
        let mut a = vec![0.0; 4];
        let mut la = vec![0.0; 2];
        assert!(merge_partials(&mut a, &mut la, &[0.0; 3], &[0.0; 2], 2).is_err());
    }
}
