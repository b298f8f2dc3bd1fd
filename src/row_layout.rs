//! Row layouts: where each (batch, head, position) row of Q, K and V starts, so the CPU kernels
//! read FlashAttention's (B, N, H, D) — or any other layout whose head-dim axis is contiguous —
//! in place instead of through a copy into (B, H, N, D).
//!
//! A [`RowLayout`] gives three element strides (batch, head, row); the D elements of a row are
//! always contiguous. [`Layouts`] carries one per input tensor inside [`crate::AttnArgs`]
//! (`None` = contiguous (B, H, N, D), the default). [`Layouts::check`] validates them up front
//! (every addressed element inside the buffer, no overflow) with [`AttnError::Strides`] naming
//! the tensor, and normalizes a layout that *is* contiguous to `None`, so the contiguous fast
//! path (and its bitwise results) is untouched.
//!
//! Who honours them: the tiled CPU runner (`flash-cpu`, `local`, `local-block`: Q and K/V
//! packing, the decode strategy's K/V reads) declares it through
//! [`crate::Attention::takes_strides`]; every other backend, and every backward pass, gets the
//! inputs gathered once into contiguous buffers at its entry by [`contiguous_then`]
//! (O(B·H·N·D), what the doors used to pay on every call). Outputs stay contiguous
//! (B, H, N_q, D) f32: the doors convert them to the caller's dtype anyway, and move the rows
//! into the caller's layout in that same pass.

use crate::attention::AttnArgs;
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use crate::tensor::{Tensor, TensorRef};
use half::{bf16, f16};

/// Element strides of one tensor's rows: row (b, h, i) starts at
/// `b·batch + h·head + i·row`, and its D elements follow contiguously.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    pub batch: usize,
    pub head: usize,
    pub row: usize,
}

impl RowLayout {
    /// Contiguous (B, H, N, D) with `heads` heads and `n` rows per head.
    pub fn bhnd(heads: usize, n: usize, d: usize) -> Self {
        RowLayout { batch: heads * n * d, head: n * d, row: d }
    }

    /// Contiguous (B, N, H, D) (FlashAttention's and candle-nn's order).
    pub fn bnhd(heads: usize, n: usize, d: usize) -> Self {
        RowLayout { batch: n * heads * d, head: d, row: heads * d }
    }

    /// First element of row (b, h, i).
    #[inline]
    pub fn at(&self, b: usize, h: usize, i: usize) -> usize {
        b * self.batch + h * self.head + i * self.row
    }

    /// One past the last element addressed for (batch, heads, n, d); `None` on overflow.
    fn end(&self, [b, h, n, d]: [usize; 4]) -> Option<usize> {
        if b * h * n * d == 0 {
            return Some(0);
        }
        let last = (b - 1)
            .checked_mul(self.batch)?
            .checked_add((h - 1).checked_mul(self.head)?)?
            .checked_add((n - 1).checked_mul(self.row)?)?;
        last.checked_add(d)
    }

    /// Whether this addresses exactly what contiguous (B, H, N, D) of `shape` does (strides of
    /// extent-1 axes do not matter).
    fn is_contiguous(&self, [b, h, n, d]: [usize; 4]) -> bool {
        let want = RowLayout::bhnd(h, n, d);
        (b <= 1 || self.batch == want.batch) && (h <= 1 || self.head == want.head) && (n <= 1 || self.row == want.row)
    }
}

/// The three input tensors of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Q,
    K,
    V,
}

impl Operand {
    pub fn name(self) -> &'static str {
        match self {
            Operand::Q => "q",
            Operand::K => "k",
            Operand::V => "v",
        }
    }

    /// (B, heads, N, D) of this operand in `p`.
    pub fn shape(self, p: &Problem) -> [usize; 4] {
        match self {
            Operand::Q => [p.batch, p.heads, p.seq_q, p.head_dim],
            Operand::K | Operand::V => [p.batch, p.kv_heads, p.seq_k, p.head_dim],
        }
    }
}

/// The row layouts of Q, K and V (`None`: contiguous (B, H, N, D)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layouts {
    pub q: Option<RowLayout>,
    pub k: Option<RowLayout>,
    pub v: Option<RowLayout>,
}

impl Layouts {
    /// All three in (B, N, H, D) for `p`'s shapes (FlashAttention's order).
    pub fn bnhd(p: &Problem) -> Self {
        let (d, h, hk) = (p.head_dim, p.heads, p.kv_heads);
        let kv = Some(RowLayout::bnhd(hk, p.seq_k, d));
        Layouts { q: Some(RowLayout::bnhd(h, p.seq_q, d)), k: kv, v: kv }
    }

    pub fn get(&self, op: Operand) -> Option<RowLayout> {
        match op {
            Operand::Q => self.q,
            Operand::K => self.k,
            Operand::V => self.v,
        }
    }

    fn slot(&mut self, op: Operand) -> &mut Option<RowLayout> {
        match op {
            Operand::Q => &mut self.q,
            Operand::K => &mut self.k,
            Operand::V => &mut self.v,
        }
    }

    /// True when every tensor is contiguous (B, H, N, D).
    pub fn is_contiguous(&self) -> bool {
        self.q.is_none() && self.k.is_none() && self.v.is_none()
    }

    /// Checks each layout against its tensor's length in `p` (`lens` in Q, K, V order) and
    /// returns them normalized: a layout equivalent to contiguous becomes `None` (the caller
    /// then uses the buffer's first B·H·N·D elements). Errors name the tensor, the strides and
    /// the length.
    pub fn check(mut self, p: &Problem, lens: [usize; 3]) -> Result<Self> {
        for (op, len) in [Operand::Q, Operand::K, Operand::V].into_iter().zip(lens) {
            let shape = op.shape(p);
            let Some(l) = self.get(op) else { continue };
            let bad = |reason: String| AttnError::Strides { tensor: op.name(), reason };
            let end = l.end(shape).ok_or_else(|| bad(format!("{l:?} overflow usize for shape {shape:?}")))?;
            if end > len {
                return Err(bad(format!(
                    "{l:?} for shape (B, H, N, D) = {shape:?} reach element {end} but the buffer holds {len}"
                )));
            }
            if l.is_contiguous(shape) {
                *self.slot(op) = None;
            }
        }
        Ok(self)
    }
}

/// One head's rows of a tensor: row `i` starts at element `base + i·stride`.
#[derive(Clone, Copy, Debug)]
pub struct HeadRows<'a> {
    pub src: TensorRef<'a>,
    pub base: usize,
    pub stride: usize,
}

impl HeadRows<'_> {
    /// Row `i` widened to f32 into `dst` (`dst.len()` = D).
    #[inline]
    pub fn read(&self, i: usize, dst: &mut [f32]) {
        self.src.read_f32(self.base + i * self.stride, dst);
    }

    /// Rows `i0..i0 + n` widened into `dst` (n·D): one read when they are adjacent.
    pub fn read_rows(&self, i0: usize, d: usize, dst: &mut [f32]) {
        if self.stride == d {
            self.src.read_f32(self.base + i0 * d, dst);
        } else {
            for (r, row) in dst.chunks_mut(d).enumerate() {
                self.read(i0 + r, row);
            }
        }
    }
}

/// The same data gathered into contiguous (B, H, N, D) order, in its own dtype.
fn gather(src: TensorRef<'_>, l: RowLayout, shape: [usize; 4]) -> Tensor {
    fn go<T: Copy>(s: &[T], l: RowLayout, [b, h, n, d]: [usize; 4]) -> Vec<T> {
        let mut v = Vec::with_capacity(b * h * n * d);
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..n {
                    let at = l.at(bi, hi, i);
                    v.extend_from_slice(&s[at..at + d]);
                }
            }
        }
        v
    }
    match src {
        TensorRef::F32(s) => Tensor::F32(go::<f32>(s, l, shape)),
        TensorRef::F16(s) => Tensor::F16(go::<f16>(s, l, shape)),
        TensorRef::BF16(s) => Tensor::BF16(go::<bf16>(s, l, shape)),
    }
}

/// Runs `f` on `args` with contiguous inputs: `args` itself when it already is, else a copy of
/// it whose strided tensors were gathered once (the one conversion every backend that does not
/// take strides goes through).
pub fn contiguous_then<R>(args: &AttnArgs<'_>, f: impl FnOnce(&AttnArgs<'_>) -> R) -> R {
    let layouts = args.layouts();
    if layouts.is_contiguous() {
        return f(args);
    }
    let p = args.problem();
    let own = |op: Operand, t: TensorRef<'_>| layouts.get(op).map(|l| gather(t, l, op.shape(p)));
    let (q, k, v) = (own(Operand::Q, args.q()), own(Operand::K, args.k()), own(Operand::V, args.v()));
    fn pick<'b>(o: &'b Option<Tensor>, t: TensorRef<'b>) -> TensorRef<'b> {
        o.as_ref().map_or(t, Tensor::as_ref)
    }
    let c = args.with_inputs(pick(&q, args.q()), pick(&k, args.k()), pick(&v, args.v()));
    f(&c)
}
