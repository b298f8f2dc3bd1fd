//! What the tiled runner prepares once per call for score modifiers: the bias/mask data and a
//! block summary of the boolean mask (FlexAttention's block mask: for each 16×16 cell of each
//! mask slice, whether it allows any pair and whether it drops any), so the kernel skips key
//! panels a strip cannot use and applies the per-pair mask only where a cell is mixed. The
//! per-block pieces (ALiBi rows, the pair closure) are built by [`super::block`].

use crate::attention::AttnArgs;
use crate::modifiers::PairShape;
use crate::problem::Problem;
use crate::simd::flash::Cover;
use crate::simd::score_mod::PairTerms;
use crate::tensor::TensorRef;
use rayon::prelude::*;

/// Rows and keys per summary cell.
const CELL: usize = 16;
const ANY_TRUE: u8 = 1;
const ANY_FALSE: u8 = 2;

/// Per-cell flags of every mask slice.
pub(super) struct MaskSummary {
    nrb: usize,
    nkb: usize,
    cells: Vec<u8>,
}

impl MaskSummary {
    /// One pass over the mask (rows in parallel).
    fn build(p: &Problem, mask: &[bool], shape: PairShape) -> Self {
        let (nq, nk) = (p.seq_q, p.seq_k);
        let (nrb, nkb) = (nq.div_ceil(CELL), nk.div_ceil(CELL));
        let mut cells = vec![0u8; shape.slices() * nrb * nkb];
        cells.par_chunks_mut(nkb).enumerate().for_each(|(idx, out)| {
            let (slice, rb) = (idx / nrb, idx % nrb);
            for i in rb * CELL..((rb + 1) * CELL).min(nq) {
                let row = &mask[(slice * nq + i) * nk..(slice * nq + i + 1) * nk];
                // SAFETY: bool is one byte holding 0 or 1, so its slice reads as the same
                // number of u8 of the same values.
                let bytes = unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), row.len()) };
                let (whole, tail) = bytes.split_at(bytes.len() / CELL * CELL);
                for (c, chunk) in out.iter_mut().zip(whole.chunks_exact(CELL)) {
                    // Two words per cell row: any byte set / every byte set.
                    let w0 = u64::from_ne_bytes(chunk[..8].try_into().unwrap_or([0; 8]));
                    let w1 = u64::from_ne_bytes(chunk[8..].try_into().unwrap_or([0; 8]));
                    let ones = 0x0101_0101_0101_0101u64;
                    *c |= if w0 | w1 != 0 { ANY_TRUE } else { 0 } | if w0 & w1 != ones { ANY_FALSE } else { 0 };
                }
                if let Some(c) = out.last_mut().filter(|_| !tail.is_empty()) {
                    let t = tail.iter().filter(|&&x| x != 0).count();
                    *c |= if t > 0 { ANY_TRUE } else { 0 } | if t < tail.len() { ANY_FALSE } else { 0 };
                }
            }
        });
        MaskSummary { nrb, nkb, cells }
    }

    /// Bytes of the summary for `p` with a mask of `shape`.
    pub(super) fn bytes(p: &Problem, shape: PairShape) -> u64 {
        (shape.slices() * p.seq_q.div_ceil(CELL) * p.seq_k.div_ceil(CELL)) as u64
    }

    /// Coverage of rows `[i0, i1)` × keys `[j0, j1)` of one slice.
    pub(super) fn cover(&self, slice: usize, i0: usize, i1: usize, j0: usize, j1: usize) -> Cover {
        if i0 >= i1 || j0 >= j1 {
            return Cover::Empty;
        }
        let mut flags = 0u8;
        let base = slice * self.nrb * self.nkb;
        for rb in i0 / CELL..(i1 - 1) / CELL + 1 {
            let row = &self.cells[base + rb * self.nkb..base + (rb + 1) * self.nkb];
            for &c in &row[j0 / CELL..(j1 - 1) / CELL + 1] {
                flags |= c;
            }
        }
        match (flags & ANY_TRUE != 0, flags & ANY_FALSE != 0) {
            (false, _) => Cover::Empty,
            (true, false) => Cover::Full,
            (true, true) => Cover::Partial,
        }
    }
}

/// Per-call modifier state shared by every block.
pub(super) struct CallMods<'a> {
    pub p: &'a Problem,
    /// The kernel must modify scores in natural units (softcap, ALiBi or bias); a mask alone
    /// and sinks do not.
    pub scores: bool,
    bias: Option<(TensorRef<'a>, PairShape)>,
    mask: Option<(&'a [bool], PairShape)>,
    pub summary: Option<MaskSummary>,
}

impl<'a> CallMods<'a> {
    pub(super) fn new(args: &AttnArgs<'a>) -> Self {
        let p = args.problem();
        let bias = args.bias().zip(p.mods.bias);
        let mask = args.mask().zip(p.mods.mask);
        let summary = mask.map(|(m, shape)| MaskSummary::build(p, m, shape));
        let m = &p.mods;
        let scores = m.softcap.is_some() || m.alibi_slopes.is_some() || m.bias.is_some();
        CallMods { p, scores, bias, mask, summary }
    }

    /// The score modifiers of `p` alone (softcap, ALiBi): no bias or mask tensor.
    pub(super) fn scores_only(p: &'a Problem) -> Self {
        let scores = p.mods.softcap.is_some() || p.mods.alibi_slopes.is_some();
        CallMods { p, scores, bias: None, mask: None, summary: None }
    }

    /// The mask slice index of query head `(b, h)`.
    pub(super) fn mask_slice(&self, b: usize, h: usize) -> usize {
        self.mask.map_or(0, |(_, s)| s.slice_of(b, h))
    }

    /// Bias and mask of row `i` of head `(b, h)` from absolute key `j0` (`None` past N_k).
    pub(super) fn pair_terms(&self, b: usize, h: usize, i: usize, j0: usize, with_mask: bool) -> Option<PairTerms<'a>> {
        if j0 >= self.p.seq_k {
            return None;
        }
        Some(PairTerms {
            bias: self.bias.map(|(t, s)| (t, s.row_offset(self.p, b, h, i) + j0)),
            mask: self.mask.filter(|_| with_mask).map(|(m, s)| &m[s.row_offset(self.p, b, h, i) + j0..]),
        })
    }

    /// True when there is bias or mask data to apply.
    pub(super) fn has_pair(&self) -> bool {
        self.bias.is_some() || self.mask.is_some()
    }
}

/// The keys in `[k0, k1)` past their sequence's used length (`seqused_k`), as spans relative
/// to `k0`: their V must be zero once packed, so such a key never reaches an output even as
/// `0·NaN`.
pub(super) fn unused_spans(p: &Problem, b: usize, k0: usize, k1: usize) -> Vec<(usize, usize)> {
    let Some(used) = &p.mods.seqused_k else {
        return Vec::new();
    };
    let spans: Vec<(usize, usize)> = match &p.mods.varlen {
        Some(v) => (0..used.len()).map(|s| (v.cu_seqlens_k[s] + used[s], v.cu_seqlens_k[s + 1])).collect(),
        None => vec![(used[b], p.seq_k)],
    };
    spans
        .into_iter()
        .map(|(lo, hi)| (lo.max(k0), hi.min(k1)))
        .filter(|(lo, hi)| lo < hi)
        .map(|(lo, hi)| (lo - k0, hi - k0))
        .collect()
}

/// Zeroes the packed V rows (`vpack`, `DP` floats per key, key 0 = absolute key `k0`) of the
/// [`unused_spans`].
pub(super) fn zero_unused_values(p: &Problem, b: usize, k0: usize, k1: usize, dp: usize, vpack: &mut [f32]) {
    for (lo, hi) in unused_spans(p, b, k0, k1) {
        vpack[lo * dp..hi * dp].fill(0.0);
    }
}
