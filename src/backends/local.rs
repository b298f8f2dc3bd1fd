//! `local`: exact sliding-window (sparse-local) attention.
//!
//! Semantics: FlashAttention's inclusive window `(left, right)` from [`Problem::window`],
//! intersected with `causal` (which is `right = 0`): row `i` attends keys
//! `i + (N_k − N_q) − left ..= i + (N_k − N_q) + right`. Causal local attention is `(w, 0)`.
//! Other conventions map as: Mistral / Hugging Face `sliding_window = W` (W keys including the
//! current one) → `(W − 1, 0)` with causal; Longformer's two-sided window `w`
//! (w/2 keys each side) → `(w/2, w/2)`.
//!
//! Algorithm: the flash-cpu kernel (same SIMD microkernels and online-softmax step,
//! [`crate::simd::flash`]) with tiling for narrow bands: each task is a segment of about 4·w
//! query rows (256..2048) of one head, which packs only the keys its rows can see
//! (`[min lo, max hi)`, ≤ segment + w keys) into thread-local panels once; its blocks of `8·MR`
//! rows (48 with AVX-512) slide over that band as a single tile, and each `MR`-row strip trims
//! its key range to whole panels, so per row about `w + MR + KP` keys are computed. Rayon runs
//! all (batch, head, segment) tasks in one pool pass (no per-head packing waves, no barriers).
//!
//! Complexity: O(B·H·N_q·(w + MR + KP)·D) time, O((segment + w)·D) memory per thread: with
//! both sides bounded nothing is N_k-sized. Bitwise deterministic for any thread count (segment and block sizes depend
//! on the problem only).
//!
//! One-sided windows: if exactly one side is unbounded (e.g. plain causal, `(-1, 0)`), `local`
//! still runs and is exact, but every block then packs up to N_k keys and the cost is that of
//! dense causal attention with smaller blocks; `flash-cpu` is the better choice there. Both
//! sides unbounded is refused (it is not local attention; use `flash-cpu`).
//!
//! Why it exists next to `flash-cpu` (which also skips masked tiles): flash-cpu packs every
//! key of each KV head up front (8 MiB per head at N = 16K, D = 64) and waits for a wave of
//! heads to be packed before computing; at narrow windows that packing traffic is as large as
//! the compute. `local` packs only what a segment of rows sees, into a per-thread buffer that
//! stays in L2, and never allocates anything N-sized.
//!
//! Measured (2-core AVX-512 EPYC, shared; f32, B=1, H=8, N=16384, D=64, causal window (w, 0);
//! median of 11 reps with local and flash-cpu interleaved rep by rep,
//! `cargo run --release --example flash_cpu_speed -- local 16384 64 8 11`), the quietest run:
//!
//! | w   | local GFLOP/s | flash-cpu GFLOP/s | local speedup (two noisier runs) |
//! |-----|---------------|-------------------|----------------------------------|
//! | 32  | 47            | 26                | 1.78× (1.70×, 1.92×)             |
//! | 64  | 74            | 46                | 1.65× (1.49×, 1.78×)             |
//! | 128 | 109           | 73                | 1.45× (1.44×, 1.40×)             |
//! | 256 | 142           | 107               | 1.30× (1.27×, 1.29×)             |
//!
//! GFLOP/s count allowed pairs only (`Problem::flops`); at w = 32 a 6-row strip still computes
//! whole 32-key panels, about 2× the allowed pairs, hence the low absolute rate.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::backends::flash_cpu::{
    BlockSpec, IsaChoice, Scratch, block_tasks, head_dim_reasons, run_query_block, scratch_bytes,
};
use crate::budget::check_budget;
use crate::error::Result;
use crate::problem::Problem;
use crate::simd::Isa;
use crate::simd::flash::{pack_k, pack_v, padded_dim};
use rayon::prelude::*;

/// The local (sliding-window) backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local {
    isa: IsaChoice,
}

impl Local {
    pub fn new() -> Self {
        Local::default()
    }

    /// Forces one SIMD path; `Unavailable` if this CPU lacks it.
    pub fn with_isa(isa: Isa) -> Result<Self> {
        Ok(Local { isa: IsaChoice::forced(isa, "local")? })
    }

    /// The path `compute` will run.
    pub fn isa(&self) -> std::result::Result<Isa, String> {
        self.isa.resolve()
    }
}

/// Query rows per task: about four window widths (so a segment's packed band is at most ~1.25×
/// its own keys), between 256 and 2048, a multiple of `bq`. Depends only on the problem, never on
/// the thread count, so the packed-panel alignment, hence every rounding, is reproducible.
fn segment_rows(p: &Problem, bq: usize) -> usize {
    let w = match p.effective_window() {
        (Some(l), Some(r)) => l + r + 1,
        _ => p.seq_k,
    };
    (4 * w).clamp(256, 2048).div_ceil(bq) * bq
}

/// Widest band a run of `bq` rows can see (keys); N_k when a side is unbounded.
fn band_keys(p: &Problem, bq: usize) -> usize {
    match p.effective_window() {
        (Some(l), Some(r)) => (bq + l + r).min(p.seq_k),
        _ => p.seq_k,
    }
}

impl Attention for Local {
    fn name(&self) -> &str {
        "local"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn availability(&self) -> std::result::Result<(), String> {
        self.isa().map(|_| ())
    }
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        let mut r = head_dim_reasons(problem);
        if problem.effective_window() == (None, None) {
            r.push(
                "local needs a window: set window (left,right) or causal with a left bound; \
                 for full attention use flash-cpu"
                    .to_string(),
            );
        }
        r
    }

    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let isa = self.isa().unwrap_or_else(|_| Isa::best());
        segment_bytes(p, isa, band_keys(p, segment_rows(p, 8 * isa.shape().mr)))
    }
    /// Before flash-cpu only when the band is two-sided and covers at most 1/8 of the keys:
    /// then it is as fast at N ≤ 8K and 1.3–1.8× faster at 16K, in a fraction of the memory
    /// (measured when `auto` was written; see reports/).
    fn auto_rank(&self, p: &Problem) -> Option<u32> {
        match p.effective_window() {
            (Some(l), Some(r)) if (l + r + 1).saturating_mul(8) <= p.seq_k => Some(10),
            _ => None,
        }
    }

    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        let isa = self.isa.resolve_for(self.name())?;
        let bq = 8 * isa.shape().mr;
        let seg = segment_rows(p, bq);
        let band = band_keys(p, seg);
        run_segments(self.name(), isa, args, out, lse, seg, band, &|i| p.key_range(i))
    }
}

/// Working set of [`run_segments`] with a band of `band` keys: one packed band panel plus block
/// scratch per thread of the current pool.
pub(crate) fn segment_bytes(p: &Problem, isa: Isa, band: usize) -> Option<u64> {
    let shape = isa.shape();
    let d = p.head_dim;
    let band = band.min(p.seq_k).div_ceil(shape.kp) * shape.kp + shape.kp;
    let per_thread = scratch_bytes(8 * shape.mr, d, shape.mr, band) + (band * (d + padded_dim(d)) * 4) as u64;
    per_thread.checked_mul(rayon::current_num_threads().max(1) as u64)
}

/// Runs query segments of `seg` rows as `local` does: per (batch, head, segment) task, pack the
/// keys the segment's rows may see under `range` (at most `band` keys) once, then run its
/// `8·MR`-row blocks over them. Shared with `local-block`, which only changes `range`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_segments(
    name: &str,
    isa: Isa,
    args: &AttnArgs<'_>,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    seg: usize,
    band: usize,
    range: &(dyn Fn(usize) -> (usize, usize) + Sync),
) -> Result<()> {
    let p = args.problem();
    let shape = isa.shape();
    let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
    check_budget(name, "per-thread band panels", segment_bytes(p, isa, band))?;
    let bq = 8 * shape.mr;

    let tasks = block_tasks(out, lse, nq, d, seg);
    tasks.into_par_iter().for_each_init(Scratch::default, |scr, (bh, si, o, mut l)| {
        let i0 = si * seg;
        let rows = o.len() / d;
        let (mut lo, mut hi) = (usize::MAX, 0);
        for i in i0..i0 + rows {
            let (a, b) = range(i);
            if a < b {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if lo >= hi {
            (lo, hi) = (0, 0);
        }
        let (b, h) = (bh / p.heads, bh % p.heads);
        let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * nk * d;
        // Pack the segment's band once; its blocks slide over it.
        let mut kpack = std::mem::take(&mut scr.kpack);
        let mut vpack = std::mem::take(&mut scr.vpack);
        let nkeys = pack_k(args.k(), kv_base, lo, hi, d, shape.kp, &mut kpack);
        pack_v(args.v(), kv_base, lo, hi, d, shape.kp, &mut vpack);
        for (bi, ob) in o.chunks_mut(bq * d).enumerate() {
            let lb = l.as_deref_mut().map(|l| &mut l[bi * bq..bi * bq + ob.len() / d]);
            let spec = BlockSpec {
                isa,
                shape,
                problem: p,
                q: args.q(),
                bh,
                i0: i0 + bi * bq,
                kbase: lo,
                range,
                nkeys,
                tile: nkeys.max(shape.kp),
            };
            run_query_block(&spec, &kpack, &vpack, scr, ob, lb);
        }
        scr.kpack = kpack;
        scr.vpack = vpack;
    });
    Ok(())
}
