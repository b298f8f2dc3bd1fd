//! The problem description every backend receives: shapes, scale, mask and dtype.
//!
//! # Layout
//! All tensors are dense, row-major **(B, H, N, D)**, PyTorch's `scaled_dot_product_attention`
//! layout. We chose it over FlashAttention's (B, N, H, D) because (a) it is what `.npy` files
//! saved from PyTorch/NumPy attention code usually hold, so `attnkit run` needs no transpose, and
//! (b) one (batch, head) slice is one contiguous N×D matrix, which is what a GEMM or a tiled CPU
//! kernel wants to stream. Strided views are not supported: pass contiguous buffers.
//!
//! # Mask semantics (FlashAttention's)
//! Let `offset = N_k − N_q + δ`, with `δ` the diagonal shift (0 unless set with
//! [`Problem::with_diag_shift`]; see [`crate::modifiers`]), so query row `i`'s diagonal is key
//! `i + offset`. Query row `i` may attend key `j` iff
//! - causal: `j ≤ i + offset` (bottom-right aligned when N_q ≠ N_k and δ = 0), and
//! - window `(left, right)`: `i + offset − left ≤ j ≤ i + offset + right`, inclusive, where
//!   `-1` means unbounded on that side.
//!
//! Causal is the same as `right = 0`, and the two combine by intersection. Every mask is
//! therefore one contiguous band of keys per row, which [`Problem::key_range`] returns. A row
//! whose band is empty outputs zeros and has LSE = −∞.
//!
//! Packed variable-length sequences and used key lengths make the band depend on the batch
//! entry: [`Problem::key_range_at`] is the general form. ALiBi, softcap, sinks, additive bias
//! and boolean masks are in [`Problem::mods`]; their semantics are in [`crate::modifiers`].

use crate::error::{AttnError, Result};
pub mod modifiers;

use modifiers::Modifiers;
use serde::Serialize;
use std::fmt;

/// Input element type. Accumulation is always f32 or wider; output is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Unit roundoff of the storage format (half an ulp at 1.0).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F32 => f32::EPSILON as f64 / 2.0,
            DType::F16 => 0.000_976_562_5 / 2.0,
            DType::BF16 => 0.007_812_5 / 2.0,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(AttnError::invalid(format!("unknown dtype `{s}` (expected f32, f16 or bf16)"))),
        }
    }
}

/// Sliding window with inclusive bounds; `-1` is unbounded on that side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Window {
    pub left: i64,
    pub right: i64,
}

impl Window {
    pub const UNBOUNDED: Window = Window { left: -1, right: -1 };

    pub fn new(left: i64, right: i64) -> Self {
        Window { left, right }
    }

    pub fn is_unbounded(&self) -> bool {
        self.left < 0 && self.right < 0
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::UNBOUNDED
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.left, self.right)
    }
}

impl std::str::FromStr for Window {
    type Err = AttnError;
    /// Parses `L,R` (e.g. `128,0`; `-1` = unbounded).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || AttnError::invalid(format!("window `{s}` must be `L,R` with integers ≥ -1"));
        let (l, r) = s.split_once(',').ok_or_else(bad)?;
        let left: i64 = l.trim().parse().map_err(|_| bad())?;
        let right: i64 = r.trim().parse().map_err(|_| bad())?;
        if left < -1 || right < -1 {
            return Err(bad());
        }
        Ok(Window { left, right })
    }
}

/// One attention problem. Fields are public for convenience; every entry point calls
/// [`Problem::validate`] before touching data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// B
    pub batch: usize,
    /// H: query heads.
    pub heads: usize,
    /// H_kv: key/value heads. `heads % kv_heads == 0` (MHA: equal, GQA: divisor, MQA: 1).
    pub kv_heads: usize,
    /// N_q
    pub seq_q: usize,
    /// N_k (may differ from N_q: cross-attention, decoding).
    pub seq_k: usize,
    /// D, shared by Q, K and V.
    pub head_dim: usize,
    /// Softmax scale; [`Problem::new`] sets 1/√D.
    pub scale: f32,
    /// Bottom-right aligned causal mask.
    pub causal: bool,
    /// Sliding window (FlashAttention semantics).
    pub window: Window,
    /// Element type of Q, K and V.
    pub dtype: DType,
    /// ALiBi, softcap, sinks, varlen, used key lengths, bias and mask shapes (none by default).
    pub mods: Modifiers,
}

impl Problem {
    /// Self-attention, MHA, f32, non-causal, unbounded window, scale 1/√D.
    pub fn new(batch: usize, heads: usize, seq: usize, head_dim: usize) -> Self {
        Problem {
            batch,
            heads,
            kv_heads: heads,
            seq_q: seq,
            seq_k: seq,
            head_dim,
            scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
            causal: false,
            window: Window::UNBOUNDED,
            dtype: DType::F32,
            mods: Modifiers::default(),
        }
    }
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Self {
        self.kv_heads = kv_heads;
        self
    }
    pub fn with_seq_k(mut self, seq_k: usize) -> Self {
        self.seq_k = seq_k;
        self
    }
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Checks every invariant; the error names the offending values.
    pub fn validate(&self) -> Result<()> {
        let dims = [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("seq_q", self.seq_q),
            ("seq_k", self.seq_k),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in dims {
            if v == 0 {
                return Err(AttnError::shape(format!("{name} must be ≥ 1, got 0")));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(AttnError::shape(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        const MAX_DIM: usize = 1 << 31;
        if self.seq_q >= MAX_DIM || self.seq_k >= MAX_DIM || self.head_dim > 4096 {
            return Err(AttnError::shape(format!(
                "seq_q={}, seq_k={} must be < 2^31 and head_dim={} ≤ 4096",
                self.seq_q, self.seq_k, self.head_dim
            )));
        }
        // Element counts must fit in memory addressing with room to spare.
        for (name, n) in [("q/out", self.q_len_checked()), ("k/v", self.kv_len_checked())] {
            match n {
                Some(n) if n <= (isize::MAX as usize) / 8 => {}
                _ => return Err(AttnError::shape(format!("{name} element count overflows for {self}"))),
            }
        }
        if !self.scale.is_finite() || self.scale <= 0.0 {
            return Err(AttnError::invalid(format!("scale must be finite and > 0, got {}", self.scale)));
        }
        if self.window.left < -1 || self.window.right < -1 {
            return Err(AttnError::invalid(format!(
                "window bounds must be ≥ -1 (-1 = unbounded), got ({}, {})",
                self.window.left, self.window.right
            )));
        }
        modifiers::validate(self)
    }

    fn q_len_checked(&self) -> Option<usize> {
        self.batch.checked_mul(self.heads)?.checked_mul(self.seq_q)?.checked_mul(self.head_dim)
    }
    fn kv_len_checked(&self) -> Option<usize> {
        self.batch.checked_mul(self.kv_heads)?.checked_mul(self.seq_k)?.checked_mul(self.head_dim)
    }

    /// Elements of Q and of the output: B·H·N_q·D.
    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.seq_q * self.head_dim
    }
    /// Elements of K and of V: B·H_kv·N_k·D.
    pub fn kv_len(&self) -> usize {
        self.batch * self.kv_heads * self.seq_k * self.head_dim
    }
    /// Elements of the output (same as Q).
    pub fn out_len(&self) -> usize {
        self.q_len()
    }
    /// Elements of the LSE: B·H·N_q.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.seq_q
    }
    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// The KV head that query head `h` reads (GQA/MQA mapping).
    pub fn kv_head_of(&self, h: usize) -> usize {
        h / self.group_size()
    }

    /// Effective inclusive window after folding in `causal` (`None` = unbounded side).
    pub fn effective_window(&self) -> (Option<usize>, Option<usize>) {
        let left = (self.window.left >= 0).then_some(self.window.left as usize);
        let mut right = (self.window.right >= 0).then_some(self.window.right as usize);
        if self.causal {
            right = Some(0);
        }
        (left, right)
    }

    /// True when some (query, key) pair is masked out by the band (causal, window, varlen,
    /// used key lengths; a boolean mask is not counted here).
    pub fn is_masked(&self) -> bool {
        self.causal || !self.window.is_unbounded() || self.mods.varlen.is_some() || self.mods.seqused_k.is_some()
    }

    /// The half-open range `[lo, hi)` of keys that query row `i` may attend; `lo == hi` if none.
    /// Ignores varlen and used key lengths: use [`Problem::key_range_at`] when they may be set.
    #[inline]
    pub fn key_range(&self, i: usize) -> (usize, usize) {
        self.band(i, self.seq_q, self.seq_k)
    }

    /// Causal/window band of row `i` of an `nq × nk` sequence (bottom-right aligned).
    #[inline]
    pub(crate) fn band(&self, i: usize, nq: usize, nk: usize) -> (usize, usize) {
        let (left, right) = self.effective_window();
        // The one place the band's diagonal is computed (RowSeq::diag is the same for ALiBi).
        let diag = i as i64 + nk as i64 - nq as i64 + self.mods.diag_shift;
        let lo = match left {
            Some(l) => (diag - l as i64).max(0),
            None => 0,
        };
        let hi = match right {
            Some(r) => (diag + r as i64 + 1).min(nk as i64),
            None => nk as i64,
        };
        if hi <= lo { (0, 0) } else { (lo as usize, hi as usize) }
    }

    /// Allowed (query, key) pairs in one (batch, head) slice, averaged over the batch when
    /// used key lengths differ per entry (a boolean mask is not counted).
    pub fn allowed_pairs_per_head(&self) -> u64 {
        self.allowed_pairs() / self.batch.max(1) as u64
    }

    /// Allowed (query, key) pairs of one head summed over the batch (a boolean mask is not
    /// counted).
    pub fn allowed_pairs(&self) -> u64 {
        if !self.is_masked() {
            return (self.batch * self.seq_q) as u64 * self.seq_k as u64;
        }
        let per_entry = |b: usize| -> u64 {
            (0..self.seq_q)
                .map(|i| {
                    let (lo, hi) = self.key_range_at(b, i);
                    (hi - lo) as u64
                })
                .sum()
        };
        if self.mods.seqused_k.is_none() {
            return per_entry(0) * self.batch as u64;
        }
        (0..self.batch).map(per_entry).sum()
    }

    /// FLOPs of exact attention over the allowed pairs: 4·D per pair (2·D for QKᵀ, 2·D for PV),
    /// times H, summed over the batch. Every backend's GFLOP/s uses this count so they are
    /// comparable.
    pub fn flops(&self) -> f64 {
        4.0 * self.head_dim as f64 * self.allowed_pairs() as f64 * self.heads as f64
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "B={} H={} H_kv={} N_q={} N_k={} D={} scale={} causal={} window=({},{}) dtype={}",
            self.batch,
            self.heads,
            self.kv_heads,
            self.seq_q,
            self.seq_k,
            self.head_dim,
            self.scale,
            self.causal,
            self.window.left,
            self.window.right,
            self.dtype
        )?;
        for m in self.mods.active() {
            write!(f, " +{}", m.as_str())?;
            if m == modifiers::Modifier::DiagShift {
                write!(f, " {}", self.mods.diag_shift)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_is_bottom_right_aligned() {
        let p = Problem::new(1, 1, 2, 8).with_seq_k(5).with_causal(true);
        assert_eq!(p.key_range(0), (0, 4));
        assert_eq!(p.key_range(1), (0, 5));
        let p = Problem::new(1, 1, 5, 8).with_seq_k(2).with_causal(true);
        assert_eq!(p.key_range(0), (0, 0), "row 0 sees no key when N_q > N_k");
        assert_eq!(p.key_range(3), (0, 1));
    }

    #[test]
    fn window_bounds_are_inclusive() {
        let p = Problem::new(1, 1, 10, 8).with_window(Window::new(2, 1));
        assert_eq!(p.key_range(5), (3, 7));
        assert_eq!(p.key_range(0), (0, 2));
        assert_eq!(p.key_range(9), (7, 10));
        let p = p.with_causal(true);
        assert_eq!(p.key_range(5), (3, 6));
    }

    #[test]
    fn flops_count_allowed_pairs() {
        let p = Problem::new(2, 3, 4, 8);
        assert_eq!(p.flops(), 4.0 * 8.0 * 16.0 * 6.0);
        let c = p.clone().with_causal(true);
        assert_eq!(c.allowed_pairs_per_head(), 10);
    }

    #[test]
    fn validate_names_values() {
        let e = Problem::new(1, 6, 4, 8).with_kv_heads(4).validate().unwrap_err();
        assert!(e.to_string().contains("heads (6)") && e.to_string().contains("kv_heads (4)"), "{e}");
        let e = Problem::new(1, 1, 4, 8).with_scale(f32::NAN).validate().unwrap_err();
        assert!(e.to_string().contains("NaN"), "{e}");
        assert!("3,x".parse::<Window>().is_err());
        assert!("-2,0".parse::<Window>().is_err());
        assert_eq!("128,0".parse::<Window>().unwrap(), Window::new(128, 0));
    }
}
