//! The one tiled CPU runner that `flash-cpu`, `local` and `local-block` are built on.
//!
//! Every exact tiled CPU backend is the same computation: pack K (as Kᵀ panels) and V (as padded
//! rows) of the keys a group of query rows may see, then run blocks of query rows over them with
//! the SIMD microkernels and the online softmax of [`crate::simd::flash`]. The backends differ in
//! two things only, and say them in a [`Plan`]:
//! - **which keys row `i` may see** ([`RowRange`]: `Problem::key_range_at` for the problem's
//!   own mask, or a narrower pattern such as `local-block`'s) — the one place a band enters;
//! - **how K/V are packed** ([`Packing`]): whole KV heads in waves ([`waves`], best when rows see
//!   most keys) or per segment of query rows, only the segment's band ([`segments`], best for
//!   narrow bands; nothing N_k-sized is allocated).
//!
//! Score modifiers (softcap, ALiBi, bias, boolean mask; [`crate::modifiers`]) enter in one
//! place, the kernel's score step ([`crate::simd::score_mod`]); the runner prepares them once
//! per call ([`modify`]: the mask's block summary, so empty panels are skipped), and sinks
//! join the denominator when rows are finished.
//!
//! Both strategies are bitwise deterministic for any thread count: block and segment sizes
//! depend on the problem only, and a row's key loop is never split across threads.

#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(not(target_arch = "x86_64"))]
#[path = "bf16_none.rs"]
mod bf16;
#[cfg(all(test, target_arch = "x86_64"))]
mod bf16_tests;
mod block;
pub mod decode;
mod modify;
pub(crate) mod rows;
mod segments;
mod waves;

use crate::attention::AttnArgs;
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use crate::simd::Isa;
pub use decode::{DECODE_MAX_ROWS, decode_applies};

/// Largest head dimension the tiled CPU backends accept.
pub const MAX_HEAD_DIM: usize = 256;

/// Row `i` of batch entry `b`: its allowed keys `[lo, hi)` in absolute key indices
/// (`Problem::key_range_at` for the problem's own mask).
pub type RowRange<'a> = dyn Fn(usize, usize) -> (usize, usize) + Sync + 'a;

/// How a plan packs K and V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Whole KV heads, packed once per wave and shared by every query block of the GQA group.
    WholeHeads,
    /// Per task of `rows` query rows of one head: only the keys those rows see (at most `band`).
    Segments { rows: usize, band: usize },
    /// Nothing packed: K/V read in place, keys split into chunks merged in a fixed order, all
    /// query heads of a GQA group per pass ([`decode`]; for N_q·group ≤ [`DECODE_MAX_ROWS`]).
    Decode,
}

/// What a tiled backend asks the runner to do.
pub struct Plan<'a> {
    /// The backend's name, for errors.
    pub name: &'a str,
    pub isa: Isa,
    pub packing: Packing,
    pub range: Box<RowRange<'a>>,
}

impl Plan<'_> {
    /// The least working memory the plan can run in (see [`crate::Attention::working_bytes`]).
    pub fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let packs = match self.packing {
            Packing::WholeHeads => waves::min_bytes(p, self.isa),
            Packing::Segments { band, .. } => segments::bytes(p, self.isa, band),
            Packing::Decode => decode::working_bytes(p),
        };
        packs?.checked_add(p.mods.mask.map_or(0, |s| modify::MaskSummary::bytes(p, s)))
    }

    /// The backward's working memory (FlashAttention-2's tiling, [`crate::grad::flash`]).
    pub fn backward_working_bytes(&self, p: &Problem) -> Option<u64> {
        crate::grad::flash::Tiling::flash(p, self.isa).working_bytes(p)
    }

    /// The backward over the plan's band (the packing is the forward's concern only).
    pub fn run_backward(
        &self,
        args: &AttnArgs<'_>,
        saved: &crate::grad::Saved<'_>,
        grads: &mut crate::grad::GradsMut<'_>,
    ) -> Result<()> {
        let tiling = crate::grad::flash::Tiling::flash(args.problem(), self.isa);
        crate::grad::run_tiled(self.name, self.isa, &*self.range, tiling, args, saved, grads)
    }

    /// Runs the plan into `out` (and `lse`), both laid out as the attention contract says.
    pub fn run(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        match self.packing {
            Packing::WholeHeads => waves::run(self, args, out, lse),
            Packing::Segments { rows, band } => segments::run(self, args, out, lse, rows, band),
            Packing::Decode => decode::run(self.name, self.isa, &*self.range, args, out, lse),
        }
    }
}

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

    /// [`IsaChoice::resolve`] as a typed error naming `backend`.
    pub fn resolve_for(self, backend: &str) -> Result<Isa> {
        self.resolve().map_err(|reason| AttnError::Unavailable { backend: backend.into(), reason })
    }

    /// The path to size working memory for: the resolved one, or the best this CPU has.
    pub fn for_sizing(self) -> Isa {
        self.resolve().unwrap_or_else(|_| Isa::best())
    }
}

/// Why a tiled backend cannot run `p` (shared by every backend built on the runner).
pub fn head_dim_reasons(p: &Problem) -> Vec<String> {
    if p.head_dim > MAX_HEAD_DIM {
        vec![format!("head_dim {} > {MAX_HEAD_DIM} (kernel tiles are sized for D ≤ {MAX_HEAD_DIM})", p.head_dim)]
    } else {
        Vec::new()
    }
}
