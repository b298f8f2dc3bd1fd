//! Borrowing array memory from Python without copying: NumPy arrays through
//! `__array_interface__`, PyTorch CPU tensors through `data_ptr()`/`stride()` (about 1 µs, a
//! quarter of what `__dlpack__` costs per tensor), anything else exporting it through DLPack
//! (`__dlpack__`).
//!
//! Both give a data pointer, an element type, a shape and strides; [`Borrowed::view`] turns
//! that into an [`attnkit::interop::strided::View4`] over a slice spanning exactly the elements
//! the strides reach, so the gather (needed only for non-contiguous inputs) runs in safe code.
//! The exporting object (the array, or the DLPack capsule, which holds a reference to the
//! tensor) is kept in `Borrowed::_owner` for as long as the slice is used.
//!
//! Caveat: the kernel runs with the GIL released, like NumPy's own ufuncs. Another Python thread
//! writing into an input during the call is a data race on those floats (as it is for NumPy);
//! one that frees the input's memory (a PyTorch `resize_`) is not guarded against.

use crate::layout::is_row_major;
use attnkit::interop::strided::View4;
use attnkit::{AttnError, DType};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};
use std::ffi::c_void;

/// DLPack's C ABI (dlpack.h, v0.8 "legacy" capsule, which `__dlpack__()` without arguments
/// returns from both NumPy and PyTorch).
#[repr(C)]
struct DlDevice {
    device_type: i32,
    device_id: i32,
}
#[repr(C)]
struct DlDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}
#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device: DlDevice,
    ndim: i32,
    dtype: DlDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}
#[repr(C)]
struct DlManagedTensor {
    dl_tensor: DlTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensor)>,
}

const KDL_CPU: i32 = 1;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;

/// An input's memory as the exporter described it; strides are in elements.
pub struct Borrowed<'py> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    ptr: *const u8,
    /// False for read-only NumPy arrays (outputs must be writable).
    writable: bool,
    /// Keeps the memory alive while `ptr` is used.
    _owner: Bound<'py, PyAny>,
}

fn value_err(e: AttnError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn bad(name: &str, what: String) -> PyErr {
    PyValueError::new_err(format!("{name}: {what}"))
}

fn elem_size(d: DType) -> usize {
    match d {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
    }
}

impl<'py> Borrowed<'py> {
    /// Borrows `obj`'s memory: `__array_interface__` first (NumPy, read-only arrays too),
    /// else `__dlpack__`.
    pub fn from_object(name: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Some(t) = torch_dtypes(obj)? {
            return Self::from_torch(name, obj, t);
        }
        if let Ok(iface) = obj.getattr("__array_interface__") {
            return Self::from_array_interface(name, obj, iface.cast_into::<PyDict>()?);
        }
        if obj.hasattr("__dlpack__")? {
            let capsule = obj.call_method0("__dlpack__")?;
            return Self::from_dlpack(name, capsule);
        }
        Err(PyTypeError::new_err(format!(
            "{name} is a {}, not an array: pass a NumPy array or a CPU torch.Tensor",
            obj.get_type().name()?
        )))
    }

    fn from_array_interface(name: &str, obj: &Bound<'py, PyAny>, d: Bound<'py, PyDict>) -> PyResult<Self> {
        let item = |k: &str| -> PyResult<Bound<'py, PyAny>> {
            d.get_item(k)?.ok_or_else(|| bad(name, format!("__array_interface__ lacks `{k}`")))
        };
        let typestr: String = item("typestr")?.extract()?;
        let dtype = match typestr.as_str() {
            "<f4" | "=f4" => DType::F32,
            "<f2" | "=f2" => DType::F16,
            t => {
                return Err(bad(
                    name,
                    format!(
                        "dtype {t} is not supported; attnkit takes float32 or float16 arrays (or bfloat16 torch tensors)"
                    ),
                ));
            }
        };
        if d.get_item("mask")?.is_some_and(|m| !m.is_none()) {
            return Err(bad(name, "masked arrays are not supported".into()));
        }
        let shape: Vec<usize> = item("shape")?.extract()?;
        let (addr, readonly): (usize, bool) = item("data")?.extract()?;
        let strides = match d.get_item("strides")?.filter(|s| !s.is_none()) {
            None => c_strides(&shape),
            Some(s) => {
                let bytes: Vec<isize> = s.extract()?;
                let size = elem_size(dtype) as isize;
                if bytes.iter().any(|b| b % size != 0) {
                    return Err(bad(
                        name,
                        format!("byte strides {bytes:?} are not multiples of the element size {size}"),
                    ));
                }
                bytes.iter().map(|b| b / size).collect()
            }
        };
        Ok(Borrowed { dtype, shape, strides, ptr: addr as *const u8, writable: !readonly, _owner: obj.clone() })
    }

    fn from_dlpack(name: &str, capsule: Bound<'py, PyAny>) -> PyResult<Self> {
        let cap = capsule.cast::<PyCapsule>()?;
        let ptr = cap.pointer_checked(Some(c"dltensor"))?;
        // SAFETY: a capsule named "dltensor" holds a DLManagedTensor (the DLPack protocol), which
        // stays valid until the capsule is consumed or destroyed; we neither consume it (the name
        // stays "dltensor", so its destructor frees the tensor) nor let it go before the last use
        // of the data, since the capsule is kept in `_owner`. Shape and strides are read here,
        // once, into owned vectors.
        let t = unsafe { &ptr.cast::<DlManagedTensor>().as_ref().dl_tensor };
        if t.device.device_type != KDL_CPU {
            return Err(bad(
                name,
                format!("is on DLPack device type {}; attnkit takes CPU tensors", t.device.device_type),
            ));
        }
        let dtype = match (t.dtype.code, t.dtype.bits, t.dtype.lanes) {
            (KDL_FLOAT, 32, 1) => DType::F32,
            (KDL_FLOAT, 16, 1) => DType::F16,
            (KDL_BFLOAT, 16, 1) => DType::BF16,
            (c, b, l) => {
                let kind = match c {
                    0 => "int",
                    1 => "uint",
                    KDL_FLOAT => "float",
                    _ => "type",
                };
                return Err(bad(
                    name,
                    format!("dtype {kind}{b} (x{l}) is not supported; attnkit takes float32, float16 or bfloat16"),
                ));
            }
        };
        let ndim = usize::try_from(t.ndim).map_err(|_| bad(name, format!("negative ndim {}", t.ndim)))?;
        let read = |p: *const i64| -> Vec<i64> {
            if ndim == 0 || p.is_null() {
                return Vec::new();
            }
            // SAFETY: DLPack gives `ndim` entries at `shape` (and at `strides` when non-null).
            unsafe { std::slice::from_raw_parts(p, ndim) }.to_vec()
        };
        let dims = read(t.shape);
        if dims.iter().any(|&d| d < 0) {
            return Err(bad(name, format!("negative dimension in shape {dims:?}")));
        }
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let strides =
            if t.strides.is_null() { c_strides(&shape) } else { read(t.strides).iter().map(|&s| s as isize).collect() };
        let base = (t.data as *const u8).wrapping_add(t.byte_offset as usize);
        Ok(Borrowed { dtype, shape, strides, ptr: base, writable: true, _owner: capsule })
    }

    /// A torch.Tensor through its own accessors: `is_cpu`, `dtype`, `shape`, `stride()`,
    /// `data_ptr()` (which already includes the storage offset).
    fn from_torch(name: &str, obj: &Bound<'py, PyAny>, t: &TorchDtypes) -> PyResult<Self> {
        if !obj.getattr(intern!(obj.py(), "is_cpu"))?.extract::<bool>()? {
            return Err(bad(name, format!("is on {}; attnkit takes CPU tensors", obj.getattr("device")?)));
        }
        let dt = obj.getattr(intern!(obj.py(), "dtype"))?;
        let dtype = if dt.is(&t.f32) {
            DType::F32
        } else if dt.is(&t.f16) {
            DType::F16
        } else if dt.is(&t.bf16) {
            DType::BF16
        } else {
            return Err(bad(
                name,
                format!("dtype {dt} is not supported; attnkit takes float32, float16 or bfloat16 tensors"),
            ));
        };
        let shape: Vec<usize> = obj.getattr(intern!(obj.py(), "shape"))?.extract()?;
        let strides: Vec<isize> = obj.call_method0(intern!(obj.py(), "stride"))?.extract()?;
        let addr: usize = obj.call_method0(intern!(obj.py(), "data_ptr"))?.extract()?;
        Ok(Borrowed { dtype, shape, strides, ptr: addr as *const u8, writable: true, _owner: obj.clone() })
    }

    /// The memory the strides reach: the slice from the lowest to the highest addressed
    /// element, and the offset of element (0, ..., 0) in it. Empty shapes give an empty slice.
    pub fn span<T>(&self, name: &str) -> PyResult<(&[T], usize)> {
        let (start, len, off) = self.bounds::<T>(name)?;
        // SAFETY: the exporter promises that every element its shape and strides address is
        // valid, initialized memory of this dtype (checked: T has its size); [start, start+len)
        // is exactly the span from the lowest to the highest such element, and `_owner` keeps
        // it alive for `'_`.
        Ok((unsafe { std::slice::from_raw_parts(start, len) }, off))
    }

    /// [`Borrowed::span`] for writing. The caller must check that the span overlaps no other
    /// span it reads in the same call ([`overlaps`]).
    pub fn span_mut<T>(&mut self, name: &str) -> PyResult<(&mut [T], usize)> {
        if !self.writable {
            return Err(bad(name, "is read-only; outputs must be writable".into()));
        }
        let (start, len, off) = self.bounds::<T>(name)?;
        // SAFETY: as in `span`; the exporter handed us writable memory (NumPy's read-only flag
        // is checked above, torch tensors are writable), `&mut self` keeps this the only slice
        // made from this object, and callers check it against the inputs' spans.
        Ok((unsafe { std::slice::from_raw_parts_mut(start as *mut T, len) }, off))
    }

    /// Byte range [lo, hi) the strides reach.
    pub fn byte_range(&self) -> (usize, usize) {
        let size = elem_size(self.dtype) as isize;
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            let reach = (n as isize - 1).saturating_mul(s);
            if reach < 0 { lo += reach } else { hi += reach }
        }
        let base = self.ptr as isize;
        ((base + lo * size) as usize, (base + (hi + 1) * size) as usize)
    }

    fn bounds<T>(&self, name: &str) -> PyResult<(*const T, usize, usize)> {
        if std::mem::size_of::<T>() != elem_size(self.dtype) {
            return Err(bad(name, format!("internal: element size mismatch for {}", self.dtype)));
        }
        if self.shape.contains(&0) {
            return Ok((std::ptr::NonNull::<T>::dangling().as_ptr(), 0, 0));
        }
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            let reach = (n as isize - 1).checked_mul(s).ok_or_else(|| bad(name, "strides overflow".into()))?;
            let side = if reach < 0 { &mut lo } else { &mut hi };
            *side = side.checked_add(reach).ok_or_else(|| bad(name, "strides overflow".into()))?;
        }
        let start = self.ptr.wrapping_offset(lo * std::mem::size_of::<T>() as isize) as *const T;
        if !start.is_aligned() {
            return Err(bad(name, "data is not aligned to its element size".into()));
        }
        Ok((start, (hi - lo + 1) as usize, (-lo) as usize))
    }

    /// The (B, H, N, D) view (rank 3 is (H, N, D) with B = 1) over exactly the memory the
    /// strides reach. Shape errors carry attnkit's message.
    pub fn view<T: Copy>(&self, name: &str) -> PyResult<View4<'_, T>> {
        let (shape, strides): ([usize; 4], [isize; 4]) = match (self.shape.as_slice(), self.strides.as_slice()) {
            (&[b, h, n, d], &[sb, sh, sn, sd]) => ([b, h, n, d], [sb, sh, sn, sd]),
            (&[h, n, d], &[sh, sn, sd]) => ([1, h, n, d], [0, sh, sn, sd]),
            _ => {
                return Err(value_err(AttnError::shape(format!(
                    "{name} has shape {:?}; expected (B, H, N, D) or (H, N, D)",
                    self.shape
                ))));
            }
        };
        if shape.contains(&0) {
            return Err(value_err(AttnError::shape(format!(
                "{name} has an empty dimension in shape {:?}",
                self.shape
            ))));
        }
        let (data, off) = self.span::<T>(name)?;
        View4::new(name, data, off, shape, strides).map_err(value_err)
    }
}

/// Row-major strides (elements) of `shape`.
fn c_strides(shape: &[usize]) -> Vec<isize> {
    let mut s = vec![1isize; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1] as isize;
    }
    s
}

/// torch's dtype objects, looked up once (compared by identity).
pub struct TorchDtypes {
    f32: Py<PyAny>,
    f16: Py<PyAny>,
    bf16: Py<PyAny>,
    pub bool_: Py<PyAny>,
    /// `torch.Tensor` itself: an object of exactly this type is a tensor without the module
    /// name and attribute checks (about 1 µs a tensor, measured at N=16).
    tensor: Py<PyAny>,
}

static TORCH: PyOnceLock<TorchDtypes> = PyOnceLock::new();

/// torch's dtypes when `obj` is a torch.Tensor, else None (torch is never imported here unless
/// a tensor from it was passed).
pub fn torch_dtypes<'a>(obj: &Bound<'a, PyAny>) -> PyResult<Option<&'a TorchDtypes>> {
    let py = obj.py();
    if let Some(t) = TORCH.get(py)
        && obj.get_type().is(t.tensor.bind(py))
    {
        return Ok(Some(t));
    }
    if !is_torch(obj)? || !obj.hasattr(intern!(obj.py(), "data_ptr"))? {
        return Ok(None);
    }
    let t = TORCH.get_or_try_init(py, || -> PyResult<TorchDtypes> {
        let torch = py.import("torch")?;
        Ok(TorchDtypes {
            f32: torch.getattr("float32")?.unbind(),
            f16: torch.getattr("float16")?.unbind(),
            bf16: torch.getattr("bfloat16")?.unbind(),
            bool_: torch.getattr("bool")?.unbind(),
            tensor: torch.getattr("Tensor")?.unbind(),
        })
    })?;
    Ok(Some(t))
}

/// A boolean mask's bytes with its shape and strides: a torch.bool tensor or a NumPy bool array
/// (both store one byte per element, 0 or 1).
pub fn bool_slice<'a>(name: &str, obj: &'a Bound<'_, PyAny>) -> PyResult<(&'a [bool], Vec<usize>, Vec<isize>)> {
    let py = obj.py();
    let (addr, shape, strides): (usize, Vec<usize>, Vec<isize>) = if let Some(t) = torch_dtypes(obj)? {
        if !obj.getattr(intern!(py, "dtype"))?.is(&t.bool_) || !obj.getattr(intern!(py, "is_cpu"))?.extract::<bool>()? {
            return Err(bad(name, "must be a CPU torch.bool tensor".into()));
        }
        let shape: Vec<usize> = obj.getattr(intern!(py, "shape"))?.extract()?;
        let strides: Vec<isize> = obj.call_method0(intern!(py, "stride"))?.extract()?;
        (obj.call_method0(intern!(py, "data_ptr"))?.extract()?, shape, strides)
    } else if let Ok(iface) = obj.getattr("__array_interface__") {
        let d = iface.cast_into::<PyDict>()?;
        let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
            d.get_item(k)?.ok_or_else(|| bad(name, format!("__array_interface__ lacks `{k}`")))
        };
        if get("typestr")?.extract::<String>()? != "|b1" {
            return Err(bad(name, "must be a bool array".into()));
        }
        let shape: Vec<usize> = get("shape")?.extract()?;
        let strides = match d.get_item("strides")?.filter(|s| !s.is_none()) {
            None => c_strides(&shape),
            Some(s) => s.extract()?,
        };
        (get("data")?.extract::<(usize, bool)>()?.0, shape, strides)
    } else {
        return Err(PyTypeError::new_err(format!("{name} must be a bool NumPy array or torch tensor")));
    };
    let n: usize = shape.iter().product();
    if !is_row_major(&shape, &strides) {
        return Err(bad(name, format!("must be contiguous; got strides {strides:?}")));
    }
    if n == 0 {
        return Ok((&[], shape, strides));
    }
    // SAFETY: a contiguous array of `n` one-byte bools starting at `addr` (checked row-major
    // above); torch and NumPy store only 0 and 1 there, which are valid `bool`s; `obj` is
    // borrowed for 'a, keeping the memory alive.
    Ok((unsafe { std::slice::from_raw_parts(addr as *const bool, n) }, shape, strides))
}

/// Whether two borrowed arrays share any byte.
pub fn overlaps(a: &Borrowed<'_>, b: &Borrowed<'_>) -> bool {
    let ((a0, a1), (b0, b1)) = (a.byte_range(), b.byte_range());
    a0 < b1 && b0 < a1 && !a.shape.contains(&0) && !b.shape.contains(&0)
}

/// Whether `obj` is a torch.Tensor (checked by module name, so torch need not be importable).
pub fn is_torch(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.get_type().module()?.to_string().starts_with("torch"))
}

impl std::fmt::Debug for Borrowed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} strides {:?}", self.dtype, self.shape, self.strides)
    }
}
