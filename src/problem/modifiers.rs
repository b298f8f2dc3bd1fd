//! Score modifiers and masks beyond one key band per row: ALiBi, softcap, attention sinks,
//! additive bias, boolean mask, packed variable-length sequences and per-sequence key lengths.
//!
//! # Where each lives
//! Small, shape-like options live on [`Problem::mods`] ([`Modifiers`]) so every backend sees them
//! in `not_supported_reasons` and can refuse up front. The data-sized ones (bias, boolean mask)
//! declare their broadcast shape there too ([`PairShape`]); their data travels in
//! [`crate::AttnArgs::with_pair_data`], which checks it against that declaration.
//!
//! # Semantics (FlashAttention's and PyTorch's), in the order every exact backend applies them
//! With `s = scale · q_i·k_j` the scaled score of query row `i` and key `j`:
//! 1. **softcap** `c > 0`: `s ← c·tanh(s/c)` (FlashAttention `softcap`, Gemma 2).
//! 2. **ALiBi** slopes of shape (H,) or (S,H): `s ← s − slope[seq,h]·|i' + n_k − n_q + δ − j'|`
//!    with `i'`, `j'` the row and key inside the row's sequence, `n_q`, `n_k` that sequence's
//!    query and (used) key lengths and `δ` the diagonal shift (0 unless set): bottom-right
//!    aligned, FlashAttention `alibi_slopes`.
//!    [`alibi_slopes`] gives the standard geometric slopes.
//! 3. **bias** (f32/f16/bf16, shape (B|1, H|1, N_q, N_k), broadcast over size-1 dims):
//!    `s ← s + bias[b,h,i,j]` (PyTorch's float `attn_mask`). NaN or ±∞ in the bias stays in its row.
//! 4. **masks**: the pair is dropped unless `j` is in the row's band ([`Problem::key_range_at`]:
//!    causal and window per sequence, keys below the sequence's used length) and, with a
//!    **boolean mask** of the same broadcast shape, `mask[b,h,i,j]` is true (true = attend,
//!    PyTorch's bool `attn_mask`).
//! 5. **sinks** (H,): one logit `σ_h` per head joins each row's denominator with no value:
//!    `O = Σ e^{s_j−m} v_j / (e^{σ−m} + Σ e^{s_j−m})`, `LSE = ln(e^σ + Σ e^{s_j})`; a row with no
//!    allowed key gives O = 0 and LSE = σ (without sinks: O = 0, LSE = −∞).
//!
//! **Packed variable-length sequences** (`cu_seqlens_q`, `cu_seqlens_k`, FlashAttention's varlen
//! contract): a (1, H, total_q, D) problem with K/V (1, H_kv, total_k, D) holds S sequences;
//! sequence `s` owns rows `cu_q[s]..cu_q[s+1]` and keys `cu_k[s]..cu_k[s+1]`, attends only
//! within itself, and causal/windows are bottom-right aligned per sequence. Offsets start at 0,
//! never decrease, and end at the packed lengths.
//!
//! **Used key lengths** (`seqused_k`, FlashAttention's `seqused_k` / `cache_seqlens`): one
//! length per batch entry (per sequence under varlen); keys at or beyond it are neither read nor
//! counted, and the causal/window/ALiBi alignment uses it as the sequence's key length.
//!
//! **Diagonal shift** `δ` ([`Modifiers::diag_shift`], [`Problem::with_diag_shift`]): every row's
//! diagonal moves δ keys right, for causal, windows and ALiBi alike (row `i'`'s diagonal is key
//! `i' + n_k − n_q + δ`). It lets a rectangular block of a larger problem be computed on its
//! own: rows `[a, b)` × keys `[c, d)` of an N_q × N_k problem are the (b−a) × (d−c) problem with
//! `δ = a − c + N_k − N_q − ((d−c) − (b−a))`, keys outside `[c, d)` left out (ring attention's
//! chunk pairs, [`crate::dist`]). Backends that do not implement it refuse it by name. Its
//! magnitude must be below 2^40.
//!
//! Bias and mask index the packed coordinates (N_q = total_q, N_k = total_k) under varlen.

use super::Problem;
use crate::error::{AttnError, Result};
use serde::Serialize;

/// Broadcast shape of a per-pair tensor (bias or boolean mask): (batch, heads, N_q, N_k) with
/// `batch ∈ {1, B}` and `heads ∈ {1, H}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PairShape {
    pub batch: usize,
    pub heads: usize,
}

impl PairShape {
    /// Elements the tensor holds for `p`.
    pub fn len(&self, p: &Problem) -> Option<usize> {
        self.batch.checked_mul(self.heads)?.checked_mul(p.seq_q)?.checked_mul(p.seq_k)
    }
    /// Element index of `(b, h, i, 0)`.
    #[inline]
    pub fn row_offset(&self, p: &Problem, b: usize, h: usize, i: usize) -> usize {
        let (b, h) = (if self.batch == 1 { 0 } else { b }, if self.heads == 1 { 0 } else { h });
        ((b * self.heads + h) * p.seq_q + i) * p.seq_k
    }
    /// Number of distinct (batch, head) slices.
    pub fn slices(&self) -> usize {
        self.batch * self.heads
    }
    /// The slice index of `(b, h)`.
    pub fn slice_of(&self, b: usize, h: usize) -> usize {
        (if self.batch == 1 { 0 } else { b }) * self.heads + if self.heads == 1 { 0 } else { h }
    }
    fn check(&self, what: &str, p: &Problem) -> Result<()> {
        if (self.batch != 1 && self.batch != p.batch) || (self.heads != 1 && self.heads != p.heads) {
            return Err(AttnError::shape(format!(
                "{what} has shape ({}, {}, N_q, N_k) but must broadcast to (B={}, H={}): each of its first two dims must be 1 or equal",
                self.batch, self.heads, p.batch, p.heads
            )));
        }
        match self.len(p) {
            Some(n) if n <= isize::MAX as usize / 8 => Ok(()),
            _ => Err(AttnError::shape(format!("{what} element count overflows for {p}"))),
        }
    }
}

/// Packed variable-length sequences: cumulative offsets, FlashAttention's varlen contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Varlen {
    pub cu_seqlens_q: Vec<usize>,
    pub cu_seqlens_k: Vec<usize>,
}

/// The typed modifiers of one problem; `Default` is none.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Modifiers {
    /// ALiBi slopes, (H,) or (S,H) row-major with S the batch entries (sequences under varlen).
    pub alibi_slopes: Option<Vec<f32>>,
    /// Soft-capping constant `c > 0`.
    pub softcap: Option<f32>,
    /// One sink logit per query head, (H,).
    pub sinks: Option<Vec<f32>>,
    /// Packed variable-length sequences.
    pub varlen: Option<Varlen>,
    /// Used key length per batch entry (per sequence under varlen).
    pub seqused_k: Option<Vec<usize>>,
    /// Additive bias shape; data in [`crate::AttnArgs::with_pair_data`].
    pub bias: Option<PairShape>,
    /// Boolean mask shape; data in [`crate::AttnArgs::with_pair_data`].
    pub mask: Option<PairShape>,
    /// Diagonal shift (0 = none): moves every row's diagonal by this many keys, for a block of a
    /// larger problem computed on its own (ring attention's chunk pairs).
    pub diag_shift: i64,
}

/// One modifier, for refusal reasons and listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Modifier {
    Alibi,
    Softcap,
    Sinks,
    Varlen,
    SequsedK,
    Bias,
    Mask,
    DiagShift,
}

impl Modifier {
    pub fn as_str(self) -> &'static str {
        match self {
            Modifier::Alibi => "alibi",
            Modifier::Softcap => "softcap",
            Modifier::Sinks => "sinks",
            Modifier::Varlen => "varlen (cu_seqlens)",
            Modifier::SequsedK => "seqused_k",
            Modifier::Bias => "additive bias",
            Modifier::Mask => "boolean mask",
            Modifier::DiagShift => "diagonal shift",
        }
    }
}

impl Modifiers {
    /// The modifiers that are set.
    pub fn active(&self) -> Vec<Modifier> {
        let on = [
            (self.alibi_slopes.is_some(), Modifier::Alibi),
            (self.softcap.is_some(), Modifier::Softcap),
            (self.sinks.is_some(), Modifier::Sinks),
            (self.varlen.is_some(), Modifier::Varlen),
            (self.seqused_k.is_some(), Modifier::SequsedK),
            (self.bias.is_some(), Modifier::Bias),
            (self.mask.is_some(), Modifier::Mask),
            (self.diag_shift != 0, Modifier::DiagShift),
        ];
        on.into_iter().filter(|(set, _)| *set).map(|(_, m)| m).collect()
    }

    /// True when some modifier changes the scores themselves (the tiled kernel then scales and
    /// modifies scores before the softmax; without one it keeps the plain, faster path).
    pub fn changes_scores(&self) -> bool {
        self.alibi_slopes.is_some() || self.softcap.is_some() || self.bias.is_some() || self.mask.is_some()
    }

    /// One refusal reason per active modifier, for a backend that implements none of them.
    pub fn refusals(&self, backend: &str, why: &str) -> Vec<String> {
        self.refusals_except(backend, why, &[])
    }

    /// [`Modifiers::refusals`] for a backend that implements the modifiers in `implemented`.
    pub fn refusals_except(&self, backend: &str, why: &str, implemented: &[Modifier]) -> Vec<String> {
        self.active()
            .into_iter()
            .filter(|m| !implemented.contains(m))
            .map(|m| format!("{backend} does not implement {} ({why})", m.as_str()))
            .collect()
    }
}

/// The standard ALiBi slopes for `heads` heads (Press et al.; the FlashAttention/BLOOM helper):
/// a geometric sequence `2^(−8k/n)` for the nearest power of two `n ≤ heads`, interleaved with
/// the odd terms of the sequence for `2n` when `heads` is not a power of two.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    fn pow2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (0..n).map(|k| start.powi(k as i32 + 1)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    let n = 1usize << heads.ilog2();
    let mut s = pow2(n);
    if n < heads {
        s.extend(pow2(2 * n).into_iter().step_by(2).take(heads - n));
    }
    s.into_iter().map(|x| x as f32).collect()
}

/// Where query row `i` of batch entry `b` sits: its sequence and that sequence's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSeq {
    /// Sequence index (= b without varlen).
    pub seq: usize,
    /// Row inside the sequence.
    pub row: usize,
    /// The sequence's query length.
    pub nq: usize,
    /// Absolute index of the sequence's first key.
    pub k0: usize,
    /// The sequence's key length (its used length when `seqused_k` is set).
    pub nk: usize,
    /// The problem's diagonal shift ([`Modifiers::diag_shift`]).
    pub shift: i64,
}

impl RowSeq {
    /// Absolute key index of the row's diagonal (`k0 + row + nk − nq + shift`: bottom-right
    /// aligned, then shifted); may be negative or past the keys.
    pub fn diag(&self) -> i64 {
        self.k0 as i64 + self.row as i64 + self.nk as i64 - self.nq as i64 + self.shift
    }
}

/// Bound on |diagonal shift|: keeps every diagonal, shifted, far from i64 overflow (rows and
/// keys are below 2^31) and any used one exact in f64.
const MAX_DIAG_SHIFT: u64 = 1 << 40;

/// Validates the modifiers of `p` (called by [`Problem::validate`]).
pub(crate) fn validate(p: &Problem) -> Result<()> {
    let m = &p.mods;
    if let Some(c) = m.softcap
        && !(c.is_finite() && c > 0.0)
    {
        return Err(AttnError::invalid(format!("softcap must be finite and > 0, got {c}")));
    }
    // The kernels compute tanh's argument as (scale·s)·(1/c): a subnormal c (1/c = ∞) turns a
    // zero score into 0·∞ = NaN where the f64 oracle is finite (the fuzzer found softcap =
    // 1e-40), and so does a scale/c that overflows f32. Such a cap clips every score to ±c ≈ 0.
    if let Some(c) = m.softcap
        && !(c >= f32::MIN_POSITIVE && (p.scale / c).is_finite())
    {
        return Err(AttnError::invalid(format!(
            "softcap {c:e} is too small: it must be a normal f32 (≥ {:e}) with scale / softcap finite in f32 \
             (scale = {})",
            f32::MIN_POSITIVE,
            p.scale
        )));
    }
    if let Some(v) = &m.varlen {
        check_varlen(p, v)?;
    }
    let nseq = p.num_seqs();
    if let Some(s) = &m.alibi_slopes {
        if s.len() != p.heads && s.len() != nseq * p.heads {
            return Err(AttnError::shape(format!(
                "alibi slopes have {} values; expected (H,) = {} or (batch entries, H) = {}",
                s.len(),
                p.heads,
                nseq * p.heads
            )));
        }
        if let Some((i, x)) = s.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(AttnError::invalid(format!("alibi slope [{i}] must be finite, got {x}")));
        }
    }
    if let Some(s) = &m.sinks {
        if s.len() != p.heads {
            return Err(AttnError::shape(format!(
                "sinks have {} values; expected one per head (H = {})",
                s.len(),
                p.heads
            )));
        }
        if let Some((i, x)) = s.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(AttnError::invalid(format!("sink [{i}] must be finite, got {x}")));
        }
    }
    if let Some(u) = &m.seqused_k {
        if u.len() != nseq {
            return Err(AttnError::shape(format!(
                "seqused_k has {} lengths; expected one per batch entry ({nseq})",
                u.len()
            )));
        }
        for (s, &len) in u.iter().enumerate() {
            let cap = seq_keys(p, s);
            if len > cap {
                return Err(AttnError::invalid(format!("seqused_k[{s}] = {len} exceeds that entry's {cap} keys")));
            }
        }
    }
    if m.diag_shift.unsigned_abs() >= MAX_DIAG_SHIFT {
        return Err(AttnError::invalid(format!(
            "diagonal shift {} is out of range: its magnitude must be below 2^40",
            m.diag_shift
        )));
    }
    if let Some(b) = &m.bias {
        b.check("bias", p)?;
    }
    if let Some(b) = &m.mask {
        b.check("mask", p)?;
    }
    Ok(())
}

fn check_varlen(p: &Problem, v: &Varlen) -> Result<()> {
    if p.batch != 1 {
        return Err(AttnError::shape(format!(
            "varlen packs sequences along N: batch must be 1, got {} (cu_seqlens describe the sequences)",
            p.batch
        )));
    }
    if v.cu_seqlens_q.len() != v.cu_seqlens_k.len() || v.cu_seqlens_q.len() < 2 {
        return Err(AttnError::shape(format!(
            "cu_seqlens_q ({} offsets) and cu_seqlens_k ({} offsets) must have the same length ≥ 2",
            v.cu_seqlens_q.len(),
            v.cu_seqlens_k.len()
        )));
    }
    for (name, cu, total) in [("cu_seqlens_q", &v.cu_seqlens_q, p.seq_q), ("cu_seqlens_k", &v.cu_seqlens_k, p.seq_k)] {
        if cu[0] != 0 {
            return Err(AttnError::invalid(format!("{name}[0] must be 0, got {}", cu[0])));
        }
        if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
            return Err(AttnError::invalid(format!(
                "{name} must not decrease: [{i}] = {} > [{}] = {}",
                cu[i],
                i + 1,
                cu[i + 1]
            )));
        }
        let last = *cu.last().unwrap_or(&0);
        if last != total {
            return Err(AttnError::shape(format!("{name} ends at {last} but the packed length is {total}")));
        }
    }
    Ok(())
}

/// Keys of batch entry / sequence `s` before `seqused_k`.
fn seq_keys(p: &Problem, s: usize) -> usize {
    match &p.mods.varlen {
        Some(v) => v.cu_seqlens_k[s + 1] - v.cu_seqlens_k[s],
        None => p.seq_k,
    }
}

impl Problem {
    /// Batch entries the per-entry options index: B, or the number of sequences under varlen.
    pub fn num_seqs(&self) -> usize {
        match &self.mods.varlen {
            Some(v) => v.cu_seqlens_q.len().saturating_sub(1),
            None => self.batch,
        }
    }

    /// The sequence geometry of row `i` of batch entry `b` (validated problems only).
    #[inline]
    pub fn row_seq(&self, b: usize, i: usize) -> RowSeq {
        let (seq, row, nq, k0) = match &self.mods.varlen {
            None => (b, i, self.seq_q, 0),
            Some(v) => {
                let cu = &v.cu_seqlens_q;
                // The last sequence starting at or before i (empty sequences are skipped).
                let s = cu.partition_point(|&x| x <= i) - 1;
                (s, i - cu[s], cu[s + 1] - cu[s], v.cu_seqlens_k[s])
            }
        };
        let nk = match &self.mods.seqused_k {
            Some(u) => u[seq],
            None => seq_keys(self, seq),
        };
        RowSeq { seq, row, nq, k0, nk, shift: self.mods.diag_shift }
    }

    /// The half-open range `[lo, hi)` of keys that row `i` of batch entry `b` may attend: causal
    /// and window per sequence, bottom-right aligned, within the sequence's used keys. The one
    /// function the tiled runner, the oracle and `sdpa` all use.
    #[inline]
    pub fn key_range_at(&self, b: usize, i: usize) -> (usize, usize) {
        if self.mods.varlen.is_none() && self.mods.seqused_k.is_none() {
            return self.key_range(i);
        }
        let r = self.row_seq(b, i);
        let (lo, hi) = self.band(r.row, r.nq, r.nk);
        if lo == hi { (0, 0) } else { (r.k0 + lo, r.k0 + hi) }
    }

    /// ALiBi slope of query head `h` in batch entry `b`'s row `i` (0 without ALiBi).
    #[inline]
    pub fn alibi_slope(&self, b: usize, i: usize, h: usize) -> f32 {
        match &self.mods.alibi_slopes {
            None => 0.0,
            Some(s) if s.len() == self.heads => s[h],
            Some(s) => s[self.row_seq(b, i).seq * self.heads + h],
        }
    }

    /// The sink logit of query head `h`, if sinks are set.
    #[inline]
    pub fn sink(&self, h: usize) -> Option<f32> {
        self.mods.sinks.as_ref().map(|s| s[h])
    }

    pub fn with_alibi(mut self, slopes: Vec<f32>) -> Self {
        self.mods.alibi_slopes = Some(slopes);
        self
    }
    pub fn with_softcap(mut self, c: f32) -> Self {
        self.mods.softcap = Some(c);
        self
    }
    pub fn with_sinks(mut self, sinks: Vec<f32>) -> Self {
        self.mods.sinks = Some(sinks);
        self
    }
    /// Packs sequences: sets `cu_seqlens_q/k`; the problem must be (1, H, total_q, D) with
    /// `seq_k = total_k`.
    pub fn with_varlen(mut self, cu_seqlens_q: Vec<usize>, cu_seqlens_k: Vec<usize>) -> Self {
        self.mods.varlen = Some(Varlen { cu_seqlens_q, cu_seqlens_k });
        self
    }
    pub fn with_seqused_k(mut self, lens: Vec<usize>) -> Self {
        self.mods.seqused_k = Some(lens);
        self
    }
    /// Declares an additive bias of shape (batch, heads, N_q, N_k), each of batch/heads 1 or full.
    pub fn with_bias(mut self, batch: usize, heads: usize) -> Self {
        self.mods.bias = Some(PairShape { batch, heads });
        self
    }
    /// Moves every row's diagonal `shift` keys right (module docs: **Diagonal shift**).
    pub fn with_diag_shift(mut self, shift: i64) -> Self {
        self.mods.diag_shift = shift;
        self
    }
    /// Declares a boolean mask of shape (batch, heads, N_q, N_k), each of batch/heads 1 or full.
    pub fn with_mask(mut self, batch: usize, heads: usize) -> Self {
        self.mods.mask = Some(PairShape { batch, heads });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_slopes_match_the_published_values() {
        // 8 heads: 2^-1 .. 2^-8; 12 heads: the 8 plus the odd terms of the 16-head sequence.
        let s8 = alibi_slopes(8);
        assert_eq!(s8, (1..=8).map(|k| 2f32.powi(-k)).collect::<Vec<_>>());
        let s12 = alibi_slopes(12);
        assert_eq!(&s12[..8], &s8[..]);
        assert_eq!(s12[8], 2f32.powf(-0.5));
        assert_eq!(s12[9], 2f32.powf(-1.5));
        assert_eq!(s12.len(), 12);
    }

    #[test]
    fn varlen_rows_see_only_their_sequence_bottom_right_aligned() {
        let p = Problem::new(1, 1, 7, 8).with_seq_k(9).with_causal(true).with_varlen(vec![0, 3, 7], vec![0, 5, 9]);
        p.validate().unwrap();
        // Sequence 0: 3 rows, 5 keys: row 0 sees keys 0..3.
        assert_eq!(p.key_range_at(0, 0), (0, 3));
        assert_eq!(p.key_range_at(0, 2), (0, 5));
        // Sequence 1: 4 rows, 4 keys (5..9): row 3 (first) sees key 5 only.
        assert_eq!(p.key_range_at(0, 3), (5, 6));
        assert_eq!(p.key_range_at(0, 6), (5, 9));
        let u = p.clone().with_seqused_k(vec![2, 4]);
        // Used length 2 < 3 rows: row 0's diagonal is at key −1, so it sees nothing.
        assert_eq!(u.key_range_at(0, 0), (0, 0));
        assert_eq!(u.key_range_at(0, 2), (0, 2));
    }

    #[test]
    fn bad_modifiers_name_the_value() {
        let base = Problem::new(1, 2, 4, 8);
        let cases: Vec<(Problem, &str)> = vec![
            (base.clone().with_softcap(-1.0), "-1"),
            (base.clone().with_softcap(1e-40), "softcap 1e-40 is too small"),
            (base.clone().with_scale(1e30).with_softcap(1e-9), "scale = 1000000000000000000000000000000"),
            (base.clone().with_alibi(vec![0.5; 3]), "3 values"),
            (base.clone().with_alibi(vec![0.5, f32::NAN]), "slope [1]"),
            (base.clone().with_sinks(vec![0.0, f32::INFINITY]), "sink [1]"),
            (base.clone().with_varlen(vec![0, 3, 2, 4], vec![0, 1, 2, 4]), "[1] = 3 > [2] = 2"),
            (base.clone().with_varlen(vec![0, 3], vec![0, 4]), "ends at 3"),
            (base.clone().with_seqused_k(vec![5]), "seqused_k[0] = 5"),
            (base.clone().with_bias(2, 1), "(2, 1, N_q, N_k)"),
            (base.clone().with_diag_shift(-(1 << 40)), "diagonal shift -1099511627776"),
            (Problem::new(2, 1, 4, 8).with_varlen(vec![0, 4], vec![0, 4]), "batch must be 1, got 2"),
        ];
        for (p, want) in cases {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} should contain {want}");
        }
    }
}
