//! `auto`: picks the fastest available exact backend for each problem.
//!
//! Preference order, first that is available and supports the problem wins:
//! `flash-cuda` (f16/bf16 inputs only: for f32 inputs it rounds to half precision, which is
//! not exact for f32), then `local` when the band is narrow (both sides bounded and at most
//! 1/8 of the keys), then `flash-cpu`, then `sdpa`, then `reference`. The order comes from the
//! bench: flash-cpu beats sdpa at every N we measured and needs O(N·D) memory; for narrow
//! bands `local` is as fast at N ≤ 8K (window (255,0): 29.5 vs 30.8 ms at 8K) and 1.3–1.8×
//! faster at 16K, with a fraction of the memory (2.2 vs 32 MiB at 8K).

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::{AttnError, Result};
use crate::problem::{DType, Problem};
use crate::registry::{BackendOptions, backend_with};

pub struct Auto {
    candidates: Vec<Box<dyn Attention>>,
}

const PREFERENCE: [&str; 5] = ["flash-cuda", "local", "flash-cpu", "sdpa", "reference"];

/// Whether `local` should be preferred: a two-sided band covering at most 1/8 of the keys.
fn narrow_band(p: &Problem) -> bool {
    match p.effective_window() {
        (Some(l), Some(r)) => (l + r + 1).saturating_mul(8) <= p.seq_k,
        _ => false,
    }
}

impl Auto {
    pub fn new(opts: &BackendOptions) -> Self {
        let candidates = PREFERENCE
            .iter()
            .filter_map(|n| backend_with(n, opts).ok())
            .filter(|b| b.availability().is_ok() && b.exactness() == Exactness::Exact)
            .collect();
        Auto { candidates }
    }

    /// The backend `auto` would run for `problem`.
    pub fn choose(&self, problem: &Problem) -> Option<&dyn Attention> {
        self.candidates
            .iter()
            .find(|b| {
                let exact_for_dtype = b.device() != Device::Cuda || problem.dtype != DType::F32;
                let worth_it = b.name() != "local" || narrow_band(problem);
                exact_for_dtype && worth_it && b.supports(problem)
            })
            .map(|b| b.as_ref())
    }
}

impl Attention for Auto {
    fn name(&self) -> &str {
        "auto"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        if self.choose(problem).is_some() {
            return Vec::new();
        }
        self.candidates
            .iter()
            .flat_map(|b| b.not_supported_reasons(problem).into_iter().map(move |r| format!("{}: {r}", b.name())))
            .collect()
    }
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let chosen = self.choose(args.problem()).ok_or_else(|| AttnError::Unsupported {
            backend: "auto".into(),
            reasons: self.not_supported_reasons(args.problem()),
        })?;
        chosen.forward_into(args, out, lse)
    }
}
