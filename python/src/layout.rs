//! Moving rows between the caller's layout and contiguous (B, H, N, D) buffers, converting the
//! dtype on the way: the f32 outputs into the caller's arrays, the backward's inputs, and forward
//! inputs whose head dim is not contiguous (the others reach the kernels in place as row
//! layouts, `flash::rows_or_contiguous`). It is one parallel pass that walks the *destination* in
//! row-major order (so each rayon task owns a disjoint chunk of it, in safe code) and reads the
//! source through arbitrary element strides.
//!
//! Cost: one read and one write of every element, O(B·H·N·D), split over the rayon pool; beside
//! the kernel's O(N²·D) it does not show: `python -m attnkit.bench` (the (B, N, H, D) call
//! against the same call on contiguous (B, H, N, D), alternated) measured time ratios 0.99 (f32)
//! and 0.97 (bf16) at B=2, N=4096, H=8, D=64 on a loaded 2-core machine. Small tensors are moved on the calling
//! thread: waking the pool costs more than the copy below ~64 K elements.

use half::{bf16, f16};
use rayon::prelude::*;

/// An element the kernels read or write, convertible through f32.
pub trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}
impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}
impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Below this many elements the copy runs on the calling thread.
const PAR_MIN: usize = 1 << 16;

/// A strided 4-D source: element `[i0, i1, i2, i3]` is `data[off + Σ i_a·strides[a]]`.
#[derive(Clone, Copy)]
pub struct Src<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub strides: [isize; 4],
}

impl<T: Copy> Src<'_, T> {
    /// The same source with its axes reordered: axis `a` of the result is axis `perm[a]`.
    pub fn permuted(self, perm: [usize; 4]) -> Self {
        Src { strides: perm.map(|a| self.strides[a]), ..self }
    }

    fn row(&self, i0: usize, i1: usize, i2: usize) -> isize {
        let s = self.strides;
        self.off as isize + i0 as isize * s[0] + i1 as isize * s[1] + i2 as isize * s[2]
    }
}

/// `dest` (row-major, `shape`) ← `f(src)`. The caller has checked that `src` addresses only
/// elements inside its slice for this shape (arrays::Borrowed::span), so indexing cannot fail.
pub fn copy_into<T: Copy + Sync, U: Send>(
    src: Src<'_, T>,
    shape: [usize; 4],
    dest: &mut [U],
    f: impl Fn(T) -> U + Sync,
) {
    let [_, n1, n2, d] = shape;
    debug_assert_eq!(dest.len(), shape.iter().product::<usize>());
    if d == 0 || dest.is_empty() {
        return;
    }
    let s3 = src.strides[3];
    let one_row = |(r, out): (usize, &mut [U])| {
        let (i0, i1, i2) = (r / (n1 * n2), (r / n2) % n1, r % n2);
        let base = src.row(i0, i1, i2);
        if s3 == 1 {
            let b = base as usize;
            for (o, &x) in out.iter_mut().zip(&src.data[b..b + d]) {
                *o = f(x);
            }
        } else {
            for (t, o) in out.iter_mut().enumerate() {
                *o = f(src.data[(base + t as isize * s3) as usize]);
            }
        }
    };
    if dest.len() < PAR_MIN {
        dest.chunks_mut(d).enumerate().for_each(one_row);
    } else {
        dest.par_chunks_mut(d).enumerate().for_each(one_row);
    }
}

/// True when `strides` are row-major contiguous for `shape` (size-1 axes may have any stride).
pub fn is_row_major(shape: &[usize], strides: &[isize]) -> bool {
    let mut want = 1isize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != want {
            return false;
        }
        want = want.saturating_mul(n as isize);
    }
    true
}
