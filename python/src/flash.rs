//! FlashAttention's calling convention for the Python package (`attnkit._attnkit._fwd` and
//! `_bwd`, used by `attnkit.flash_attn_interface` and `attnkit.scaled_dot_product_attention`).
//!
//! Both write into output arrays the caller allocated (torch.empty in the Python layer, so a
//! `torch.library.custom_op` returns fresh tensors of the input's dtype), take Q, K, V in
//! (B, N, H, D) (`bnhd=True`, FlashAttention's order) or (B, H, N, D), with any strides, and
//! run one backend of attnkit with every modifier FlashAttention has: causal (bottom-right),
//! windows, softcap, ALiBi, packed varlen (`cu_seqlens_*`), `seqused_k`, sinks, an additive
//! bias and a boolean mask (SDPA's `attn_mask`).
//!
//! Layout: the forward passes Q, K, V whose head-dim axis is contiguous — (B, N, H, D), (B, H,
//! N, D), transposes and narrows of them, a KV cache read up to `seqused_k` — to the kernels in
//! place as row layouts (`attnkit::row_layout`; backends that do not take strides gather them
//! once at their entry); other strides are moved in one parallel pass ([`crate::layout`]), as
//! are the backward's inputs. The f32 result is moved (and rounded to the input dtype) into
//! `out` in one pass. LSE (f32, (B, H, N_q)) is written in place.
//! Everything after argument parsing runs with the GIL released.
//!
//! Errors: attnkit's typed errors become ValueError/RuntimeError (`crate::to_py`), each naming
//! the offending value; an output that overlaps an input is refused before any work.

use crate::arrays::{Borrowed, overlaps};
use crate::layout::{Elem, Src, copy_into, is_row_major};
use crate::{Contig, cached_backend, to_py};
use attnkit::interop::strided::View4;
use attnkit::interop::{AttnOptions, common_dtype, problem_from_shapes};
use attnkit::{
    AttnArgs, AttnError, DType, GradsMut, Layouts, PairData, PairShape, Problem, RowLayout, Saved, TensorRef, Varlen,
    Window,
};
use half::{bf16, f16};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::borrow::Cow;

/// The modifiers of one call, as the Python layer passes them (a dict with every key).
#[derive(Clone, Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct Mods {
    pub(crate) causal: bool,
    pub(crate) window: (i64, i64),
    pub(crate) scale: Option<f32>,
    pub(crate) softcap: f32,
    pub(crate) alibi_slopes: Option<Vec<f32>>,
    cu_seqlens_q: Option<Vec<usize>>,
    cu_seqlens_k: Option<Vec<usize>>,
    seqused_k: Option<Vec<usize>>,
    sinks: Option<Vec<f32>>,
    backend: String,
}

/// A strided input of any supported dtype.
pub(crate) enum AnySrc<'a> {
    F32(Src<'a, f32>),
    F16(Src<'a, f16>),
    BF16(Src<'a, bf16>),
}

/// An output of any supported dtype, row-major in its own shape.
pub(crate) enum AnyDst<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

pub(crate) fn rank4(name: &str, b: &Borrowed<'_>) -> PyResult<[usize; 4]> {
    <[usize; 4]>::try_from(b.shape.as_slice()).map_err(|_| {
        PyValueError::new_err(format!("{name} has shape {:?}; expected 4 dims (B, N, H, D) or (B, H, N, D)", b.shape))
    })
}

pub(crate) fn src<'a>(name: &str, b: &'a Borrowed<'_>, perm: [usize; 4]) -> PyResult<AnySrc<'a>> {
    fn go<'a, T: Copy>(name: &str, b: &'a Borrowed<'_>, perm: [usize; 4]) -> PyResult<Src<'a, T>> {
        let (data, off) = b.span::<T>(name)?;
        let strides = <[isize; 4]>::try_from(b.strides.as_slice()).map_err(|_| PyValueError::new_err("rank"))?;
        Ok(Src { data, off, strides }.permuted(perm))
    }
    rank4(name, b)?;
    Ok(match b.dtype {
        DType::F32 => AnySrc::F32(go(name, b, perm)?),
        DType::F16 => AnySrc::F16(go(name, b, perm)?),
        DType::BF16 => AnySrc::BF16(go(name, b, perm)?),
    })
}

pub(crate) fn dst<'a>(name: &str, b: &'a mut Borrowed<'_>, want: [usize; 4], dtype: DType) -> PyResult<AnyDst<'a>> {
    if b.shape != want || b.dtype != dtype || !is_row_major(&b.shape, &b.strides) {
        return Err(PyValueError::new_err(format!(
            "{name} must be a contiguous {dtype} array of shape {want:?}; got {:?}",
            b
        )));
    }
    Ok(match dtype {
        DType::F32 => AnyDst::F32(b.span_mut(name)?.0),
        DType::F16 => AnyDst::F16(b.span_mut(name)?.0),
        DType::BF16 => AnyDst::BF16(b.span_mut(name)?.0),
    })
}

/// Contiguous (B, H, N, D) in the input dtype: borrowed when the source already is.
fn contiguous<'a>(s: &AnySrc<'a>, shape: [usize; 4]) -> Contig<'a> {
    fn go<'a, T: Elem>(s: &Src<'a, T>, shape: [usize; 4]) -> Cow<'a, [T]> {
        let n: usize = shape.iter().product();
        if is_row_major(&shape, &s.strides) && s.off + n <= s.data.len() {
            return Cow::Borrowed(&s.data[s.off..s.off + n]);
        }
        let mut v = vec![T::from_f32(0.0); n];
        copy_into(*s, shape, &mut v, |x| x);
        Cow::Owned(v)
    }
    match s {
        AnySrc::F32(s) => Contig::F32(go(s, shape)),
        AnySrc::F16(s) => Contig::F16(go(s, shape)),
        AnySrc::BF16(s) => Contig::BF16(go(s, shape)),
    }
}

/// The source as rows the CPU kernels read in place (a row layout over the buffer from the
/// source's offset) when its head-dim axis is contiguous and no stride is negative — (B, N, H, D)
/// tensors, transposes and narrows of them, a KV cache of any length — else gathered once into
/// contiguous (B, H, N, D) ([`contiguous`]).
fn rows_or_contiguous<'a>(s: &AnySrc<'a>, shape: [usize; 4]) -> (Contig<'a>, Option<RowLayout>) {
    fn go<'a, T: Elem>(s: &Src<'a, T>, shape: [usize; 4]) -> Option<(&'a [T], RowLayout)> {
        View4::new("input", s.data, s.off, shape, s.strides).ok()?.rows()
    }
    let rows = match s {
        AnySrc::F32(x) => go(x, shape).map(|(d, l)| (Contig::F32(Cow::Borrowed(d)), l)),
        AnySrc::F16(x) => go(x, shape).map(|(d, l)| (Contig::F16(Cow::Borrowed(d)), l)),
        AnySrc::BF16(x) => go(x, shape).map(|(d, l)| (Contig::BF16(Cow::Borrowed(d)), l)),
    };
    match rows {
        Some((c, l)) => (c, Some(l)),
        None => (contiguous(s, shape), None),
    }
}

/// Contiguous (B, H, N, D) f32 (O and dO for the backward).
pub(crate) fn f32_contiguous(s: &AnySrc<'_>, shape: [usize; 4]) -> Vec<f32> {
    let mut v = vec![0.0f32; shape.iter().product()];
    match s {
        AnySrc::F32(s) => copy_into(*s, shape, &mut v, |x| x),
        AnySrc::F16(s) => copy_into(*s, shape, &mut v, Elem::to_f32),
        AnySrc::BF16(s) => copy_into(*s, shape, &mut v, Elem::to_f32),
    }
    v
}

/// f32 (B, H, N, D) `data` → `out` (row-major in the caller's axis order `perm`), rounded.
pub(crate) fn write_out(data: &[f32], bhnd: [usize; 4], perm: [usize; 4], out: AnyDst<'_>) {
    let strides = attnkit::interop::strided::contiguous_strides(bhnd);
    let src = Src { data, off: 0, strides }.permuted(perm);
    let shape = perm.map(|a| bhnd[a]);
    match out {
        AnyDst::F32(o) => copy_into(src, shape, o, |x| x),
        AnyDst::F16(o) => copy_into(src, shape, o, f16::from_f32),
        AnyDst::BF16(o) => copy_into(src, shape, o, bf16::from_f32),
    }
}

/// The validated problem of one call.
fn problem(q: [usize; 4], k: [usize; 4], v: [usize; 4], dtype: DType, m: &Mods) -> Result<Problem, AttnError> {
    let mut p = problem_from_shapes(&q, &k, &v)?.with_dtype(dtype).with_causal(m.causal);
    p = p.with_window(Window::new(m.window.0, m.window.1));
    if let Some(s) = m.scale {
        p = p.with_scale(s);
    }
    apply_mods(
        &mut p,
        m.softcap,
        m.alibi_slopes.clone(),
        m.sinks.clone(),
        m.cu_seqlens_q.clone(),
        m.cu_seqlens_k.clone(),
        m.seqused_k.clone(),
    )?;
    p.validate()?;
    Ok(p)
}

/// Sets the shape-free modifiers on `p` (softcap 0 = none), as FlashAttention names them.
pub(crate) fn apply_mods(
    p: &mut Problem,
    softcap: f32,
    alibi_slopes: Option<Vec<f32>>,
    sinks: Option<Vec<f32>>,
    cu_seqlens_q: Option<Vec<usize>>,
    cu_seqlens_k: Option<Vec<usize>>,
    seqused_k: Option<Vec<usize>>,
) -> Result<(), AttnError> {
    p.mods.softcap = (softcap != 0.0).then_some(softcap);
    p.mods.alibi_slopes = alibi_slopes;
    p.mods.sinks = sinks;
    p.mods.seqused_k = seqused_k;
    p.mods.varlen = match (cu_seqlens_q, cu_seqlens_k) {
        (None, None) => None,
        (Some(cu_seqlens_q), Some(cu_seqlens_k)) => Some(Varlen { cu_seqlens_q, cu_seqlens_k }),
        _ => return Err(AttnError::invalid("cu_seqlens_q and cu_seqlens_k must be given together")),
    };
    p.validate()
}

/// Bias and mask data, contiguous (B|1, H|1, N_q, N_k); their shapes go on the problem.
pub(crate) fn pair<'a>(
    p: &mut Problem,
    bias: Option<&'a Borrowed<'_>>,
    mask: Option<&'a Bound<'_, PyAny>>,
) -> PyResult<(Option<TensorRef<'a>>, Option<&'a [bool]>)> {
    let shape_of = |name: &str, shape: &[usize], strides: &[isize]| -> PyResult<PairShape> {
        match *shape {
            [b, h, nq, nk] if nq == p.seq_q && nk == p.seq_k && is_row_major(shape, strides) => {
                Ok(PairShape { batch: b, heads: h })
            }
            _ => Err(PyValueError::new_err(format!(
                "{name} must be contiguous of shape (B|1, H|1, {}, {}); got shape {shape:?}",
                p.seq_q, p.seq_k
            ))),
        }
    };
    let bias = match bias {
        None => None,
        Some(b) => {
            p.mods.bias = Some(shape_of("bias", &b.shape, &b.strides)?);
            Some(match b.dtype {
                DType::F32 => TensorRef::F32(b.span::<f32>("bias")?.0),
                DType::F16 => TensorRef::F16(b.span::<f16>("bias")?.0),
                DType::BF16 => TensorRef::BF16(b.span::<bf16>("bias")?.0),
            })
        }
    };
    let mask = match mask {
        None => None,
        Some(m) => {
            let (data, shape, strides) = crate::arrays::bool_slice("mask", m)?;
            p.mods.mask = Some(shape_of("mask", &shape, &strides)?);
            Some(data)
        }
    };
    p.validate().map_err(to_py)?;
    Ok((bias, mask))
}

/// LSE (f32, B·H·N_q elements, row-major in whatever shape the caller gave it).
fn check_lse(b: &Borrowed<'_>, p: &Problem) -> PyResult<()> {
    if b.dtype != DType::F32 || b.shape.iter().product::<usize>() != p.lse_len() || !is_row_major(&b.shape, &b.strides)
    {
        return Err(PyValueError::new_err(format!(
            "lse must be a contiguous float32 array of {} elements (B={}, H={}, N_q={}); got {b:?}",
            p.lse_len(),
            p.batch,
            p.heads,
            p.seq_q
        )));
    }
    Ok(())
}

pub(crate) fn lse_slice<'a>(b: &'a mut Borrowed<'_>, p: &Problem) -> PyResult<&'a mut [f32]> {
    check_lse(b, p)?;
    Ok(b.span_mut::<f32>("lse")?.0)
}

fn perm_of(bnhd: bool) -> [usize; 4] {
    if bnhd { [0, 2, 1, 3] } else { [0, 1, 2, 3] }
}

/// Forward: writes O (input dtype, q's shape) into `out` and LSE (f32, (B, H, N_q)) into `lse`.
#[pyfunction]
#[pyo3(signature = (q, k, v, out, lse, mods, bnhd=true, bias=None, mask=None))]
#[allow(clippy::too_many_arguments)]
pub fn _fwd(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    lse: &Bound<'_, PyAny>,
    mods: Mods,
    bnhd: bool,
    bias: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let perm = perm_of(bnhd);
    let (qb, kb, vb) = (Borrowed::from_object("q", q)?, Borrowed::from_object("k", k)?, Borrowed::from_object("v", v)?);
    let (mut ob, mut lb) = (Borrowed::from_object("out", out)?, Borrowed::from_object("lse", lse)?);
    let bb = bias.map(|b| Borrowed::from_object("bias", b)).transpose()?;
    let dtype = common_dtype(qb.dtype, kb.dtype, vb.dtype).map_err(to_py)?;
    let [qs, ks, vs] = [("q", &qb), ("k", &kb), ("v", &vb)].map(|(n, b)| rank4(n, b).map(|s| perm.map(|a| s[a])));
    let (qs, ks, vs) = (qs?, ks?, vs?);
    let mut p = problem(qs, ks, vs, dtype, &mods).map_err(to_py)?;
    let (bias_ref, mask_ref) = pair(&mut p, bb.as_ref(), mask)?;
    for (name, o) in [("out", &ob), ("lse", &lb)] {
        if [&qb, &kb, &vb].into_iter().chain(bb.as_ref()).any(|i| overlaps(o, i)) {
            return Err(PyValueError::new_err(format!("{name} overlaps an input; pass a fresh array")));
        }
    }
    let backend = cached_backend(&AttnOptions::default().with_backend(&mods.backend)).map_err(to_py)?;
    let (qsrc, ksrc, vsrc) = (src("q", &qb, perm)?, src("k", &kb, perm)?, src("v", &vb, perm)?);
    let out_dst = dst("out", &mut ob, rank4("q", &qb)?, dtype)?;
    let lse_dst = &mut lse_slice(&mut lb, &p)?[..p.lse_len()];
    py.detach(|| -> Result<(), AttnError> {
        let ((qc, ql), (kc, kl), (vc, vl)) =
            (rows_or_contiguous(&qsrc, qs), rows_or_contiguous(&ksrc, ks), rows_or_contiguous(&vsrc, vs));
        let (pair, layouts) = (PairData { bias: bias_ref, mask: mask_ref }, Layouts { q: ql, k: kl, v: vl });
        let args = AttnArgs::new_strided(&p, qc.as_ref(), kc.as_ref(), vc.as_ref(), pair, layouts)?;
        let mut o32 = vec![0.0f32; p.out_len()];
        backend.forward_into(&args, &mut o32, Some(lse_dst))?;
        write_out(&o32, qs, perm, out_dst);
        Ok(())
    })
    .map_err(to_py)
}

/// Backward: dQ, dK, dV (inputs' dtype and shapes) into `dq`, `dk`, `dv` from the forward's
/// inputs, its `out` and `lse`, and `dout`. Returns dσ (the sinks' gradient) when there are sinks.
#[pyfunction]
#[pyo3(signature = (dout, q, k, v, out, lse, dq, dk, dv, mods, bnhd=true, bias=None, mask=None))]
#[allow(clippy::too_many_arguments)]
pub fn _bwd(
    py: Python<'_>,
    dout: &Bound<'_, PyAny>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    lse: &Bound<'_, PyAny>,
    dq: &Bound<'_, PyAny>,
    dk: &Bound<'_, PyAny>,
    dv: &Bound<'_, PyAny>,
    mods: Mods,
    bnhd: bool,
    bias: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<f32>>> {
    let perm = perm_of(bnhd);
    let ins = [("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse)]
        .map(|(n, o)| Borrowed::from_object(n, o));
    let [dob, qb, kb, vb, ob, lb] = ins;
    let (dob, qb, kb, vb, ob, lb) = (dob?, qb?, kb?, vb?, ob?, lb?);
    let [g0, g1, g2] = [("dq", dq), ("dk", dk), ("dv", dv)].map(|(n, o)| Borrowed::from_object(n, o));
    let (mut g0, mut g1, mut g2) = (g0?, g1?, g2?);
    let bb = bias.map(|b| Borrowed::from_object("bias", b)).transpose()?;
    let dtype = common_dtype(qb.dtype, kb.dtype, vb.dtype).map_err(to_py)?;
    let shapes = [("q", &qb), ("k", &kb), ("v", &vb)].map(|(n, b)| rank4(n, b));
    let [qs0, ks0, vs0] = shapes;
    let (qs0, ks0, vs0) = (qs0?, ks0?, vs0?);
    let (qs, ks, vs) = (perm.map(|a| qs0[a]), perm.map(|a| ks0[a]), perm.map(|a| vs0[a]));
    let mut p = problem(qs, ks, vs, dtype, &mods).map_err(to_py)?;
    let (bias_ref, mask_ref) = pair(&mut p, bb.as_ref(), mask)?;
    for (name, shape, b) in [("dout", qs0, &dob), ("out", qs0, &ob)] {
        if b.shape != shape {
            return Err(PyValueError::new_err(format!("{name} has shape {:?}, expected {shape:?}", b.shape)));
        }
    }
    check_lse(&lb, &p)?;
    let inputs = [&dob, &qb, &kb, &vb, &ob, &lb];
    for g in [&g0, &g1, &g2] {
        if inputs.iter().copied().chain(bb.as_ref()).any(|i| overlaps(g, i)) {
            return Err(PyValueError::new_err("a gradient output overlaps an input; pass fresh arrays"));
        }
    }
    let backend = cached_backend(&AttnOptions::default().with_backend(&mods.backend)).map_err(to_py)?;
    let (dosrc, qsrc, ksrc, vsrc, osrc) = (
        src("dout", &dob, perm)?,
        src("q", &qb, perm)?,
        src("k", &kb, perm)?,
        src("v", &vb, perm)?,
        src("out", &ob, perm)?,
    );
    let lse_data = &lb.span::<f32>("lse")?.0[..p.lse_len()];
    let (dq_dst, dk_dst, dv_dst) =
        (dst("dq", &mut g0, qs0, dtype)?, dst("dk", &mut g1, ks0, dtype)?, dst("dv", &mut g2, vs0, dtype)?);
    py.detach(|| -> Result<Option<Vec<f32>>, AttnError> {
        let (qc, kc, vc) = (contiguous(&qsrc, qs), contiguous(&ksrc, ks), contiguous(&vsrc, vs));
        let (o32, do32) = (f32_contiguous(&osrc, qs), f32_contiguous(&dosrc, qs));
        let args =
            AttnArgs::new_with(&p, qc.as_ref(), kc.as_ref(), vc.as_ref(), PairData { bias: bias_ref, mask: mask_ref })?;
        let mut g = attnkit::Grads::zeros(&p, false);
        let mut gm: GradsMut<'_> = g.as_mut();
        backend.backward_into(&args, &Saved { out: &o32, lse: lse_data, d_out: &do32 }, &mut gm)?;
        write_out(&g.dq, qs, perm, dq_dst);
        write_out(&g.dk, ks, perm, dk_dst);
        write_out(&g.dv, vs, perm, dv_dst);
        Ok(g.dsinks)
    })
    .map_err(to_py)
}
