//! `flash-cpu`: exact FlashAttention-style tiled attention on the CPU with explicit SIMD.
//!
//! Algorithm: per (batch, KV head) K is packed once into Kᵀ panels and V into zero-padded rows
//! (f16/bf16 widened to f32 while packing), shared by every query head of the GQA group. Query
//! blocks of `16·MR` rows (96 with AVX-512) run in parallel (rayon over batch × head × block);
//! each streams key tiles sized to keep the tile's K and V panels in L2 (~192 KiB), computes
//! S = Q·Kᵀ with an `MR × KP` register-blocked microkernel, applies the online softmax in base 2
//! (running max/sum, O rescaled; [`crate::simd::flash::online_softmax_step`]) and accumulates
//! O += P·V with an `MR × 64`-column microkernel. The N×N score matrix never exists.
//! Causal and window masks skip whole tiles and panels outside each strip's band and mask only
//! boundary tiles; rows with no allowed key get O = 0, LSE = −∞.
//!
//! Complexity: O(B·H·(allowed pairs)·D) time — about half of full for causal, O(N·w·D) for a
//! window w; memory O(N_k·D) per KV head in flight (at least one per thread) plus O(block·D)
//! scratch per thread. Results are bitwise identical for any thread count (the key loop of a
//! row is never split across threads).
//!
//! SIMD: AVX-512F, AVX2+FMA, NEON, portable fallback, chosen at run time
//! ([`crate::simd::Isa::selected`], `ATTNKIT_SIMD` override) or forced with
//! [`FlashCpu::with_isa`]. exp2 max relative error 7.9e-8 (FMA paths), 9.8e-8 portable (see `src/simd/flash.rs`).
//!
//! Caveats: head_dim is capped at 256 (registers/L1 sizing; larger D is refused in
//! `not_supported_reasons`). D not a multiple of 16 pads V/O rows to the next multiple of 16.
//!
//! Speed (2-core AVX-512 EPYC, shared with other jobs; f32, B=1, H=8, N=4096, D=64; median of
//! 5 reps, `examples/flash_cpu_speed.rs` alternated with PyTorch 2.15's CPU SDPA
//! (`/work/shared/peers/torch_sdpa.py`)). Five quiet pairs with the final code: 190–194 GFLOP/s
//! vs torch's 149–161, 1.18–1.29× (median 1.23×); 0.90–0.93 of the `gemm` crate's f32 GEMM
//! (2048³, 205–211 GFLOP/s) timed in the same process; causal takes 0.49–0.50 of the non-causal
//! time and is 1.31–1.46× torch's causal. Nine earlier pairs under heavy load: median 1.22×
//! (one outlier at 0.60× where only our run was hit). D = 128: 194 vs 160 (1.21×); D = 32: 173
//! vs 141 (1.23×). AVX2 path ≈ 0.9× the AVX-512 one on this CPU; portable ≈ 0.3×.
//! Narrow windows are better served by `local`.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use crate::simd::Isa;
use crate::simd::flash::{BlockJob, KernelShape, finish_rows, pack_k, pack_q, pack_v, padded_dim};
use crate::tensor::TensorRef;
use rayon::prelude::*;

/// Largest head dimension `flash-cpu` and `local` accept.
pub const MAX_HEAD_DIM: usize = 256;

/// Which SIMD path a CPU backend runs: the process-wide choice ([`Isa::selected`]) or a forced one.
#[derive(Clone, Copy, Debug, Default)]
pub struct IsaChoice(Option<Isa>);

impl IsaChoice {
    /// Forces `isa`; `Unavailable` (naming `backend`) if this CPU lacks it.
    pub fn forced(isa: Isa, backend: &str) -> Result<Self> {
        isa.require(backend)?;
        Ok(IsaChoice(Some(isa)))
    }

    /// The path that will run, or why none can (a bad `ATTNKIT_SIMD`).
    pub fn resolve(self) -> std::result::Result<Isa, String> {
        self.0.map_or_else(Isa::selected, Ok)
    }

    pub(crate) fn resolve_for(self, backend: &str) -> Result<Isa> {
        self.resolve().map_err(|reason| AttnError::Unavailable { backend: backend.into(), reason })
    }
}

/// The flash-cpu backend. `new()` uses the process-wide SIMD choice; `with_isa` forces a path.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlashCpu {
    isa: IsaChoice,
}

impl FlashCpu {
    pub fn new() -> Self {
        FlashCpu::default()
    }

    /// Forces one SIMD path; `Unavailable` if this CPU lacks it.
    pub fn with_isa(isa: Isa) -> Result<Self> {
        Ok(FlashCpu { isa: IsaChoice::forced(isa, "flash-cpu")? })
    }

    /// The path `compute` will run.
    pub fn isa(&self) -> std::result::Result<Isa, String> {
        self.isa.resolve()
    }
}

/// Reasons shared by flash-cpu and local.
pub(crate) fn head_dim_reasons(p: &Problem) -> Vec<String> {
    if p.head_dim > MAX_HEAD_DIM {
        vec![format!("head_dim {} > {MAX_HEAD_DIM} (kernel tiles are sized for D ≤ {MAX_HEAD_DIM})", p.head_dim)]
    } else {
        Vec::new()
    }
}

/// Keys per L2 tile: K and V panels of one tile take about 192 KiB.
fn tile_keys(d: usize, kp: usize) -> usize {
    let dp = padded_dim(d);
    let keys = (24 * 1024 / dp).clamp(kp, 1024);
    (keys / kp * kp).max(kp)
}

/// Per-thread scratch reused across query blocks.
#[derive(Default)]
pub(crate) struct Scratch {
    q: Vec<f32>,
    ranges: Vec<(usize, usize)>,
    acc: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    pub(crate) kpack: Vec<f32>,
    pub(crate) vpack: Vec<f32>,
}

/// Scratch bytes one thread holds for a block of `bq` rows and `tile` keys (packed K/V excluded).
pub(crate) fn scratch_bytes(bq: usize, d: usize, mr: usize, tile: usize) -> u64 {
    ((bq * (d + padded_dim(d) + 2) + mr * tile) * 4) as u64
}

/// Where one query block's inputs live and how to tile it.
pub(crate) struct BlockSpec<'a> {
    pub isa: Isa,
    pub shape: KernelShape,
    pub problem: &'a Problem,
    pub q: TensorRef<'a>,
    /// Query head (flattened b·H + h) and first row of the block.
    pub bh: usize,
    pub i0: usize,
    /// Packed key 0 is absolute key `kbase`.
    pub kbase: usize,
    /// Row `i`'s allowed keys `[lo, hi)` in absolute key indices (`Problem::key_range` or a
    /// narrower pattern such as `local-block`'s).
    pub range: &'a (dyn Fn(usize) -> (usize, usize) + Sync),
    pub nkeys: usize,
    pub tile: usize,
}

/// Runs one query block on packed K/V: loads Q, builds row ranges, runs the ISA kernel,
/// normalizes into `out` (rows × D) and `lse`. Shared by flash-cpu and local.
pub(crate) fn run_query_block(
    spec: &BlockSpec<'_>,
    kpack: &[f32],
    vpack: &[f32],
    scr: &mut Scratch,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let p = spec.problem;
    let d = p.head_dim;
    let rows = out.len() / d;
    let rows_pad = rows.div_ceil(spec.shape.mr) * spec.shape.mr;
    pack_q(spec.q, (spec.bh * p.seq_q + spec.i0) * d, rows, rows_pad, d, &mut scr.q);
    scr.ranges.clear();
    for i in spec.i0..spec.i0 + rows {
        let (lo, hi) = (spec.range)(i);
        let (lo, hi) = (lo.max(spec.kbase) - spec.kbase, hi.max(spec.kbase) - spec.kbase);
        scr.ranges.push(if lo < hi { (lo, hi) } else { (0, 0) });
    }
    // Pad rows copy the last real row's band so they never force masking; their output is dropped.
    let last = scr.ranges[rows - 1];
    scr.ranges.resize(rows_pad, last);
    let dp = padded_dim(d);
    scr.acc.resize(rows_pad * dp, 0.0);
    scr.s.resize(spec.shape.mr * spec.tile, 0.0);
    scr.m.resize(rows_pad, 0.0);
    scr.l.resize(rows_pad, 0.0);
    let mut job = BlockJob {
        d,
        q: &scr.q,
        scale_log2: p.scale * std::f32::consts::LOG2_E,
        ranges: &scr.ranges,
        kpack,
        vpack,
        nkeys: spec.nkeys,
        tile: spec.tile,
        acc: &mut scr.acc,
        s: &mut scr.s,
        m: &mut scr.m,
        l: &mut scr.l,
    };
    spec.isa.run_block(&mut job);
    finish_rows(&scr.acc, &scr.m, &scr.l, d, out, lse);
}

/// Splits `out` (and `lse`) of consecutive query heads into per-block pieces: item
/// `(head index within the slice, block index, out rows, lse rows)`.
pub(crate) type BlockTask<'a> = (usize, usize, &'a mut [f32], Option<&'a mut [f32]>);

pub(crate) fn block_tasks<'a>(
    out: &'a mut [f32],
    lse: Option<&'a mut [f32]>,
    nq: usize,
    d: usize,
    bq: usize,
) -> Vec<BlockTask<'a>> {
    let nblocks = nq.div_ceil(bq);
    let outs = out.chunks_mut(nq * d).flat_map(|oh| oh.chunks_mut(bq * d));
    let lses: Vec<Option<&mut [f32]>> = match lse {
        Some(l) => l.chunks_mut(nq).flat_map(|lh| lh.chunks_mut(bq)).map(Some).collect(),
        None => Vec::new(),
    };
    let mut lses = lses.into_iter();
    outs.enumerate().map(|(idx, o)| (idx / nblocks, idx % nblocks, o, lses.next().flatten())).collect()
}

/// (packed K/V bytes of one KV head, scratch bytes of every thread of the current pool).
fn wave_bytes(p: &Problem, shape: KernelShape) -> (u64, u64) {
    let d = p.head_dim;
    let packed_keys = p.seq_k.div_ceil(shape.kp) * shape.kp;
    let per_head = (packed_keys as u64).saturating_mul(((d + padded_dim(d)) * 4) as u64);
    let threads = rayon::current_num_threads().max(1) as u64;
    let scratch = threads.saturating_mul(scratch_bytes(16 * shape.mr, d, shape.mr, tile_keys(d, shape.kp)));
    (per_head, scratch)
}

impl Attention for FlashCpu {
    fn name(&self) -> &str {
        "flash-cpu"
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
        head_dim_reasons(problem)
    }
    /// One KV head's packed K/V panels plus per-thread scratch: waves shrink to this before
    /// `compute` refuses.
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let shape = self.isa().unwrap_or_else(|_| Isa::best()).shape();
        let (per_head, scratch) = wave_bytes(p, shape);
        per_head.checked_add(scratch)
    }
    fn auto_rank(&self, _problem: &Problem) -> Option<u32> {
        Some(20)
    }

    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], mut lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        let isa = self.isa.resolve_for(self.name())?;
        let shape = isa.shape();
        let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
        let g = p.group_size();
        let bq = 16 * shape.mr;
        let tile = tile_keys(d, shape.kp);
        let nkv = p.batch * p.kv_heads;
        let threads = rayon::current_num_threads().max(1);
        let tasks_per_kv = g * nq.div_ceil(bq);
        let packed_keys = nk.div_ceil(shape.kp) * shape.kp;
        let (per_head, scratch) = wave_bytes(p, shape);
        // KV heads packed per wave: enough to keep every thread busy, and up to 32 MiB of
        // packed panels so small heads do not pay one pool barrier each.
        let by_mem = ((32u64 << 20) / per_head.max(1)) as usize;
        let wanted = threads.max((8 * threads).div_ceil(tasks_per_kv)).max(by_mem).min(nkv).max(1);
        // Fewer heads in flight (down to one) rather than refusing when the budget is tight.
        let fits = (crate::budget::mem_budget().saturating_sub(scratch) / per_head.max(1)) as usize;
        let inflight = wanted.min(fits).max(1);
        let need = (inflight as u64).checked_mul(per_head).and_then(|b| b.checked_add(scratch));
        check_budget(self.name(), "packed K/V panels of the KV heads in flight", need)?;

        for w0 in (0..nkv).step_by(inflight) {
            let w1 = (w0 + inflight).min(nkv);
            let packed: Vec<(Vec<f32>, Vec<f32>)> = (w0..w1)
                .into_par_iter()
                .map(|kvh| {
                    let (mut kb, mut vb) = (Vec::new(), Vec::new());
                    pack_k(args.k(), kvh * nk * d, 0, nk, d, shape.kp, &mut kb);
                    pack_v(args.v(), kvh * nk * d, 0, nk, d, shape.kp, &mut vb);
                    (kb, vb)
                })
                .collect();
            let o_wave = &mut out[w0 * g * nq * d..w1 * g * nq * d];
            let l_wave = lse.as_deref_mut().map(|l| &mut l[w0 * g * nq..w1 * g * nq]);
            let tasks = block_tasks(o_wave, l_wave, nq, d, bq);
            tasks.into_par_iter().for_each_init(Scratch::default, |scr, (hi, bi, o, l)| {
                let (kb, vb) = &packed[hi / g];
                let spec = BlockSpec {
                    isa,
                    shape,
                    problem: p,
                    q: args.q(),
                    bh: w0 * g + hi,
                    i0: bi * bq,
                    kbase: 0,
                    range: &|i| p.key_range(i),
                    nkeys: packed_keys,
                    tile,
                };
                run_query_block(&spec, kb, vb, scr, o, l);
            });
        }
        Ok(())
    }
}
