//! What the interop doors share: the call options, the (B, H, N, D) / (B, N, H, D) layouts, the
//! problem a set of shapes describes, and one call from contiguous buffers to a backend.
//!
//! The doors themselves are `candle` (feature `candle`), `ndarray` (feature `ndarray`),
//! [`crate::safetensors_io`] (feature `safetensors`) and the Python package in `python/`, which
//! uses [`strided`] and [`compute`] directly. Every door validates shapes through
//! [`problem_from_shapes`], so they all refuse the same inputs with the same messages as
//! `attnkit run` does for `.npy` files.

pub mod strided;

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "candle")]
mod candle_paged;
#[cfg(feature = "ndarray")]
pub mod ndarray;

use crate::attention::{Attention, AttnArgs, AttnOutput, PairData};
use crate::error::{AttnError, Result};
use crate::npy::shape4;
use crate::problem::{DType, Problem, Window};
use crate::registry::{BackendOptions, backend_with};
use crate::row_layout::Layouts;
use crate::tensor::TensorRef;

/// Axis order of a 4-D attention tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// (batch, heads, seq, head_dim): PyTorch SDPA's order and attnkit's own.
    #[default]
    Bhnd,
    /// (batch, seq, heads, head_dim): FlashAttention's and candle-nn's order. Read in place by
    /// the CPU kernels that take row layouts ([`compute_views`]); the output is returned in
    /// this order again.
    Bnhd,
}

impl Layout {
    /// The axis permutation that turns a tensor in this layout into (B, H, N, D) (its own inverse).
    pub fn to_bhnd(self) -> [usize; 4] {
        match self {
            Layout::Bhnd => [0, 1, 2, 3],
            Layout::Bnhd => [0, 2, 1, 3],
        }
    }
}

/// Options of one attention call through a door. `Default` is `auto`, non-causal, unbounded
/// window, scale 1/√D, (B, H, N, D).
#[derive(Clone, Debug)]
pub struct AttnOptions {
    /// Registry name (`attnkit list`), `auto` by default.
    pub backend: String,
    /// Construction options of backends that take some (linformer, performer, local-block).
    pub backend_options: BackendOptions,
    pub causal: bool,
    pub window: Window,
    /// Softmax scale; `None` is 1/√D.
    pub scale: Option<f32>,
    pub layout: Layout,
}

impl Default for AttnOptions {
    fn default() -> Self {
        AttnOptions {
            backend: "auto".to_string(),
            backend_options: BackendOptions::default(),
            causal: false,
            window: Window::UNBOUNDED,
            scale: None,
            layout: Layout::Bhnd,
        }
    }
}

impl AttnOptions {
    pub fn with_backend(mut self, name: &str) -> Self {
        self.backend = name.to_string();
        self
    }
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// The backend these options name, built with their construction options.
    pub fn build_backend(&self) -> Result<Box<dyn Attention>> {
        backend_with(&self.backend, &self.backend_options)
    }

    /// The validated problem for Q, K, V of these (B, H, N, D) shapes and `dtype`.
    pub fn problem(&self, q: [usize; 4], k: [usize; 4], v: [usize; 4], dtype: DType) -> Result<Problem> {
        let mut p =
            problem_from_shapes(&q, &k, &v)?.with_dtype(dtype).with_causal(self.causal).with_window(self.window);
        if let Some(s) = self.scale {
            p = p.with_scale(s);
        }
        p.validate()?;
        Ok(p)
    }
}

fn rank_error(name: &str, shape: &[usize]) -> AttnError {
    AttnError::shape(format!("{name} has shape {shape:?}; expected (B, H, N, D) or (H, N, D)"))
}

/// The problem three shapes describe: q (B, H, N_q, D), k and v (B, H_kv, N_k, D), or all three
/// rank 3 (H, N, D) taken as B = 1. H_kv comes from the shapes (GQA/MQA when it divides H).
/// Errors name the disagreeing values.
pub fn problem_from_shapes(q: &[usize], k: &[usize], v: &[usize]) -> Result<Problem> {
    if !(q.len() == k.len() && k.len() == v.len()) {
        return Err(AttnError::shape(format!("q, k, v must have the same rank; got shapes {q:?}, {k:?}, {v:?}")));
    }
    let [b, h, nq, d] = shape4(q).ok_or_else(|| rank_error("q", q))?;
    let [bk, hk, nk, dk] = shape4(k).ok_or_else(|| rank_error("k", k))?;
    if bk != b {
        return Err(AttnError::shape(format!("batch differs: q has B={b}, k/v have B={bk}")));
    }
    if dk != d {
        return Err(AttnError::shape(format!("head dim differs: q has D={d}, k/v have D={dk}")));
    }
    if hk == 0 || !h.is_multiple_of(hk) {
        return Err(AttnError::shape(format!("q has H={h} heads, k/v have H_kv={hk}; H must be a multiple of H_kv")));
    }
    if k != v {
        return Err(AttnError::shape(format!("k has shape {k:?} but v has shape {v:?}; they must match")));
    }
    let p = Problem::new(b, h, nq, d).with_kv_heads(hk).with_seq_k(nk);
    p.validate()?;
    Ok(p)
}

/// The dtype Q, K and V share, or an error naming all three.
pub fn common_dtype(q: DType, k: DType, v: DType) -> Result<DType> {
    if q == k && k == v {
        Ok(q)
    } else {
        Err(AttnError::invalid(format!("q, k, v must share a dtype; got {q}, {k}, {v}")))
    }
}

/// Runs `backend` on contiguous (B, H, N, D) Q, K, V that `problem` describes.
pub fn compute(
    backend: &dyn Attention,
    problem: &Problem,
    q: TensorRef<'_>,
    k: TensorRef<'_>,
    v: TensorRef<'_>,
    want_lse: bool,
) -> Result<AttnOutput> {
    backend.forward(&AttnArgs::new(problem, q, k, v)?, want_lse)
}

/// Runs `backend` on Q, K, V given as (B, H, N, D) views of any strides: each view whose rows
/// are contiguous is passed in place as a row layout ([`strided::View4::rows`]), the others
/// (a strided head dim, negative strides) are gathered once. `wrap` lends a slice as a
/// [`TensorRef`] of the views' dtype.
pub fn compute_views<T: Copy>(
    backend: &dyn Attention,
    problem: &Problem,
    views: [strided::View4<'_, T>; 3],
    want_lse: bool,
    wrap: impl for<'s> Fn(&'s [T]) -> TensorRef<'s>,
) -> Result<AttnOutput> {
    let rows = views.map(|v| v.rows());
    let owned: Vec<Option<Vec<T>>> =
        views.iter().zip(&rows).map(|(v, r)| r.is_none().then(|| v.gather_map(|x| x))).collect();
    let pick = |i: usize| match (&rows[i], &owned[i]) {
        (Some((data, l)), _) => (wrap(data), Some(*l)),
        (None, Some(o)) => (wrap(o), None),
        (None, None) => unreachable!("a view without rows was gathered"),
    };
    let ((q, ql), (k, kl), (v, vl)) = (pick(0), pick(1), pick(2));
    let layouts = Layouts { q: ql, k: kl, v: vl };
    backend.forward(&AttnArgs::new_strided(problem, q, k, v, PairData::default(), layouts)?, want_lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// q, k, v shapes and a fragment of the error.
    type ShapeCase<'a> = (&'a [usize], &'a [usize], &'a [usize], &'a str);

    /// Each bad shape triple and a fragment its error must contain.
    #[test]
    fn problem_from_shapes_names_the_mismatch() {
        let p = problem_from_shapes(&[2, 4, 10, 8], &[2, 2, 12, 8], &[2, 2, 12, 8]).unwrap();
        assert_eq!((p.batch, p.heads, p.kv_heads, p.seq_q, p.seq_k, p.head_dim), (2, 4, 2, 10, 12, 8));
        let q = [1usize, 4, 10, 8];
        let cases: [ShapeCase<'_>; 6] = [
            (&q, &[1, 4, 10], &[1, 4, 10], "same rank"),
            (&[4, 8], &[4, 8], &[4, 8], "expected (B, H, N, D)"),
            (&q, &[2, 4, 10, 8], &[2, 4, 10, 8], "batch differs"),
            (&q, &[1, 4, 10, 16], &[1, 4, 10, 16], "head dim differs"),
            (&q, &[1, 3, 10, 8], &[1, 3, 10, 8], "multiple of H_kv"),
            (&q, &[1, 4, 10, 8], &[1, 4, 11, 8], "must match"),
        ];
        for (q, k, v, want) in cases {
            let err = problem_from_shapes(q, k, v).expect_err(want).to_string();
            assert!(err.contains(want), "`{err}` lacks `{want}`");
        }
    }
}
