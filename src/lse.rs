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
        let m = la.max(lb);
        let row_a = &mut a_out[r * head_dim..(r + 1) * head_dim];
        let row_b = &b_out[r * head_dim..(r + 1) * head_dim];
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
