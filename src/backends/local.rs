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
//! Modifiers: the same as `flash-cpu` (same runner and score step), within the window band.
//!
//! Why it exists next to `flash-cpu` (which also skips masked tiles): flash-cpu packs every
//! key of each KV head up front (8 MiB per head at N = 16K, D = 64) and waits for a wave of
//! heads to be packed before computing; at narrow windows that packing traffic is as large as
//! the compute. `local` packs only what a segment of rows sees, into a per-thread buffer that
//! stays in L2, and never allocates anything N-sized.
//!
//! Measured speed against `flash-cpu` at equal windows lives in `reports/README.md`.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::Result;
use crate::grad::{GradsMut, Saved};
use crate::problem::Problem;
use crate::simd::Isa;
use crate::tiled::{IsaChoice, Packing, Plan, head_dim_reasons};

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

    fn plan<'a>(&'a self, isa: Isa, p: &'a Problem) -> Plan<'a> {
        let rows = segment_rows(p, 8 * isa.shape().mr);
        let packing = Packing::Segments { rows, band: band_keys(p, rows) };
        Plan { name: self.name(), isa, packing, range: Box::new(move |b, i| p.key_range_at(b, i)) }
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

/// Widest band a run of `rows` rows can see (keys); N_k when a side is unbounded.
fn band_keys(p: &Problem, rows: usize) -> usize {
    match p.effective_window() {
        (Some(l), Some(r)) => (rows + l + r).min(p.seq_k),
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
        self.plan(self.isa.for_sizing(), p).working_bytes(p)
    }
    /// Before flash-cpu only when the band is two-sided and covers at most 1/8 of the keys:
    /// there it was as fast at N ≤ 8K and faster at 16K, in a fraction of the memory (reports/).
    fn auto_rank(&self, p: &Problem) -> Option<u32> {
        match p.effective_window() {
            (Some(l), Some(r)) if (l + r + 1).saturating_mul(8) <= p.seq_k => Some(10),
            _ => None,
        }
    }
    /// The tiled runner packs Q and K/V rows through `AttnArgs::head_rows` (any row layout).
    fn takes_strides(&self) -> bool {
        true
    }
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let isa = self.isa.resolve_for(self.name())?;
        self.plan(isa, args.problem()).run(args, out, lse)
    }
    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    fn backward_working_bytes(&self, p: &Problem) -> Option<u64> {
        self.plan(self.isa.for_sizing(), p).backward_working_bytes(p)
    }
    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        let isa = self.isa.resolve_for(self.name())?;
        self.plan(isa, args.problem()).run_backward(args, saved, grads)
    }
}
