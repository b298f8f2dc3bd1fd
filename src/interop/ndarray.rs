//! ndarray door (feature `ndarray`): [`attention`] on `ArrayView4<f32>` of any strides, returning
//! an owned `Array4<f32>` and, on request, the log-sum-exp as `Array3<f32>`.
//!
//! Shapes follow [`AttnOptions::layout`]: (B, H, N, D) or (B, N, H, D) for q, k and v, with H_kv
//! from k's shape (GQA/MQA when it divides H). The output has the inputs' layout; the LSE is
//! always (B, H, N_q). A (B, H, N, D) view in standard (C) order is read in place; any other
//! strides, negative ones included, are copied once into standard order (ndarray's
//! `as_standard_layout`, O(N·D) against the kernel's O(N²·D)).

use super::strided::View4;
use super::{AttnOptions, Layout, compute_views};
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
    // Views over one memory-contiguous block with non-negative strides (a standard array in
    // either layout, or a permuted one) are read in place; anything else (stepped slices,
    // reversed axes) is copied once into standard order.
    let (qc, kc, vc) = (in_place_or_copy(q), in_place_or_copy(k), in_place_or_copy(v));
    let views = [view("q", &qc)?, view("k", &kc)?, view("v", &vc)?];
    let out = compute_views(&*backend, &p, views, want_lse, |s| TensorRef::F32(s))?;
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

/// `a` itself when its elements are one memory-contiguous block addressed with non-negative
/// strides (so element [0, 0, 0, 0] is the block's first), else a standard-layout copy.
fn in_place_or_copy<'a>(a: ArrayView4<'a, f32>) -> CowArray<'a, f32, Ix4> {
    let in_place = a.strides().iter().all(|&s| s >= 0) && a.as_slice_memory_order().is_some();
    if in_place { CowArray::from(a) } else { CowArray::from(a.as_standard_layout().into_owned()) }
}

/// `a` as a strided (B, H, N, D) view over its memory block.
fn view<'a>(name: &str, a: &'a CowArray<'_, f32, Ix4>) -> Result<View4<'a, f32>> {
    let data = a.as_slice_memory_order().ok_or_else(|| AttnError::shape(format!("{name} is not one memory block")))?;
    let strides: [isize; 4] = a.strides().try_into().map_err(|_| AttnError::shape(format!("{name} is not rank 4")))?;
    View4::new(name, data, 0, a.dim().into(), strides)
}
