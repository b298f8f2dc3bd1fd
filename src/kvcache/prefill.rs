//! Chunked prefill over a [`KvCache`](super::KvCache): N_q new tokens (N_q·group above
//! [`DECODE_MAX_ROWS`]) attend to the cache on the tiled, GEMM-shaped kernel
//! ([`crate::tiled::rows`]), the pages read where they lie.
//!
//! Algorithm: per (query batch row, KV head), the sequence's valid keys `[leftpad, seqlen)` are
//! packed into the kernel's Kᵀ panels and padded V rows straight from their pages (widening
//! bf16, dequantizing int8 row by row: the panels are the kernel's own working copy, as for
//! any tiled run, not a gathered contiguous cache); then every query block of the group runs
//! over them. Each sequence's length enters as `seqused_k`, so row `i` sees the causal/window
//! band bottom-right aligned to its own length; ALiBi, softcap and sinks as in `flash-cpu`.
//!
//! Complexity: O(B·H·allowed pairs·D) time, O(len·D) packing per (row, KV head); memory one
//! head's panels per thread. Bitwise deterministic at any thread count. Results equal the
//! decode path's to the f32 rounding of a different summation order, not bitwise.

use super::PagedKv;
use super::append::target;
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use crate::simd::Isa;
use crate::simd::flash::{pack_k_rows, pack_v_rows};
use crate::tiled::rows;

pub use crate::tiled::DECODE_MAX_ROWS;

impl PagedKv<'_> {
    /// [`PagedKv::attend`]'s chunked prefill (checked arguments): `q` `(B_q, H, N_q, D)`.
    pub(super) fn prefill(
        &self,
        p: &Problem,
        q: &[f32],
        idx: Option<&[usize]>,
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<()> {
        let ix = &self.index;
        let lens: Vec<usize> = (0..p.batch).map(|i| ix.len_of(target(idx, i))).collect();
        let maxlen = lens.iter().copied().max().unwrap_or(0);
        let tp = Problem { seq_k: maxlen, ..p.clone() }.with_seqused_k(lens.clone());
        let range = |b: usize, i: usize| tp.key_range_at(b, i);
        // The process-wide choice (`ATTNKIT_SIMD` honoured, as in flash-cpu); an override this CPU
        // lacks is refused, not silently replaced.
        let isa = Isa::selected().map_err(|reason| AttnError::Unavailable { backend: "kvcache".into(), reason })?;
        let (d, kp) = (p.head_dim, isa.shape().kp);
        let pack = |b: usize, h: usize, kb: &mut Vec<f32>, vb: &mut Vec<f32>| {
            let (s, n) = (target(idx, b), lens[b]);
            let at = |j: usize| ix.row_of(s, ix.leftpad[s] + j, 0) + h;
            let nkeys = pack_k_rows(n, d, kp, kb, |j, row| self.k.read_row(at(j), row));
            (nkeys, pack_v_rows(n, d, kp, vb, |j, row| self.v.read_row(at(j), row)))
        };
        rows::run("kvcache", isa, &tp, q, &range, &pack, out, lse)
    }
}
