//! `local-block`: exact block-local attention (non-overlapping blocks, the "local attention"
//! baseline of the Long Range Arena and of blockwise/chunked attention).
//!
//! Pattern: keys are cut into consecutive blocks of `block` keys; query row `i` sits at key
//! position `i + (N_k − N_q)` (bottom-right alignment, as for causal) and attends every key of
//! the block containing that position, and nothing else. Rows whose position is negative
//! (N_q > N_k) attend nothing (O = 0, LSE = −∞). The problem's own mask still applies on top
//! (intersection): with `causal` a row sees its block up to itself; a window narrows it further.
//! Unlike `local`, a row at the start of a block sees no key of the previous block.
//!
//! Exactness: reported as `Approximate` (it is a sparse approximation of the problem's
//! attention, so `auto` never picks it), but the pattern itself is computed exactly, and the
//! returned LSE is the log-sum-exp over the row's block.
//!
//! Option: the block size, `LocalBlock::new(block)`; through the registry and the CLI,
//! `BackendOptions::block_size` / `--block-size` (default [`DEFAULT_BLOCK`] = 128).
//!
//! Algorithm: the tiled CPU runner's segment packing ([`crate::tiled`]) with this pattern as the
//! per-row key range: the same packed panels, SIMD microkernels and online softmax
//! ([`crate::simd::flash`]). Time O(B·H·N_q·block·D), memory O((segment + block)·D) per
//! thread. Checked against an f64 oracle of the pattern in `tests/flash_cpu.rs`.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::{AttnError, Result};
use crate::grad::{GradsMut, Saved};
use crate::modifiers::Modifier;
use crate::problem::Problem;
use crate::simd::Isa;
use crate::tiled::{IsaChoice, Packing, Plan, head_dim_reasons};

/// Block size of the registered `local-block`.
pub const DEFAULT_BLOCK: usize = 128;

/// Block-local attention with blocks of `block` keys.
#[derive(Clone, Copy, Debug)]
pub struct LocalBlock {
    block: usize,
    isa: IsaChoice,
}

impl LocalBlock {
    /// `block` ≥ 1 keys per block.
    pub fn new(block: usize) -> Result<Self> {
        if block == 0 {
            return Err(AttnError::invalid("local-block: block size must be ≥ 1"));
        }
        Ok(LocalBlock { block, isa: IsaChoice::default() })
    }

    /// Forces one SIMD path; `Unavailable` if this CPU lacks it.
    pub fn with_isa(self, isa: Isa) -> Result<Self> {
        Ok(LocalBlock { isa: IsaChoice::forced(isa, "local-block")?, ..self })
    }

    /// Segments of about one block (at least 4 row blocks) see at most two key blocks.
    fn plan<'a>(&'a self, isa: Isa, p: &'a Problem) -> Plan<'a> {
        let bq = 8 * isa.shape().mr;
        let rows = self.block.clamp(4 * bq, 2048).div_ceil(bq) * bq;
        let packing = Packing::Segments { rows, band: rows + 2 * self.block };
        Plan { name: "local-block", isa, packing, range: Box::new(move |_, i| self.key_range(p, i)) }
    }

    pub fn block(&self) -> usize {
        self.block
    }

    /// The keys `[lo, hi)` row `i` attends under this pattern intersected with the problem's mask.
    /// The row's block is the one holding its diagonal key (diagonal shift included), with
    /// blocks at multiples of `block` in the problem's own key indices.
    pub fn key_range(&self, p: &Problem, i: usize) -> (usize, usize) {
        let pos = p.row_seq(0, i).diag();
        if pos < 0 {
            return (0, 0);
        }
        let start = pos as usize / self.block * self.block;
        let (lo, hi) = p.key_range(i);
        let (lo, hi) = (lo.max(start), hi.min(start + self.block));
        if lo < hi { (lo, hi) } else { (0, 0) }
    }
}

impl Attention for LocalBlock {
    fn name(&self) -> &str {
        "local-block"
    }
    /// Approximate with respect to the problem's attention (it drops every key outside the
    /// row's block); exact, up to rounding, for its own pattern, and its LSE is that pattern's.
    fn exactness(&self) -> Exactness {
        Exactness::Approximate
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn availability(&self) -> std::result::Result<(), String> {
        self.isa.resolve().map(|_| ())
    }
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        let mut r = head_dim_reasons(problem);
        r.extend(problem.mods.refusals_except(
            "local-block",
            "its block pattern replaces the problem's band; use flash-cpu or local",
            &[Modifier::DiagShift],
        ));
        r
    }

    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        self.plan(self.isa.for_sizing(), p).working_bytes(p)
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
