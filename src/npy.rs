//! `.npy` input/output for `attnkit run`, the tests and the fuzz target.
//!
//! Parsing is npyz's; this module adds the checks a CLI needs before trusting a file: the
//! element type (float32 or float16; bfloat16 has no NumPy dtype, so there is nothing to
//! read it as), C order, a shape whose element count fits in memory, and a data section as
//! long as the shape says. Every failure is [`AttnError::Npy`] naming the file and the values.
//!
//! Robustness: the whole file is read into memory and the length prefix of the header is
//! checked against the file size before npyz sees it (npyz would otherwise allocate whatever
//! a corrupt prefix claims), the header is capped at [`MAX_HEADER_BYTES`], and the element
//! count is recomputed with checked arithmetic (npyz multiplies the shape unchecked; the
//! crate's Cargo.toml turns off npyz's debug overflow checks so a hostile shape cannot panic).

use crate::error::{AttnError, Result};
use crate::tensor::Tensor;
use half::f16;
use npyz::{NpyFile, Order, TypeChar, WriterBuilder};
use std::path::Path;

/// Largest header we accept. NumPy itself refuses headers over 10 000 bytes by default.
pub const MAX_HEADER_BYTES: usize = 65_536;

/// Largest element count we accept from a header (2^40), far above any attention input.
const MAX_ELEMENTS: u64 = 1 << 40;

fn npy_err(origin: &str, reason: impl Into<String>) -> AttnError {
    AttnError::Npy { path: origin.to_string(), reason: reason.into() }
}

fn fmt_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if parts.len() == 1 { format!("({},)", parts[0]) } else { format!("({})", parts.join(", ")) }
}

/// Checks the magic string and that the header the length prefix announces fits in the file.
fn check_preamble(bytes: &[u8], origin: &str) -> Result<()> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(npy_err(origin, "not a .npy file (the \\x93NUMPY magic string is missing)"));
    }
    let (len_bytes, prefix) = match bytes.get(6) {
        Some(1) => (2usize, 10usize),
        Some(2) | Some(3) => (4, 12),
        Some(v) => {
            return Err(npy_err(origin, format!("unsupported .npy format version {v}")));
        }
        None => return Err(npy_err(origin, "truncated file: ends inside the preamble")),
    };
    let Some(len_field) = bytes.get(8..8 + len_bytes) else {
        return Err(npy_err(origin, "truncated file: ends inside the preamble"));
    };
    let header_len = len_field.iter().rev().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    if header_len > MAX_HEADER_BYTES {
        return Err(npy_err(
            origin,
            format!("header length {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if prefix + header_len > bytes.len() {
        return Err(npy_err(
            origin,
            format!("truncated file: the header claims {header_len} bytes but the file has only {} bytes", bytes.len()),
        ));
    }
    check_header_text(&bytes[prefix..prefix + header_len], origin)
}

/// Rejects header text that no NumPy writer produces before npyz's Python-literal parser (a
/// pest grammar) sees it. Fuzzing found that parser backtracking for minutes on 229 bytes with
/// two runs of unclosed `[[[[…` (tests/data/npy_bracket_hang.npy), a denial of service for
/// `attnkit run`. NumPy writes `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`
/// padded with spaces: one dict holding one tuple, single-quoted plain strings. We allow only
/// that alphabet (no lists, escapes or double quotes), nesting depth 2 and no triple quotes.
fn check_header_text(header: &[u8], origin: &str) -> Result<()> {
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b" \t\n{}()',:<>|=_.-+".contains(&c);
    if let Some(&c) = header.iter().find(|&&c| !allowed(c)) {
        return Err(npy_err(
            origin,
            format!("malformed header: unexpected byte 0x{c:02x} (NumPy headers are plain dict literals)"),
        ));
    }
    if header.windows(2).any(|w| w == b"''") {
        return Err(npy_err(origin, "malformed header: empty or triple-quoted string (NumPy never writes one)"));
    }
    let mut depth = 0usize;
    for &c in header {
        match c {
            b'{' | b'(' => {
                depth += 1;
                if depth > 2 {
                    return Err(npy_err(origin, "malformed header: nested deeper than a dict holding a shape tuple"));
                }
            }
            b'}' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    check_shape_literal(header, origin)
}

/// NumPy writes the shape as a tuple of plain non-negative integers. npyz also evaluates
/// expressions there (`-1++1`) and multiplies the dimensions unchecked, which fuzzing showed
/// overflowing (a panic under overflow checks). Require digits only and a product that fits.
fn check_shape_literal(header: &[u8], origin: &str) -> Result<()> {
    let Some(key) = header.windows(7).position(|w| w == b"'shape'") else {
        return Ok(()); // npyz reports the missing key
    };
    let rest = &header[key + 7..];
    let (Some(open), Some(close)) = (rest.iter().position(|&c| c == b'('), rest.iter().position(|&c| c == b')')) else {
        return Err(npy_err(origin, "malformed header: 'shape' is not a tuple"));
    };
    if close < open {
        return Err(npy_err(origin, "malformed header: 'shape' is not a tuple"));
    }
    let inner = &rest[open + 1..close];
    if !inner.iter().all(|&c| c.is_ascii_digit() || c == b',' || c == b' ') {
        return Err(npy_err(origin, "malformed header: 'shape' must be a tuple of non-negative integers"));
    }
    let mut count: u64 = 1;
    for dim in inner.split(|&c| c == b',').map(|d| d.trim_ascii()).filter(|d| !d.is_empty()) {
        let n = std::str::from_utf8(dim).ok().and_then(|d| d.parse::<u64>().ok());
        match n.and_then(|n| count.checked_mul(n)) {
            Some(c) if c <= MAX_ELEMENTS => count = c,
            _ => {
                return Err(npy_err(
                    origin,
                    format!(
                        "shape {} has too many elements (limit {MAX_ELEMENTS})",
                        String::from_utf8_lossy(&rest[open..=close])
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Parses a whole `.npy` file held in memory. Returns the data (f32 or f16) and the shape.
pub fn parse_tensor_bytes(bytes: &[u8]) -> Result<(Tensor, Vec<usize>)> {
    parse_named(bytes, "<bytes>")
}

fn parse_named(bytes: &[u8], origin: &str) -> Result<(Tensor, Vec<usize>)> {
    check_preamble(bytes, origin)?;
    let file = NpyFile::new(bytes).map_err(|e| npy_err(origin, format!("malformed header: {e}")))?;
    let header = file.header().clone();
    let dtype = header.dtype();
    let descr = dtype.descr();
    if header.order() == Order::Fortran {
        return Err(npy_err(
            origin,
            "Fortran-order (column-major) arrays are not supported; save a C-order array \
             (np.ascontiguousarray)",
        ));
    }
    let elem_bytes = match &dtype {
        npyz::DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4 => 4,
        npyz::DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 2 => 2,
        npyz::DType::Plain(ts) if ts.type_char() == TypeChar::RawData && ts.size_field() == 2 => {
            return Err(npy_err(
                origin,
                format!(
                    "dtype {descr} (2-byte raw data, which is how ml_dtypes saves bfloat16) is not \
                     supported: NumPy has no bfloat16 dtype; save float32 or float16"
                ),
            ));
        }
        _ => {
            return Err(npy_err(
                origin,
                format!("dtype {descr} is not supported; expected float32 (<f4) or float16 (<f2)"),
            ));
        }
    };
    let (shape, data) = checked_data(&header, file.into_inner(), elem_bytes, &descr.to_string(), origin)?;
    let read_err = |e: std::io::Error| npy_err(origin, format!("reading data: {e}"));
    let tensor = if elem_bytes == 4 {
        Tensor::F32(NpyFile::with_header(header, data).into_vec::<f32>().map_err(read_err)?)
    } else {
        Tensor::F16(NpyFile::with_header(header, data).into_vec::<f16>().map_err(read_err)?)
    };
    Ok((tensor, shape))
}

/// Element count from the header (checked), and the data section checked to be exactly as long
/// as the shape says.
fn checked_data<'b>(
    header: &npyz::NpyHeader,
    data: &'b [u8],
    elem_bytes: u64,
    descr: &str,
    origin: &str,
) -> Result<(Vec<usize>, &'b [u8])> {
    let mut count: u64 = 1;
    for &d in header.shape() {
        count = count
            .checked_mul(d)
            .filter(|&c| c <= MAX_ELEMENTS)
            .ok_or_else(|| npy_err(origin, format!("shape {:?} has too many elements", header.shape())))?;
    }
    let shape: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
    let need = count * elem_bytes;
    if (data.len() as u64) < need {
        return Err(npy_err(
            origin,
            format!(
                "truncated file: shape {} of {descr} needs {need} data bytes, the file has {}",
                fmt_shape(&shape),
                data.len()
            ),
        ));
    }
    if data.len() as u64 > need {
        return Err(npy_err(
            origin,
            format!("{} trailing bytes after the data of shape {}", data.len() as u64 - need, fmt_shape(&shape)),
        ));
    }
    Ok((shape, data))
}

/// Reads an integer `.npy` (int32 or int64, any rank), for offsets and lengths such as
/// `cu_seqlens`. Returns the values widened to i64 and the shape.
pub fn read_ints(path: impl AsRef<Path>) -> Result<(Vec<i64>, Vec<usize>)> {
    let (origin, bytes) = read_bytes(path.as_ref())?;
    let (header, data, size) =
        open_plain(&bytes, &origin, &[(TypeChar::Int, 4), (TypeChar::Int, 8)], "int32 (<i4) or int64 (<i8)")?;
    let (shape, data) = checked_data(&header, data, size, &header.dtype().descr().to_string(), &origin)?;
    let read_err = |e: std::io::Error| npy_err(&origin, format!("reading data: {e}"));
    let vals = if size == 4 {
        NpyFile::with_header(header, data).into_vec::<i32>().map_err(read_err)?.into_iter().map(i64::from).collect()
    } else {
        NpyFile::with_header(header, data).into_vec::<i64>().map_err(read_err)?
    };
    Ok((vals, shape))
}

/// Reads a boolean `.npy` (bool or uint8, any rank; nonzero = true), for attention masks.
pub fn read_bools(path: impl AsRef<Path>) -> Result<(Vec<bool>, Vec<usize>)> {
    let (origin, bytes) = read_bytes(path.as_ref())?;
    let (header, data, size) =
        open_plain(&bytes, &origin, &[(TypeChar::Bool, 1), (TypeChar::Uint, 1)], "bool (|b1) or uint8 (|u1)")?;
    let (shape, data) = checked_data(&header, data, size, &header.dtype().descr().to_string(), &origin)?;
    Ok((data.iter().map(|&b| b != 0).collect(), shape))
}

fn read_bytes(path: &Path) -> Result<(String, Vec<u8>)> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| npy_err(&origin, format!("cannot read: {e}")))?;
    Ok((origin, bytes))
}

/// Header of a C-order file whose plain dtype is one of `accept` (type, bytes): the header,
/// the data section and the element size.
fn open_plain<'b>(
    bytes: &'b [u8],
    origin: &str,
    accept: &[(TypeChar, u64)],
    want: &str,
) -> Result<(npyz::NpyHeader, &'b [u8], u64)> {
    check_preamble(bytes, origin)?;
    let file = NpyFile::new(bytes).map_err(|e| npy_err(origin, format!("malformed header: {e}")))?;
    let header = file.header().clone();
    if header.order() == Order::Fortran {
        return Err(npy_err(origin, "Fortran-order arrays are not supported; save a C-order array"));
    }
    let size = match header.dtype() {
        npyz::DType::Plain(ts) if accept.iter().any(|&(c, n)| ts.type_char() == c && ts.size_field() == n) => {
            ts.size_field()
        }
        d => return Err(npy_err(origin, format!("dtype {} is not supported; expected {want}", d.descr()))),
    };
    Ok((header, file.into_inner(), size))
}

/// Reads a `.npy` file of any rank (float32 or float16).
pub fn read_tensor(path: impl AsRef<Path>) -> Result<(Tensor, Vec<usize>)> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| npy_err(&origin, format!("cannot read: {e}")))?;
    parse_named(&bytes, &origin)
}

/// Reads an attention tensor: rank 4 (B, H, N, D), or rank 3 (H, N, D) taken as B = 1.
/// Returns the data and its shape as (B, H, N, D).
pub fn read_tensor4(path: impl AsRef<Path>) -> Result<(Tensor, [usize; 4])> {
    let path = path.as_ref();
    let (t, shape) = read_tensor(path)?;
    let s4 = shape4(&shape).ok_or_else(|| {
        npy_err(
            &path.display().to_string(),
            format!("rank {} (shape {}); expected (B, H, N, D) or (H, N, D)", shape.len(), fmt_shape(&shape)),
        )
    })?;
    Ok((t, s4))
}

/// (B, H, N, D) from a rank-4 shape, or from a rank-3 (H, N, D) with B = 1.
pub fn shape4(shape: &[usize]) -> Option<[usize; 4]> {
    match *shape {
        [b, h, n, d] => Some([b, h, n, d]),
        [h, n, d] => Some([1, h, n, d]),
        _ => None,
    }
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Serializes a tensor (f32 or f16) as `.npy` bytes with the given shape.
pub fn tensor_to_bytes(shape: &[usize], data: &Tensor) -> Result<Vec<u8>> {
    let len = data.as_ref().len();
    if element_count(shape) != Some(len) {
        return Err(AttnError::shape(format!("npy write: shape {} does not hold {len} elements", fmt_shape(shape))));
    }
    let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut buf = Vec::with_capacity(len * 4 + 128);
    let io = |e: std::io::Error| npy_err("<write>", e.to_string());
    match data {
        Tensor::F32(v) => {
            let mut w =
                npyz::WriteOptions::new().default_dtype().shape(&shape64).writer(&mut buf).begin_nd().map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        Tensor::F16(v) => {
            let mut w =
                npyz::WriteOptions::new().default_dtype().shape(&shape64).writer(&mut buf).begin_nd().map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        Tensor::BF16(_) => {
            return Err(npy_err("<write>", "bfloat16 cannot be written: NumPy has no bfloat16 dtype"));
        }
    }
    Ok(buf)
}

/// Writes a float32 `.npy` file.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    write_tensor(path, shape, &Tensor::F32(data.to_vec()))
}

/// Writes an f32 or f16 tensor as `.npy`.
pub fn write_tensor(path: impl AsRef<Path>, shape: &[usize], data: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let bytes = tensor_to_bytes(shape, data)?;
    std::fs::write(path, bytes).map_err(|e| npy_err(&path.display().to_string(), format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(shape: &[usize]) -> Vec<u8> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        tensor_to_bytes(shape, &Tensor::F32(data)).unwrap()
    }

    #[test]
    fn round_trips_f32_and_f16() {
        let bytes = f32_bytes(&[1, 2, 3, 4]);
        let (t, shape) = parse_tensor_bytes(&bytes).unwrap();
        assert_eq!(shape, vec![1, 2, 3, 4]);
        assert_eq!(t.to_f32()[5], 2.5);
        let h = Tensor::F16((0..6).map(|i| f16::from_f32(i as f32)).collect());
        let (t, shape) = parse_tensor_bytes(&tensor_to_bytes(&[2, 3], &h).unwrap()).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert!(matches!(t, Tensor::F16(_)));
        assert_eq!(t.to_f32(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    /// A version-1 `.npy` file with a hand-written header, for malformed-input cases.
    fn raw_npy(dict: &str, data_len: usize) -> Vec<u8> {
        let mut text = dict.to_string();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(text.len() as u16).to_le_bytes());
        b.extend_from_slice(text.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data_len));
        b
    }

    /// Each malformed input and a fragment its error must contain.
    #[test]
    fn malformed_inputs_give_named_errors() {
        let good = f32_bytes(&[2, 2]);
        assert!(
            parse_tensor_bytes(&raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 16)).is_ok()
        );
        let mut huge_header = good.clone();
        huge_header[6] = 2;
        huge_header[8..12].copy_from_slice(&[0xff; 4]);
        let mut long_header = good.clone();
        long_header[8..10].copy_from_slice(&[0xff; 2]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "magic"),
            ("not npy", b"hello world, not numpy".to_vec(), "magic"),
            ("truncated preamble", good[..8].to_vec(), "truncated"),
            ("truncated data", good[..good.len() - 3].to_vec(), "truncated"),
            ("trailing", [good.clone(), vec![0u8; 4]].concat(), "trailing"),
            ("header too long", huge_header, "header length"),
            ("header past the end", long_header, "truncated"),
            ("fortran", raw_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16), "Fortran"),
            ("float64", raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16), "<f8"),
            ("int32", raw_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", 8), "<i4"),
            ("bfloat16", raw_npy("{'descr': '|V2', 'fortran_order': False, 'shape': (2,), }", 4), "bfloat16"),
            ("not a dict", raw_npy("[1, 2]", 0), "header"),
            ("missing shape", raw_npy("{'descr': '<f4', 'fortran_order': False, }", 0), "shape"),
            ("negative dim", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 0), "negative"),
            (
                "overflowing shape",
                raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }", 0),
                "too many elements",
            ),
            ("deep nesting", raw_npy(&"(".repeat(20_000), 0), "header"),
        ];
        for (name, bytes, want) in cases {
            let err = parse_tensor_bytes(&bytes).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: `{err}` lacks `{want}`");
        }
    }

    #[test]
    fn shape4_accepts_rank_3_and_4_only() {
        assert_eq!(shape4(&[2, 3, 4]), Some([1, 2, 3, 4]));
        assert_eq!(shape4(&[5, 2, 3, 4]), Some([5, 2, 3, 4]));
        assert_eq!(shape4(&[3, 4]), None);
        assert!(tensor_to_bytes(&[3], &Tensor::F32(vec![1.0; 2])).is_err());
    }
}
