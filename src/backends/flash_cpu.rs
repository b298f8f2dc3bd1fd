//! `flash-cpu`: exact FlashAttention-style tiled attention on the CPU with explicit SIMD.
//!
//! Algorithm: the tiled CPU runner ([`crate::tiled`]) with whole-head packing and the problem's
//! own mask. Per (batch, KV head) K is packed once into Kᵀ panels and V into zero-padded rows,
//! shared by every query head of the GQA group; query blocks of `16·MR` rows (96 with AVX-512)
//! run in parallel and stream key tiles sized to keep the tile's K and V panels in L2 (~192 KiB):
//! S = Q·Kᵀ with an `MR × KP` register-blocked microkernel, the online softmax in base 2
//! (running max/sum, O rescaled; [`crate::simd::flash::online_softmax_step`]) and O += P·V with an
//! `MR × 64`-column microkernel. The N×N score matrix never exists. Causal and window masks skip
//! whole tiles and panels outside each strip's band and mask only boundary tiles; rows with no
//! allowed key get O = 0, LSE = −∞.
//!
//! Decode shapes (N_q · group ≤ [`crate::tiled::DECODE_MAX_ROWS`]) take the split-KV strategy
//! of [`crate::tiled::decode`] instead: K/V read in place, each KV head read once for all its
//! query heads, N_k-only chunking merged in a fixed order (still thread-count independent).
//!
//! bf16 inputs on AVX512_BF16 CPUs ([`crate::simd::Isa::Avx512Bf16`], the default there) are
//! computed in bf16 with f32 accumulation (`vdpbf16ps` for Q·Kᵀ and P·V, P rounded to bf16 after
//! the f32 row sum, as FlashAttention on GPUs; [`crate::simd::bf16_block`],
//! [`crate::simd::bf16`]), score modifiers, masks, sinks and varlen included (one block loop
//! over both operand formats, [`crate::simd::operands`]); `ATTNKIT_SIMD=avx512` keeps them on
//! the f32 path. f16 inputs always
//! take the f32 path (widened exactly).
//!
//! Complexity: O(B·H·(allowed pairs)·D) time — about half of full for causal, O(N·w·D) for a
//! window w; memory O(N_k·D) per KV head in flight (at least one) plus O(block·D) scratch per
//! thread. Bitwise identical results for any thread count.
//!
//! SIMD: AVX-512F (+BF16), AVX2+FMA, NEON, portable fallback, chosen at run time
//! ([`crate::simd::Isa::selected`], `ATTNKIT_SIMD` override) or forced with
//! [`FlashCpu::with_isa`]; exp2 accuracy is documented in `src/simd/flash.rs`.
//!
//! Modifiers ([`crate::modifiers`]): all of them — ALiBi, softcap, sinks, additive bias, boolean
//! mask, packed varlen sequences, used key lengths — applied in the kernel's one score step
//! ([`crate::simd::score_mod`]). Rows' bands come from [`Problem::key_range_at`], so tiles
//! outside every packed sequence are skipped like causal tiles; key panels a boolean mask
//! leaves empty are skipped through a per-call 16×16 block summary of the mask.
//!
//! Caveats: head_dim ≤ 256 (larger D is refused in `not_supported_reasons`); D not a multiple of
//! 16 pads V/O rows to the next multiple of 16. Narrow windows are better served by `local`.
//! Measured speed (against the GEMM ceiling and PyTorch) lives in `reports/README.md`; decode
//! and bf16 figures (against the bandwidth and bf16-dot ceilings) in its "Decode" section.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::Result;
use crate::grad::{GradsMut, Saved};
use crate::problem::Problem;
use crate::simd::Isa;
use crate::tiled::{IsaChoice, Packing, Plan, decode_applies, head_dim_reasons};

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

    fn plan<'a>(&'a self, isa: Isa, p: &'a Problem) -> Plan<'a> {
        let packing = if decode_applies(p) { Packing::Decode } else { Packing::WholeHeads };
        Plan { name: self.name(), isa, packing, range: Box::new(move |b, i| p.key_range_at(b, i)) }
    }
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
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        self.plan(self.isa.for_sizing(), p).working_bytes(p)
    }
    fn auto_rank(&self, _problem: &Problem) -> Option<u32> {
        Some(20)
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
