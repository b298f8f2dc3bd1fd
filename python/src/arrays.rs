//! Borrowing array memory from Python without copying: NumPy arrays through
//! `__array_interface__`, PyTorch CPU tensors (and anything else exporting it) through DLPack
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

use attnkit::interop::strided::View4;
use attnkit::{AttnError, DType};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
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
    strides: Vec<isize>,
    ptr: *const u8,
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
        let (addr, _readonly): (usize, bool) = item("data")?.extract()?;
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
        Ok(Borrowed { dtype, shape, strides, ptr: addr as *const u8, _owner: obj.clone() })
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
        Ok(Borrowed { dtype, shape, strides, ptr: base, _owner: capsule })
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
        debug_assert_eq!(std::mem::size_of::<T>(), elem_size(self.dtype));
        // Span of element offsets the strides reach from `ptr`, lowest to highest.
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&n, &s) in shape.iter().zip(&strides) {
            let reach = (n as isize - 1).checked_mul(s).ok_or_else(|| bad(name, "strides overflow".into()))?;
            let side = if reach < 0 { &mut lo } else { &mut hi };
            *side = side.checked_add(reach).ok_or_else(|| bad(name, "strides overflow".into()))?;
        }
        let len = (hi - lo + 1) as usize;
        let start = self.ptr.wrapping_offset(lo * std::mem::size_of::<T>() as isize) as *const T;
        if !start.is_aligned() {
            return Err(bad(name, "data is not aligned to its element size".into()));
        }
        // SAFETY: the exporter promises that every element its shape and strides address is
        // valid, initialized memory of this dtype; [start, start + len) is exactly the span from
        // the lowest to the highest such element, and `_owner` keeps it alive for `'_`.
        let data = unsafe { std::slice::from_raw_parts(start, len) };
        View4::new(name, data, (-lo) as usize, shape, strides).map_err(value_err)
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

/// Whether `obj` is a torch.Tensor (checked by module name, so torch need not be importable).
pub fn is_torch(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.get_type().module()?.to_string().starts_with("torch"))
}

impl std::fmt::Debug for Borrowed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} strides {:?}", self.dtype, self.shape, self.strides)
    }
}
