//! Borrowed input tensors in one of the three supported dtypes.

use crate::problem::DType;
use half::{bf16, f16};

/// A borrowed, contiguous (B, H, N, D) tensor of f32, f16 or bf16 elements.
#[derive(Clone, Copy, Debug)]
pub enum TensorRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> TensorRef<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            TensorRef::F32(_) => DType::F32,
            TensorRef::F16(_) => DType::F16,
            TensorRef::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorRef::F32(s) => s.len(),
            TensorRef::F16(s) => s.len(),
            TensorRef::BF16(s) => s.len(),
        }
    }

    /// The first `n` elements (`n` ≤ `len()`; callers check it).
    pub fn prefix(&self, n: usize) -> TensorRef<'a> {
        match *self {
            TensorRef::F32(s) => TensorRef::F32(&s[..n]),
            TensorRef::F16(s) => TensorRef::F16(&s[..n]),
            TensorRef::BF16(s) => TensorRef::BF16(&s[..n]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f32. Panics if out of range (callers index validated shapes).
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            TensorRef::F32(s) => s[i],
            TensorRef::F16(s) => s[i].to_f32(),
            TensorRef::BF16(s) => s[i].to_f32(),
        }
    }

    /// Widens `dst.len()` elements starting at `start` into `dst` (f16/bf16 → f32 is exact).
    #[inline]
    pub fn read_f32(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            TensorRef::F32(s) => dst.copy_from_slice(&s[start..end]),
            TensorRef::F16(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..end]) {
                    *d = x.to_f32();
                }
            }
            TensorRef::BF16(s) => {
                for (d, x) in dst.iter_mut().zip(&s[start..end]) {
                    *d = x.to_f32();
                }
            }
        }
    }

    /// The whole tensor widened to f32 (a copy unless already f32).
    pub fn to_f32_cow(&self) -> std::borrow::Cow<'a, [f32]> {
        match *self {
            TensorRef::F32(s) => std::borrow::Cow::Borrowed(s),
            _ => {
                let mut v = vec![0.0f32; self.len()];
                self.read_f32(0, &mut v);
                std::borrow::Cow::Owned(v)
            }
        }
    }
}

impl<'a> From<&'a [f32]> for TensorRef<'a> {
    fn from(s: &'a [f32]) -> Self {
        TensorRef::F32(s)
    }
}
impl<'a> From<&'a [f16]> for TensorRef<'a> {
    fn from(s: &'a [f16]) -> Self {
        TensorRef::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for TensorRef<'a> {
    fn from(s: &'a [bf16]) -> Self {
        TensorRef::BF16(s)
    }
}
impl<'a> From<&'a Vec<f32>> for TensorRef<'a> {
    fn from(s: &'a Vec<f32>) -> Self {
        TensorRef::F32(s)
    }
}
impl<'a> From<&'a Vec<f16>> for TensorRef<'a> {
    fn from(s: &'a Vec<f16>) -> Self {
        TensorRef::F16(s)
    }
}
impl<'a> From<&'a Vec<bf16>> for TensorRef<'a> {
    fn from(s: &'a Vec<bf16>) -> Self {
        TensorRef::BF16(s)
    }
}

/// An owned tensor, handy for tests, the CLI and examples.
#[derive(Clone, Debug)]
pub enum Tensor {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Tensor {
    /// Rounds f32 data to `dtype`.
    pub fn from_f32(data: &[f32], dtype: DType) -> Tensor {
        match dtype {
            DType::F32 => Tensor::F32(data.to_vec()),
            DType::F16 => Tensor::F16(data.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Tensor::BF16(data.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }

    pub fn as_ref(&self) -> TensorRef<'_> {
        match self {
            Tensor::F32(v) => TensorRef::F32(v),
            Tensor::F16(v) => TensorRef::F16(v),
            Tensor::BF16(v) => TensorRef::BF16(v),
        }
    }

    /// The values as f32 (exact widening of what is stored).
    pub fn to_f32(&self) -> Vec<f32> {
        self.as_ref().to_f32_cow().into_owned()
    }
}
