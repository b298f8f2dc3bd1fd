//! candle door (feature `candle`): [`attention`] runs any attnkit backend on candle CPU tensors
//! as a candle `CustomOp3`.
//!
//! Inputs: f32, f16 or bf16 tensors on the CPU device, all one dtype, in (B, H, N, D) or
//! (B, N, H, D) ([`AttnOptions::layout`]); q is (·, H, N_q, D), k and v share (·, H_kv, N_k, D)
//! with H a multiple of H_kv. Any strides and offsets candle allows (transposes, narrows) are
//! read in place: a (B, H, N, D) input that is contiguous in that order is passed to the kernel
//! without a copy, anything else is gathered once into a contiguous buffer (O(N·D), against the
//! kernel's O(N²·D)). The output has the layout and dtype of the inputs; it is computed in f32
//! like every attnkit backend and rounded once at the end.
//!
//! Differentiable: when any input tracks gradients (`Tensor::track_op`), the op goes through
//! `apply_op3` and keeps the forward's f32 O and LSE (O(N·D)) for its `bwd`, which runs the
//! backend's backward ([`crate::Attention::backward`]) and returns dQ, dK, dV in the inputs'
//! dtype and layout. Without a tracked input it is `apply_op3_no_bwd` and saves nothing. A
//! backend without a backward (the approximations) fails in `bwd` with the reason.
//!
//! Paged decode (a KV cache in candle tensors or an attnkit `KvCache`): [`paged_attention`]
//! and [`kvcache_attention`] (`interop/candle_paged.rs`).
//!
//! Caveats: CPU only (a CUDA or Metal tensor gets an error naming its device). Measured speed
//! against candle-nn's CPU attention: benches/candle.rs, figures in the README.

pub use super::candle_paged::{kvcache_attention, paged_attention};
use super::strided::{View4, contiguous_strides};
use super::{AttnOptions, Layout, common_dtype, compute_views};
use crate::attention::Attention;
use crate::tensor::TensorRef;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType as CDType, Error, Layout as CLayout, Result, Shape, Tensor};
use half::{bf16, f16};
use std::sync::Mutex;

/// Attention over candle tensors: `softmax(scale · q kᵀ + mask) v` per head with the options'
/// backend, mask and scale. See the module docs for shapes and layouts.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttnOptions) -> Result<Tensor> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if !t.device().is_cpu() {
            return Err(Error::Msg(format!(
                "attnkit::candle::attention takes CPU tensors; {name} is on {:?}",
                t.device().location()
            )));
        }
        if t.rank() != 4 {
            return Err(Error::Msg(format!(
                "{name} has shape {:?}; expected rank 4 in the {:?} layout",
                t.dims(),
                opts.layout
            )));
        }
    }
    let backend = opts.build_backend().map_err(Error::wrap)?;
    let train = [q, k, v].iter().any(|t| t.track_op());
    let op = AttnOp { opts: opts.clone(), backend, saved: train.then(|| Mutex::new(None)) };
    if train { q.apply_op3(k, v, op) } else { q.apply_op3_no_bwd(k, v, &op) }
}

struct AttnOp {
    opts: AttnOptions,
    backend: Box<dyn Attention>,
    /// The forward's O and LSE, kept for `bwd` when training.
    saved: Option<Mutex<Option<SavedForward>>>,
}

/// f32 O (B, H, N_q, D) and LSE (B, H, N_q) of the forward.
type SavedForward = (Vec<f32>, Vec<f32>);

/// The element types attnkit reads, with candle's storage variant for each.
trait Elem: Copy {
    fn tensor_ref(s: &[Self]) -> TensorRef<'_>;
    fn storage(out: Vec<f32>, layout: Layout, bhnd: [usize; 4]) -> CpuStorage;
}

/// The f32 output in `layout`, each element converted by `f` (one pass; none for f32 BHND).
fn arrange<T>(out: Vec<f32>, layout: Layout, bhnd: [usize; 4], f: impl Fn(f32) -> T) -> Vec<T> {
    // `out` has exactly prod(bhnd) elements (the backend contract), so the view is in range.
    let view = View4::new("out", &out, 0, bhnd, contiguous_strides(bhnd)).expect("output matches its shape");
    view.permuted(layout.to_bhnd()).gather_map(f)
}

impl Elem for f32 {
    fn tensor_ref(s: &[Self]) -> TensorRef<'_> {
        TensorRef::F32(s)
    }
    fn storage(out: Vec<f32>, layout: Layout, bhnd: [usize; 4]) -> CpuStorage {
        match layout {
            Layout::Bhnd => CpuStorage::F32(out),
            Layout::Bnhd => CpuStorage::F32(arrange(out, layout, bhnd, |x| x)),
        }
    }
}
impl Elem for f16 {
    fn tensor_ref(s: &[Self]) -> TensorRef<'_> {
        TensorRef::F16(s)
    }
    fn storage(out: Vec<f32>, layout: Layout, bhnd: [usize; 4]) -> CpuStorage {
        CpuStorage::F16(arrange(out, layout, bhnd, f16::from_f32))
    }
}
impl Elem for bf16 {
    fn tensor_ref(s: &[Self]) -> TensorRef<'_> {
        TensorRef::BF16(s)
    }
    fn storage(out: Vec<f32>, layout: Layout, bhnd: [usize; 4]) -> CpuStorage {
        CpuStorage::BF16(arrange(out, layout, bhnd, bf16::from_f32))
    }
}

impl AttnOp {
    /// A (B, H, N, D) view of one input, however candle laid it out.
    fn view<'s, T: Copy>(&self, name: &str, data: &'s [T], l: &CLayout) -> Result<View4<'s, T>> {
        let shape: [usize; 4] = l.dims().try_into().map_err(|_| Error::Msg(format!("{name} is not rank 4")))?;
        let strides: [usize; 4] = l.stride().try_into().map_err(|_| Error::Msg(format!("{name} is not rank 4")))?;
        let view = View4::new(name, data, l.start_offset(), shape, strides.map(|s| s as isize)).map_err(Error::wrap)?;
        Ok(view.permuted(self.opts.layout.to_bhnd()))
    }

    fn run<T: Elem>(&self, s: [&[T]; 3], l: [&CLayout; 3], dtype: crate::DType) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (self.view("q", s[0], l[0])?, self.view("k", s[1], l[1])?, self.view("v", s[2], l[2])?);
        let p = self.opts.problem(q.shape(), k.shape(), v.shape(), dtype).map_err(Error::wrap)?;
        let want_lse = self.saved.is_some();
        let out = compute_views(&*self.backend, &p, [q, k, v], want_lse, T::tensor_ref).map_err(Error::wrap)?;
        if let (Some(saved), Some(lse)) = (&self.saved, &out.lse) {
            *saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((out.out.clone(), lse.clone()));
        }
        let bhnd = q.shape();
        let dims: Vec<usize> = self.opts.layout.to_bhnd().iter().map(|&a| bhnd[a]).collect();
        Ok((T::storage(out.out, self.opts.layout, bhnd), Shape::from(dims)))
    }
}

fn attnkit_dtype(d: CDType) -> Result<crate::DType> {
    match d {
        CDType::F32 => Ok(crate::DType::F32),
        CDType::F16 => Ok(crate::DType::F16),
        CDType::BF16 => Ok(crate::DType::BF16),
        other => Err(Error::Msg(format!("attnkit takes f32, f16 or bf16 tensors, got {other:?}"))),
    }
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "attnkit-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CLayout,
        s2: &CpuStorage,
        l2: &CLayout,
        s3: &CpuStorage,
        l3: &CLayout,
    ) -> Result<(CpuStorage, Shape)> {
        let [d1, d2, d3] = [s1, s2, s3].map(|s| attnkit_dtype(s.dtype()));
        let dtype = common_dtype(d1?, d2?, d3?).map_err(Error::wrap)?;
        let l = [l1, l2, l3];
        match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => self.run([q, k, v], l, dtype),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => self.run([q, k, v], l, dtype),
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => self.run([q, k, v], l, dtype),
            _ => unreachable!("common_dtype checked that all three are one of f32, f16, bf16"),
        }
    }

    /// dQ, dK, dV from the saved O and LSE: the inputs and dO are widened to f32 in (B, H, N, D)
    /// (exact for f16/bf16), the backend's backward runs in f32, and each gradient goes back to
    /// its input's dtype and layout.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = &self.saved else {
            return Err(Error::Msg("attnkit::candle::attention: bwd without a saved forward".into()));
        };
        let guard = saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some((out, lse)) = guard.as_ref() else {
            return Err(Error::Msg("attnkit::candle::attention: bwd before the forward ran".into()));
        };
        let bhnd = |t: &Tensor| -> Result<(Vec<f32>, [usize; 4])> {
            let t = match self.opts.layout {
                Layout::Bhnd => t.clone(),
                Layout::Bnhd => t.transpose(1, 2)?,
            };
            let dims: [usize; 4] = t.dims().try_into().map_err(|_| Error::Msg("not rank 4".into()))?;
            Ok((t.to_dtype(CDType::F32)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?, dims))
        };
        let ((qf, qs), (kf, ks), (vf, vs), (go, _)) = (bhnd(q)?, bhnd(k)?, bhnd(v)?, bhnd(grad)?);
        let p = self.opts.problem(qs, ks, vs, crate::DType::F32).map_err(Error::wrap)?;
        let args = crate::AttnArgs::new(&p, &qf, &kf, &vf).map_err(Error::wrap)?;
        let g = self.backend.backward(&args, out, lse, &go, false).map_err(Error::wrap)?;
        let back = |data: Vec<f32>, dims: [usize; 4], like: &Tensor| -> Result<Tensor> {
            let t = Tensor::from_vec(data, dims.to_vec(), like.device())?;
            let t = match self.opts.layout {
                Layout::Bhnd => t,
                Layout::Bnhd => t.transpose(1, 2)?.contiguous()?,
            };
            t.to_dtype(like.dtype())
        };
        Ok((Some(back(g.dq, qs, q)?), Some(back(g.dk, ks, k)?), Some(back(g.dv, vs, v)?)))
    }
}
