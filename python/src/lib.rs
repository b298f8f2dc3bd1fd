//! Python bindings of attnkit: `attnkit.attention(q, k, v, ...)` on NumPy arrays and CPU
//! PyTorch tensors, and `attnkit.backends()`.
//!
//! Inputs are borrowed without copying ([`arrays`]) when they are contiguous (B, H, N, D) or
//! (H, N, D); other strides are gathered once into a contiguous buffer. Dtypes: float32,
//! float16, and bfloat16 (torch only; NumPy has none). The output and LSE are float32, as for
//! every attnkit backend, returned as NumPy arrays (as torch tensors for torch inputs) that own
//! the kernel's buffer: no copy on the way out either. Kernels run with the GIL released.
//!
//! Errors: attnkit's shape, argument, routing and KV-cache errors become `ValueError`, capacity and
//! machine errors (memory budget, unavailable backend, CUDA) `RuntimeError`, each with
//! attnkit's message; a non-array argument is a `TypeError`.

mod arrays;
mod flash;
mod kvcache;
mod layout;

use arrays::{Borrowed, is_torch};
use attnkit::interop::strided::View4;
use attnkit::interop::{AttnOptions, common_dtype, compute};
use attnkit::{
    Attention, AttnArgs, AttnError, AttnOutput, BackendOptions, DType, PairData, Problem, TensorRef, Window,
};
use half::{bf16, f16};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) fn to_py(e: AttnError) -> PyErr {
    match e {
        AttnError::Shape(_)
        | AttnError::InvalidArgument(_)
        | AttnError::Unsupported { .. }
        | AttnError::UnknownBackend { .. }
        | AttnError::KvCache(_)
        | AttnError::Strides { .. } => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Backends built once per (name, options): `auto` builds every candidate, which is not free.
static BACKENDS: Mutex<Option<HashMap<String, Arc<dyn Attention>>>> = Mutex::new(None);

pub(crate) fn cached_backend(opts: &AttnOptions) -> Result<Arc<dyn Attention>, AttnError> {
    let key = format!("{}|{:?}", opts.backend, opts.backend_options);
    let mut guard = BACKENDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(b) = map.get(&key) {
        return Ok(b.clone());
    }
    let b: Arc<dyn Attention> = Arc::from(opts.build_backend()?);
    map.insert(key, b.clone());
    Ok(b)
}

/// Keyword options → [`AttnOptions`]; unknown keywords are refused by name.
fn options(
    backend: &str,
    causal: bool,
    window: Option<(i64, i64)>,
    scale: Option<f32>,
    extra: Option<&Bound<'_, PyDict>>,
) -> PyResult<AttnOptions> {
    let mut bo = BackendOptions::default();
    for (k, v) in extra.into_iter().flat_map(|d| d.iter()) {
        let key: String = k.extract()?;
        match key.as_str() {
            "proj_dim" => bo.proj_dim = v.extract()?,
            "features" => bo.features = v.extract()?,
            "block_size" => bo.block_size = v.extract()?,
            "seed" => bo.seed = v.extract()?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown backend option `{other}`; expected proj_dim, features, block_size or seed"
                )));
            }
        }
    }
    let mut o = AttnOptions { backend: backend.to_string(), backend_options: bo, causal, ..Default::default() };
    if let Some((l, r)) = window {
        o.window = Window::new(l, r);
    }
    o.scale = scale;
    Ok(o)
}

/// Q, K, V contiguous in (B, H, N, D): borrowed from Python when they already are.
pub(crate) enum Contig<'a> {
    F32(Cow<'a, [f32]>),
    F16(Cow<'a, [f16]>),
    BF16(Cow<'a, [bf16]>),
}

impl Contig<'_> {
    pub(crate) fn as_ref(&self) -> TensorRef<'_> {
        match self {
            Contig::F32(c) => TensorRef::F32(c),
            Contig::F16(c) => TensorRef::F16(c),
            Contig::BF16(c) => TensorRef::BF16(c),
        }
    }
}

fn contiguous<'a>(name: &str, b: &'a Borrowed<'_>) -> PyResult<([usize; 4], Contig<'a>)> {
    fn go<'a, T: Copy>(name: &str, b: &'a Borrowed<'_>) -> PyResult<([usize; 4], Cow<'a, [T]>)> {
        let v: View4<'a, T> = b.view(name)?;
        Ok((v.shape(), v.to_contiguous()))
    }
    Ok(match b.dtype {
        DType::F32 => go(name, b).map(|(s, c)| (s, Contig::F32(c)))?,
        DType::F16 => go(name, b).map(|(s, c)| (s, Contig::F16(c)))?,
        DType::BF16 => go(name, b).map(|(s, c)| (s, Contig::BF16(c)))?,
    })
}

/// Everything one call needs, validated, with the inputs laid out for the kernel.
struct Prepared<'a> {
    problem: Problem,
    backend: Arc<dyn Attention>,
    q: Contig<'a>,
    k: Contig<'a>,
    v: Contig<'a>,
}

fn prepare<'a>(
    opts: &AttnOptions,
    q: &'a Borrowed<'_>,
    k: &'a Borrowed<'_>,
    v: &'a Borrowed<'_>,
) -> PyResult<Prepared<'a>> {
    let dtype = common_dtype(q.dtype, k.dtype, v.dtype).map_err(to_py)?;
    // Shape checks (rank, B, D, H_kv) before any copy.
    attnkit::interop::problem_from_shapes(&q.shape, &k.shape, &v.shape).map_err(to_py)?;
    let (qs, qc) = contiguous("q", q)?;
    let (ks, kc) = contiguous("k", k)?;
    let (vs, vc) = contiguous("v", v)?;
    let problem = opts.problem(qs, ks, vs, dtype).map_err(to_py)?;
    let backend = cached_backend(opts).map_err(to_py)?;
    Ok(Prepared { problem, backend, q: qc, k: kc, v: vc })
}

impl Prepared<'_> {
    fn run(&self, want_lse: bool) -> Result<AttnOutput, AttnError> {
        compute(&*self.backend, &self.problem, self.q.as_ref(), self.k.as_ref(), self.v.as_ref(), want_lse)
    }

    /// [`Prepared::run`] with the bias/mask data the problem declares.
    fn run_with(&self, want_lse: bool, pair: PairData<'_>) -> Result<AttnOutput, AttnError> {
        let args = AttnArgs::new_with(&self.problem, self.q.as_ref(), self.k.as_ref(), self.v.as_ref(), pair)?;
        self.backend.forward(&args, want_lse)
    }
}

/// A float32 buffer NumPy wraps without copying (through `__array_interface__`).
#[pyclass(frozen)]
struct F32Buffer {
    data: Vec<f32>,
    shape: Vec<usize>,
}

#[pymethods]
impl F32Buffer {
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", "<f4")?;
        d.set_item("data", (self.data.as_ptr() as usize, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }
}

/// Wraps `data` as a NumPy array of `shape` (a torch tensor when `torch` is set).
fn wrap(py: Python<'_>, data: Vec<f32>, shape: Vec<usize>, torch: bool) -> PyResult<Py<PyAny>> {
    let buf = Bound::new(py, F32Buffer { data, shape })?;
    let arr = py.import("numpy")?.call_method1("asarray", (buf,))?;
    if torch {
        return Ok(py.import("torch")?.call_method1("from_numpy", (arr,))?.unbind());
    }
    Ok(arr.unbind())
}

/// Scaled dot-product attention over q (B, H, N_q, D) and k, v (B, H_kv, N_k, D), or all three
/// (H, N, D). H_kv comes from the shapes (GQA/MQA). Returns O (float32, shape of q), and with
/// `return_lse=True` the pair (O, LSE) with LSE of shape q.shape[:-1].
///
/// Modifiers (attnkit's semantics, FlashAttention's names): `alibi_slopes` (H,) or (B, H);
/// `softcap` c > 0; `sinks` (H,); `cu_seqlens_q`/`cu_seqlens_k` (packed varlen, B = 1);
/// `seqused_k` (B,); `bias` (float, (B|1, H|1, N_q, N_k), added to the scores) and `mask`
/// (bool, same shape, True = attend), both contiguous.
#[pyfunction]
#[pyo3(signature = (q, k, v, *, backend="auto", causal=false, window=None, scale=None, return_lse=false,
    alibi_slopes=None, softcap=None, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None,
    bias=None, mask=None, **backend_options))]
#[allow(clippy::too_many_arguments)]
fn attention(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    backend: &str,
    causal: bool,
    window: Option<(i64, i64)>,
    scale: Option<f32>,
    return_lse: bool,
    alibi_slopes: Option<Vec<f32>>,
    softcap: Option<f32>,
    sinks: Option<Vec<f32>>,
    cu_seqlens_q: Option<Vec<usize>>,
    cu_seqlens_k: Option<Vec<usize>>,
    seqused_k: Option<Vec<usize>>,
    bias: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
    backend_options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    let opts = options(backend, causal, window, scale, backend_options)?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        // Its output would silently leave the autograd graph: refuse, naming the door that records it.
        if is_torch(t)? && t.getattr(intern!(py, "requires_grad")).and_then(|r| r.extract::<bool>()).unwrap_or(false) {
            return Err(PyValueError::new_err(format!(
                "{name} requires grad, and attnkit.attention is not differentiable: use \
                 attnkit.scaled_dot_product_attention (the same (B, H, N, D) layout) or \
                 attnkit.flash_attn.flash_attn_func, or pass {name}.detach()"
            )));
        }
    }
    let (qb, kb, vb) = (Borrowed::from_object("q", q)?, Borrowed::from_object("k", k)?, Borrowed::from_object("v", v)?);
    let bb = bias.map(|b| Borrowed::from_object("bias", b)).transpose()?;
    let mut prepared = prepare(&opts, &qb, &kb, &vb)?;
    if softcap == Some(0.0) {
        return Err(PyValueError::new_err("softcap must be > 0 (omit it for none); got 0"));
    }
    let p = &mut prepared.problem;
    flash::apply_mods(p, softcap.unwrap_or(0.0), alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k)
        .map_err(to_py)?;
    let (bias, mask) = flash::pair(p, bb.as_ref(), mask)?;
    let prepared = prepared;
    let out = py.detach(|| prepared.run_with(return_lse, PairData { bias, mask })).map_err(to_py)?;
    let torch = is_torch(q)?;
    let o = wrap(py, out.out, qb.shape.clone(), torch)?;
    match out.lse {
        Some(lse) if return_lse => {
            let l = wrap(py, lse, qb.shape[..qb.shape.len() - 1].to_vec(), torch)?;
            Ok((o, l).into_pyobject(py)?.into_any().unbind())
        }
        _ => Ok(o),
    }
}

/// Seconds per call of the same computation as `attention(...)` timed inside Rust (no Python
/// between calls): `reps` timings, for measuring the bindings' overhead (python/bench.py).
#[pyfunction]
#[pyo3(signature = (q, k, v, *, reps, backend="auto", causal=false, window=None, scale=None))]
#[allow(clippy::too_many_arguments)]
fn _time_in_rust(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    reps: usize,
    backend: &str,
    causal: bool,
    window: Option<(i64, i64)>,
    scale: Option<f32>,
) -> PyResult<Vec<f64>> {
    let opts = options(backend, causal, window, scale, None)?;
    let (qb, kb, vb) = (Borrowed::from_object("q", q)?, Borrowed::from_object("k", k)?, Borrowed::from_object("v", v)?);
    let prepared = prepare(&opts, &qb, &kb, &vb)?;
    py.detach(|| {
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                prepared.run(false).map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<Vec<f64>, AttnError>>()
    })
    .map_err(to_py)
}

/// Every registered backend as a dict: name, exactness ("exact"/"approx"), device, available,
/// and the reason when it is not available.
#[pyfunction]
fn backends(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for b in attnkit::list_backends() {
        let d = PyDict::new(py);
        d.set_item("name", &b.name)?;
        d.set_item("exactness", b.exactness.to_string())?;
        d.set_item("device", b.device.to_string())?;
        d.set_item("available", b.unavailable_reason.is_none())?;
        d.set_item("reason", b.unavailable_reason)?;
        list.append(d)?;
    }
    Ok(list)
}

#[pymodule]
#[pyo3(name = "_attnkit")]
fn attnkit_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(flash::_fwd, m)?)?;
    m.add_function(wrap_pyfunction!(flash::_bwd, m)?)?;
    m.add_function(wrap_pyfunction!(kvcache::_kvcache_paged, m)?)?;
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(_time_in_rust, m)?)?;
    m.add_class::<F32Buffer>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
