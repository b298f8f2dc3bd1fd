//! `auto`: picks, for each problem, the available backend that ranks itself best for it.
//!
//! Every backend states through [`Attention::auto_rank`] whether `auto` may pick it for a
//! problem and how keenly (lower first); approximations never offer themselves. With the
//! registry's backends today that gives: `flash-cuda` for f16/bf16 inputs when opted in with
//! `ATTNKIT_AUTO_CUDA=1` (it has not yet passed the device check on a real GPU), then `local`
//! when the band is two-sided and at most 1/8 of the keys, then `flash-cpu`, `sdpa`,
//! `reference`. Ties go to registry order. `auto` reports the device of, and forwards device
//! timing to, the backend it would pick.

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::{AttnError, Result};
use crate::grad::{GradsMut, Saved};
use crate::problem::{DType, Problem};

pub struct Auto {
    candidates: Vec<Box<dyn Attention>>,
}

impl Auto {
    /// `auto` over `candidates` (the registry passes every other backend); unavailable ones and
    /// approximations are dropped here.
    pub fn new(candidates: Vec<Box<dyn Attention>>) -> Self {
        let candidates =
            candidates.into_iter().filter(|b| b.availability().is_ok() && b.exactness() == Exactness::Exact).collect();
        Auto { candidates }
    }

    /// The backend `auto` would run for `problem`.
    pub fn choose(&self, problem: &Problem) -> Option<&dyn Attention> {
        self.candidates
            .iter()
            .filter_map(|b| b.auto_rank(problem).filter(|_| b.supports(problem)).map(|r| (r, b)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, b)| b.as_ref())
    }

    /// The backend most problems go to (an f32 problem with no window), for the questions that
    /// come without a problem.
    fn typical(&self) -> Option<&dyn Attention> {
        self.choose(&Problem::new(1, 1, 1, 64).with_dtype(DType::F32))
    }
}

impl Attention for Auto {
    fn name(&self) -> &str {
        "auto"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    /// The device of the backend a typical problem goes to (CPU when nothing is available).
    fn device(&self) -> Device {
        self.typical().map_or(Device::Cpu, |b| b.device())
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
    fn working_bytes(&self, problem: &Problem) -> Option<u64> {
        self.choose(problem).map_or(Some(0), |b| b.working_bytes(problem))
    }
    fn compute_precision(&self, args: &AttnArgs<'_>) -> DType {
        self.choose(args.problem()).map_or(args.problem().dtype, |b| b.compute_precision(args))
    }
    fn time_on_device(&self, problem: &Problem, reps: usize) -> Option<Result<Vec<f64>>> {
        self.choose(problem).and_then(|b| b.time_on_device(problem, reps))
    }
    fn backward_not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        match self.choose(problem) {
            Some(b) => {
                b.backward_not_supported_reasons(problem).into_iter().map(|r| format!("{}: {r}", b.name())).collect()
            }
            None => Vec::new(),
        }
    }
    fn backward_working_bytes(&self, problem: &Problem) -> Option<u64> {
        self.choose(problem).map_or(Some(0), |b| b.backward_working_bytes(problem))
    }
    /// The backward of the backend the forward chose (the choice depends on the problem only).
    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        let chosen = self.choose(args.problem()).ok_or_else(|| AttnError::Unsupported {
            backend: "auto".into(),
            reasons: self.not_supported_reasons(args.problem()),
        })?;
        chosen.backward_into(args, saved, grads)
    }
    /// Hands strided inputs on to the chosen backend's `forward_into`, which gathers them only
    /// when that backend does not take strides.
    fn takes_strides(&self) -> bool {
        true
    }
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let chosen = self.choose(args.problem()).ok_or_else(|| AttnError::Unsupported {
            backend: "auto".into(),
            reasons: self.not_supported_reasons(args.problem()),
        })?;
        chosen.forward_into(args, out, lse)
    }
}
