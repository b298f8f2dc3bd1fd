//! `.safetensors` input/output (feature `safetensors`): `attnkit run --safetensors FILE --q NAME
//! --k NAME --v NAME` and `--out X.safetensors`.
//!
//! The file is memory-mapped, so only the pages of the named tensors are read, however large
//! the checkpoint. safetensors' own parser checks the header (size limit, JSON, offsets that
//! tile the data section exactly, shape × dtype = byte length); this module adds what `.npy`
//! reading checks: the element type (F32, F16 or BF16, little-endian as the format defines) and
//! an element count within the same limit. The named tensor is copied out of the map into a
//! [`Tensor`] (one pass, O(elements)): safetensors does not promise aligned offsets, and a copy
//! means a file changed on disk after reading cannot change the data under a running kernel.
//! Every failure is [`AttnError::Safetensors`] naming the file and the values.

use crate::error::{AttnError, Result};
use crate::tensor::Tensor;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Largest element count we accept, as for `.npy` (2^40).
const MAX_ELEMENTS: usize = 1 << 40;

fn st_err(path: &Path, reason: impl Into<String>) -> AttnError {
    AttnError::Safetensors { path: path.display().to_string(), reason: reason.into() }
}

/// True when `path` ends in `.safetensors` (how `--out`/`--lse` pick the format).
pub fn is_safetensors_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Reads the tensor called `name` (f32, f16 or bf16, any rank) from a `.safetensors` file by
/// memory map. Returns the data and its shape.
pub fn read_tensor(path: impl AsRef<Path>, name: &str) -> Result<(Tensor, Vec<usize>)> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| st_err(path, format!("cannot open: {e}")))?;
    // SAFETY: the map is read-only and lives only inside this function; the tensor is copied out
    // before it returns. Another process truncating the file meanwhile could fault the read
    // (SIGBUS), which memory-mapped readers (safetensors, candle, PyTorch) all accept.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| st_err(path, format!("cannot map: {e}")))?;
    parse_tensor(&map, name).map_err(|reason| st_err(path, reason))
}

/// The tensor `name` of an in-memory `.safetensors` image (the fuzzable core of
/// [`read_tensor`]); the error is the reason only.
pub fn parse_tensor(bytes: &[u8], name: &str) -> std::result::Result<(Tensor, Vec<usize>), String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("malformed file: {e}"))?;
    let view = st.tensor(name).map_err(|_| {
        let mut names = st.names();
        names.sort();
        format!("no tensor named `{name}`; the file holds: {}", names.join(", "))
    })?;
    let shape = view.shape().to_vec();
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&c| c <= MAX_ELEMENTS);
    if count.is_none() {
        return Err(format!("tensor `{name}` of shape {shape:?} has too many elements (limit {MAX_ELEMENTS})"));
    }
    // safetensors has already checked data().len() == count × element size.
    let data = view.data();
    let tensor = match view.dtype() {
        Dtype::F32 => Tensor::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        Dtype::F16 => Tensor::F16(data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()),
        Dtype::BF16 => Tensor::BF16(data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect()),
        other => {
            return Err(format!(
                "tensor `{name}` has dtype {other}, which is not supported; expected F32, F16 or BF16"
            ));
        }
    };
    Ok((tensor, shape))
}

/// Writes f32 tensors, each `(name, shape, data)`, as one `.safetensors` file.
pub fn write_f32(path: impl AsRef<Path>, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
    let path = path.as_ref();
    let mut views = Vec::with_capacity(tensors.len());
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), b)
            .map_err(|e| AttnError::shape(format!("safetensors write: `{name}` of shape {shape:?}: {e}")))?;
        views.push((name.to_string(), view));
    }
    safetensors::serialize_to_file(views, None, path).map_err(|e| st_err(path, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors image with one tensor `x` of the given dtype name, shape and data length.
    fn image(dtype: &str, shape: &[usize], data_len: usize) -> Vec<u8> {
        let header = format!(r#"{{"x":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[0,{data_len}]}}}}"#);
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data_len));
        b
    }

    /// Each malformed input and a fragment its error must contain.
    #[test]
    fn malformed_inputs_give_named_errors() {
        let (t, shape) = parse_tensor(&image("BF16", &[2, 3], 12), "x").unwrap();
        assert!(matches!(t, Tensor::BF16(_)));
        assert_eq!(shape, vec![2, 3]);
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("empty", vec![], "x", "malformed"),
            ("header past the end", (1u64 << 20).to_le_bytes().to_vec(), "x", "malformed"),
            ("not json", [8u64.to_le_bytes().to_vec(), b"not json".to_vec()].concat(), "x", "malformed"),
            ("short data", image("F32", &[2, 3], 20), "x", "malformed"),
            ("missing name", image("F32", &[2], 8), "q", "no tensor named `q`; the file holds: x"),
            ("float64", image("F64", &[2], 16), "x", "dtype F64"),
            ("int32", image("I32", &[2], 8), "x", "dtype I32"),
        ];
        for (what, bytes, name, want) in cases {
            let err = parse_tensor(&bytes, name).expect_err(what);
            assert!(err.contains(want), "{what}: `{err}` lacks `{want}`");
        }
    }
}
