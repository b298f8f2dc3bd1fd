//! Dense projection matrices of `linformer` (Gaussian or user-supplied): how they are shared,
//! stored and validated. Kept apart from the attention code in `linformer.rs`.

use crate::error::{AttnError, Result};
use std::sync::Arc;

/// Which of E and F are shared, and across what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// E_h and F_h, distinct, one pair per KV head.
    #[default]
    Separate,
    /// E_h = F_h: one matrix per KV head projects both keys and values.
    KeyValue,
    /// One E and one F used by every head.
    Headwise,
    /// One matrix for keys, values and every head.
    Layerwise,
}

impl Sharing {
    pub(super) fn per_head(self) -> bool {
        matches!(self, Sharing::Separate | Sharing::KeyValue)
    }
    pub(super) fn kv_shared(self) -> bool {
        matches!(self, Sharing::KeyValue | Sharing::Layerwise)
    }
}

/// One projection, stored transposed (N_k×k row-major) so that the columns of E that one key
/// block needs are one contiguous slice.
pub(super) type Mat = Arc<[f32]>;

/// The transpose of a rows×cols row-major matrix.
pub(super) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; a.len()];
    for (r, row) in a.chunks(cols).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * rows + r] = x;
        }
    }
    t
}

/// E and F for every slot: one slot per KV head, or a single slot shared by all heads.
pub(super) struct ProjSet {
    pub(super) e: Vec<Mat>,
    pub(super) f: Vec<Mat>,
}

impl ProjSet {
    pub(super) fn pair(&self, kv_head: usize) -> (&[f32], &[f32]) {
        let s = if self.e.len() == 1 { 0 } else { kv_head };
        (&self.e[s], &self.f[s])
    }
}

/// Validates user projections (one k×N_k row-major E per slot, F likewise or `None` for F = E)
/// and stores them transposed; the sharing follows from how many were supplied.
pub(super) fn supplied_set(
    e: Vec<Vec<f32>>,
    f: Option<Vec<Vec<f32>>>,
    proj_dim: usize,
    seq_k: usize,
) -> Result<(ProjSet, Sharing)> {
    if proj_dim == 0 || seq_k == 0 {
        return Err(AttnError::invalid(format!("linformer: proj_dim ({proj_dim}) and seq_k ({seq_k}) must be ≥ 1")));
    }
    if e.is_empty() {
        return Err(AttnError::invalid("linformer: at least one E matrix is required"));
    }
    let want = proj_dim.checked_mul(seq_k).ok_or_else(|| AttnError::shape("linformer: k·N_k overflows"))?;
    let check = |name: &str, mats: &[Vec<f32>]| -> Result<Vec<Mat>> {
        mats.iter()
            .enumerate()
            .map(|(i, m)| {
                if m.len() != want {
                    return Err(AttnError::shape(format!(
                        "linformer: {name}[{i}] has {} elements, expected k×N_k = {proj_dim}×{seq_k} = {want}",
                        m.len()
                    )));
                }
                if let Some(pos) = m.iter().position(|x| !x.is_finite()) {
                    return Err(AttnError::invalid(format!("linformer: {name}[{i}] has a non-finite entry at {pos}")));
                }
                Ok(Arc::from(transpose(m, proj_dim, seq_k)))
            })
            .collect()
    };
    let e_mats = check("E", &e)?;
    let f_mats = match &f {
        Some(f) if f.len() != e.len() => {
            return Err(AttnError::shape(format!(
                "linformer: {} E matrices but {} F matrices; supply the same number",
                e.len(),
                f.len()
            )));
        }
        Some(f) => check("F", f)?,
        None => e_mats.clone(),
    };
    let sharing = match (e.len() == 1, f.is_none()) {
        (false, false) => Sharing::Separate,
        (false, true) => Sharing::KeyValue,
        (true, false) => Sharing::Headwise,
        (true, true) => Sharing::Layerwise,
    };
    Ok((ProjSet { e: e_mats, f: f_mats }, sharing))
}
