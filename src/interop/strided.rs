//! Strided 4-D views over foreign buffers (candle storages, DLPack / NumPy arrays): as row
//! layouts the CPU kernels read in place ([`View4::rows`]), or through the one gather into
//! contiguous row-major (B, H, N, D) when their last axis is not contiguous.
//!
//! A view is `data[offset + Σ idx[a]·strides[a]]` with element (not byte) strides, which may be
//! zero (broadcast) or negative (NumPy's reversed views). [`View4::new`] checks once that every
//! index the shape allows lands inside `data`, so the gather indexes without further checks
//! that could fail. [`View4::to_contiguous`] borrows when the view already is contiguous
//! row-major, so the doors copy only when the layout demands it. Cost: one pass over the
//! elements, O(B·H·N·D), negligible beside attention's O(N²·D).

use crate::error::{AttnError, Result};
use crate::row_layout::RowLayout;
use std::borrow::Cow;

/// A strided 4-D view over `data`. Build with [`View4::new`].
#[derive(Clone, Copy, Debug)]
pub struct View4<'a, T> {
    data: &'a [T],
    offset: usize,
    shape: [usize; 4],
    strides: [isize; 4],
}

impl<'a, T: Copy> View4<'a, T> {
    /// Checks that every element the shape addresses lies inside `data`; `name` goes into the
    /// error (e.g. "q").
    pub fn new(name: &str, data: &'a [T], offset: usize, shape: [usize; 4], strides: [isize; 4]) -> Result<Self> {
        let out_of_range = || {
            AttnError::shape(format!(
                "{name}: a view of shape {shape:?}, strides {strides:?} at offset {offset} reaches outside \
                 its buffer of {} elements",
                data.len()
            ))
        };
        if shape.contains(&0) {
            return Ok(View4 { data, offset, shape, strides });
        }
        // Lowest and highest element offsets relative to `offset`, in i128 so no stride or
        // shape product can overflow.
        let (mut lo, mut hi) = (0i128, 0i128);
        for (&n, &s) in shape.iter().zip(&strides) {
            let reach = (n as i128 - 1) * s as i128;
            if reach < 0 { lo += reach } else { hi += reach }
        }
        let (first, last) = (offset as i128 + lo, offset as i128 + hi);
        if first < 0 || last >= data.len() as i128 {
            return Err(out_of_range());
        }
        Ok(View4 { data, offset, shape, strides })
    }

    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The same elements with axes reordered: axis `a` of the result is axis `perm[a]` of self.
    pub fn permuted(&self, perm: [usize; 4]) -> Self {
        View4 {
            data: self.data,
            offset: self.offset,
            shape: perm.map(|a| self.shape[a]),
            strides: perm.map(|a| self.strides[a]),
        }
    }

    /// True when the elements are exactly `data[offset..offset + count]` in row-major order.
    /// Axes of extent 1 may have any stride (PyTorch and candle leave arbitrary ones there).
    pub fn is_contiguous(&self) -> bool {
        let mut want = 1isize;
        for a in (0..4).rev() {
            if self.shape[a] != 1 && self.strides[a] != want {
                return false;
            }
            want = want.saturating_mul(self.shape[a] as isize);
        }
        true
    }

    /// The view as rows the CPU kernels read in place ([`crate::row_layout`]): the buffer from
    /// the view's offset and the (batch, head, row) strides, when the last axis is contiguous
    /// (or of extent 1) and no stride is negative; `None` otherwise (then gather it).
    pub fn rows(&self) -> Option<(&'a [T], RowLayout)> {
        let [s0, s1, s2, s3] = self.strides;
        if (s3 != 1 && self.shape[3] > 1) || [s0, s1, s2].iter().any(|&s| s < 0) {
            return None;
        }
        let l = RowLayout { batch: s0 as usize, head: s1 as usize, row: s2 as usize };
        Some((&self.data[self.offset.min(self.data.len())..], l))
    }

    /// The elements in row-major order: borrowed when already contiguous, else gathered.
    pub fn to_contiguous(&self) -> Cow<'a, [T]> {
        if self.is_contiguous() {
            let count: usize = self.shape.iter().product();
            return Cow::Borrowed(&self.data[self.offset..self.offset + count]);
        }
        Cow::Owned(self.gather_map(|x| x))
    }

    /// Every element in row-major order, passed through `f` (a dtype conversion, say).
    pub fn gather_map<U>(&self, f: impl Fn(T) -> U) -> Vec<U> {
        let [n0, n1, n2, n3] = self.shape;
        let [s0, s1, s2, s3] = self.strides;
        let mut out = Vec::with_capacity(n0 * n1 * n2 * n3);
        for i0 in 0..n0 {
            for i1 in 0..n1 {
                for i2 in 0..n2 {
                    // In range by the check in `new`: lo ≤ this ≤ hi for every index.
                    let row = self.offset as isize + i0 as isize * s0 + i1 as isize * s1 + i2 as isize * s2;
                    if s3 == 1 {
                        let r = row as usize;
                        out.extend(self.data[r..r + n3].iter().map(|&x| f(x)));
                    } else {
                        out.extend((0..n3).map(|i3| f(self.data[(row + i3 as isize * s3) as usize])));
                    }
                }
            }
        }
        out
    }
}

/// Row-major strides of `shape`, in elements.
pub fn contiguous_strides(shape: [usize; 4]) -> [isize; 4] {
    [(shape[1] * shape[2] * shape[3]) as isize, (shape[2] * shape[3]) as isize, shape[3] as isize, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (shape, strides, offset, buffer length, in range?, contiguous?)
    type BoundsCase = ([usize; 4], [isize; 4], usize, usize, bool, bool);

    #[test]
    fn bounds_and_contiguity() {
        let cases: [BoundsCase; 7] = [
            ([2, 3, 4, 5], [60, 20, 5, 1], 0, 120, true, true),
            ([2, 3, 4, 5], [60, 20, 5, 1], 1, 120, false, true),
            ([1, 3, 4, 5], [999, 20, 5, 1], 0, 60, true, true),
            ([2, 4, 3, 5], [60, 5, 20, 1], 0, 120, true, false),
            ([1, 1, 4, 5], [20, 20, -5, 1], 15, 20, true, false),
            ([1, 1, 4, 5], [20, 20, -5, 1], 14, 20, false, false),
            ([2, 2, 2, 2], [0, 0, 0, 0], 0, 1, true, false),
        ];
        for (shape, strides, offset, len, ok, contiguous) in cases {
            let data = vec![0u8; len];
            let v = View4::new("x", &data, offset, shape, strides);
            assert_eq!(v.is_ok(), ok, "{shape:?} {strides:?} +{offset} in {len}");
            if let Ok(v) = v {
                assert_eq!(v.is_contiguous(), contiguous, "{shape:?} {strides:?}");
            }
        }
    }

    #[test]
    fn gather_matches_index_formula_and_borrows_when_contiguous() {
        let data: Vec<u32> = (0..120).collect();
        let base = View4::new("x", &data, 0, [2, 3, 4, 5], contiguous_strides([2, 3, 4, 5])).unwrap();
        assert!(matches!(base.to_contiguous(), Cow::Borrowed(_)));
        let t = base.permuted([0, 2, 1, 3]);
        assert_eq!(t.shape(), [2, 4, 3, 5]);
        let got = t.to_contiguous();
        assert!(matches!(got, Cow::Owned(_)));
        for (i, &x) in got.iter().enumerate() {
            let (a, b, c, d) = (i / 60, (i / 15) % 4, (i / 5) % 3, i % 5);
            assert_eq!(x as usize, a * 60 + c * 20 + b * 5 + d);
        }
        let reversed = View4::new("x", &data, 4, [1, 1, 1, 5], [0, 0, 0, -1]).unwrap();
        assert_eq!(reversed.gather_map(|x| x * 2), vec![8, 6, 4, 2, 0]);
    }
}
