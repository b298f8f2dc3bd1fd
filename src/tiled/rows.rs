//! The tiled (GEMM-shaped) runner over K/V rows that come from a caller's row source rather
//! than a `(B, H_kv, N_k, D)` tensor: a KV cache's pages, read where they lie. Chunked prefill
//! onto a cache ([`crate::kvcache`]) runs here: N_q new tokens are too many rows for the
//! GEMV-shaped decode kernel.
//!
//! Algorithm: as [`super::waves`], on its wave loop ([`super::waves::Waves`]). Per (query batch row, KV head) the caller's `pack` fills
//! the Kᵀ panels and padded V rows ([`crate::simd::flash::pack_k_rows`] /
//! [`crate::simd::flash::pack_v_rows`] over its rows), one head per thread at a time; then
//! every query block of the heads packed runs in parallel ([`super::block`]). Each sequence's
//! own length enters as `seqused_k`, so its band is bottom-right aligned to it.
//!
//! Complexity: O(B·H·allowed pairs·D) time; memory: one head's panels per thread
//! (`N_k·(D + padded D)` f32 each) plus block scratch. Deterministic at any thread count (block
//! sizes depend on the problem only, a row's key loop is never split).
//! Caveats: f32 panels only (no bf16-pair kernel); no bias or boolean mask (a cache has none).

use super::RowRange;
use super::block::{BlockSpec, Scratch, run_query_block, scratch_bytes, tile_keys};
use super::modify::CallMods;
use super::waves::Waves;
use crate::budget::check_budget;
use crate::error::Result;
use crate::problem::Problem;
use crate::row_layout::HeadRows;
use crate::simd::Isa;
use crate::simd::flash::padded_dim;
use crate::tensor::TensorRef;

/// Fills one (query batch row `b`, KV head `h`)'s K panels and V rows; returns the packed key
/// count and the keys whose V row is not finite (as `pack_k_rows`/`pack_v_rows` do).
pub type HeadPacker<'a> = dyn Fn(usize, usize, &mut Vec<f32>, &mut Vec<f32>) -> (usize, Vec<usize>) + Sync + 'a;

/// One head's K panels, V rows, packed key count and non-finite V rows.
type Panels = (Vec<f32>, Vec<f32>, usize, Vec<usize>);

/// Runs `p` (Q `(B, H, N_q, D)` f32, keys `[0, seq_k)` per batch row, each row's band from
/// `range`) over the panels `pack` makes, into `out` (`(B, H, N_q, D)`) and `lse`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    name: &str,
    isa: Isa,
    p: &Problem,
    q: &[f32],
    range: &RowRange<'_>,
    pack: &HeadPacker<'_>,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let shape = isa.shape();
    let (nq, d, g) = (p.seq_q, p.head_dim, p.group_size());
    let bq = 16 * shape.mr;
    let tile = tile_keys(d, shape.kp);
    let nkv = p.batch * p.kv_heads;
    let threads = rayon::current_num_threads().max(1);
    let per_head = (p.seq_k.div_ceil(shape.kp) * shape.kp) as u64 * ((d + padded_dim(d)) * 4) as u64;
    let scratch = threads as u64 * scratch_bytes(bq, d, shape.mr, tile);
    let inflight = threads.min(nkv).max(1);
    let need = (inflight as u64).checked_mul(per_head).and_then(|b| b.checked_add(scratch));
    check_budget(name, "packed K/V panels of the KV heads in flight", need)?;
    let mods = CallMods::scores_only(p);
    let heads = Waves { nkv, inflight, group: g, nq, d, bq };
    let pack_head = |kvh: usize| {
        let (mut kb, mut vb) = (Vec::new(), Vec::new());
        let (nkeys, bad) = pack(kvh / p.kv_heads, kvh % p.kv_heads, &mut kb, &mut vb);
        (kb, vb, nkeys, bad)
    };
    heads.run(out, lse, pack_head, |scr: &mut Scratch, (kb, vb, nkeys, vbad): &Panels, bh, bi, o, l| {
        let spec = BlockSpec {
            isa,
            shape,
            problem: p,
            q: HeadRows { src: TensorRef::F32(q), base: bh * nq * d, stride: d },
            bh,
            i0: bi * bq,
            kbase: 0,
            range,
            nkeys: *nkeys,
            vbad,
            tile,
            mods: Some(&mods),
        };
        run_query_block(&spec, kb, vb, scr, o, l);
    });
    Ok(())
}
