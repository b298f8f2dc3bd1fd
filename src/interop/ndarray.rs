//! ndarray door (feature `ndarray`): [`attention`] on `ArrayView4<f32>` of any strides, returning
//! an owned `Array4<f32>` and, on request, the log-sum-exp as `Array3<f32>`.
//!
//! Shapes follow [`AttnOptions::layout`]: (B, H, N, D) or (B, N, H, D) for q, k and v, with H_kv
//! from k's shape (GQA/MQA when it divides H). The output has the inputs' layout; the LSE is
//! always (B, H, N_q). A (B, H, N, D) view in standard (C) order is read in place; any other
//! strides, negative ones included, are copied once into standard order (ndarray's
//! `as_standard_layout`, O(N·D) against the kernel's O(N²·D)).

use super::{AttnOptions, Layout, compute};
use crate::error::{AttnError, Result};
use crate::problem::DType;
use crate::tensor::TensorRef;
use ::ndarray::{Array3, Array4, ArrayView4, CowArray, Ix4};

/// O (in the inputs' layout) and, when asked for, LSE (B, H, N_q).
#[derive(Clone, Debug)]
pub struct NdOutput {
    pub out: Array4<f32>,
    pub lse: Option<Array3<f32>>,
}

/// Attention over ndarray views with the options' backend, mask and scale.
pub fn attention(
    q: ArrayView4<'_, f32>,
    k: ArrayView4<'_, f32>,
    v: ArrayView4<'_, f32>,
    opts: &AttnOptions,
    want_lse: bool,
) -> Result<NdOutput> {
    let perm = opts.layout.to_bhnd();
    let (q, k, v) = (q.permuted_axes(perm), k.permuted_axes(perm), v.permuted_axes(perm));
    let dims = |a: &ArrayView4<'_, f32>| -> [usize; 4] { a.dim().into() };
    let p = opts.problem(dims(&q), dims(&k), dims(&v), DType::F32)?;
    let backend = opts.build_backend()?;
    let (qc, kc, vc) = (q.as_standard_layout(), k.as_standard_layout(), v.as_standard_layout());
    let (qs, ks, vs) = (slice("q", &qc)?, slice("k", &kc)?, slice("v", &vc)?);
    let out = compute(&*backend, &p, qs, ks, vs, want_lse)?;
    let (b, h, n, d) = (p.batch, p.heads, p.seq_q, p.head_dim);
    let shape_err = |e: ::ndarray::ShapeError| AttnError::shape(format!("output of {p}: {e}"));
    let o = Array4::from_shape_vec((b, h, n, d), out.out).map_err(shape_err)?;
    let o = match opts.layout {
        Layout::Bhnd => o,
        Layout::Bnhd => o.permuted_axes(perm).as_standard_layout().into_owned(),
    };
    let lse = out.lse.map(|l| Array3::from_shape_vec((b, h, n), l)).transpose().map_err(shape_err)?;
    Ok(NdOutput { out: o, lse })
}

/// The elements of a standard-layout array (which `as_standard_layout` always yields).
fn slice<'a>(name: &str, a: &'a CowArray<'_, f32, Ix4>) -> Result<TensorRef<'a>> {
    a.as_slice().map(TensorRef::F32).ok_or_else(|| AttnError::shape(format!("{name} is not in standard layout")))
}
