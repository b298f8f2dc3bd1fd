//! Timing the backward pass, shared by `attnkit bench --backward`, the report's *Backward*
//! section and benches/backward.rs.
//!
//! One rep is one forward (with LSE, which the backward needs) followed by one backward into
//! preallocated gradients, each timed on its own clock and together: the forward, the
//! backward and their sum are three medians over the same reps, so "forward + backward" is the
//! time of the sequence a training step runs, not two medians added.
//!
//! FLOPs follow FlashAttention's convention: the forward's [`Problem::flops`] (4·D per allowed
//! pair), the backward [`BACKWARD_FLOP_FACTOR`] = 2.5 times that (five GEMMs of the forward's
//! two's size each), so forward + backward is 3.5×.
//!
//! [`run_backward_cell`] mirrors [`super::run_cell`]: a backend that cannot run the forward or
//! has no backward for the problem, or whose backward would exceed the memory budget, is refused
//! before any input is generated or the GEMM ceiling measured.

use super::ceiling::LazyCeiling;
use super::median;
use super::record::{Status, serialize_display};
use super::runner::{LazyInputs, Policy, expected_exponent, extrapolate, is_skip, refusal};
use crate::alloc_counter::PeakScope;
use crate::attention::{Attention, AttnArgs, Device};
use crate::budget::check_budget;
use crate::error::Result;
use crate::grad::{Grads, Saved};
use crate::problem::{DType, Problem, Window};
use serde::Serialize;
use std::time::Instant;

/// The backward's FLOPs as a multiple of the forward's (FlashAttention's convention).
pub const BACKWARD_FLOP_FACTOR: f64 = 2.5;

/// The backward's FLOPs on `p`: 2.5 × [`Problem::flops`].
pub fn backward_flops(p: &Problem) -> f64 {
    BACKWARD_FLOP_FACTOR * p.flops()
}

/// Why `backend` cannot time forward + backward on `p` (the forward's [`refusal`], then the
/// backward's unsupported reasons, then its working set against the memory budget), judged
/// without inputs.
pub fn backward_refusal(backend: &dyn Attention, p: &Problem) -> Option<String> {
    if let Some(r) = refusal(backend, p, None) {
        return Some(r);
    }
    let reasons = backend.backward_not_supported_reasons(p);
    if !reasons.is_empty() {
        return Some(format!("no backward ({})", reasons.join("; ")));
    }
    check_budget(backend.name(), "the backward pass", backend.backward_working_bytes(p)).err().map(|e| e.to_string())
}

/// The seeded output gradient dO for `p` (f32, (B,H,N_q,D)), drawn apart from Q, K, V's seeds.
pub fn seeded_d_out(p: &Problem, seed: u64) -> Vec<f32> {
    crate::seeded::normal_values(p.out_len(), crate::seeded::derive_seed(seed, &[0xd0]))
}

/// Per-rep seconds of one [`time_backward`] call.
#[derive(Clone, Debug, Default)]
pub struct BackwardTimes {
    pub fwd_s: Vec<f64>,
    pub bwd_s: Vec<f64>,
    /// The forward and backward of each rep on one clock.
    pub fwdbwd_s: Vec<f64>,
    /// Peak heap above the level before the warm-up (inputs, O, LSE, dO and the gradient
    /// buffers excluded); `None` without the counting allocator.
    pub peak_bytes: Option<u64>,
    /// Non-finite values in the last rep's dQ, dK, dV.
    pub non_finite: usize,
}

/// One warm-up rep, then up to `reps` timed reps (stopping once `max_total_s` is spent; a
/// warm-up over it is the only sample), of forward (with LSE) then backward.
pub fn time_backward(
    backend: &dyn Attention,
    args: &AttnArgs<'_>,
    d_out: &[f32],
    reps: usize,
    max_total_s: f64,
) -> Result<BackwardTimes> {
    let p = args.problem();
    let (mut out, mut lse) = (vec![0.0f32; p.out_len()], vec![0.0f32; p.lse_len()]);
    let mut grads = Grads::zeros(p, false);
    let mut t = BackwardTimes::default();
    let scope = PeakScope::start();
    let mut rep = |t: &mut BackwardTimes| -> Result<()> {
        let t0 = Instant::now();
        backend.forward_into(args, &mut out, Some(&mut lse))?;
        let t1 = Instant::now();
        backend.backward_into(args, &Saved { out: &out, lse: &lse, d_out }, &mut grads.as_mut())?;
        let t2 = Instant::now();
        t.fwd_s.push((t1 - t0).as_secs_f64());
        t.bwd_s.push((t2 - t1).as_secs_f64());
        t.fwdbwd_s.push((t2 - t0).as_secs_f64());
        Ok(())
    };
    rep(&mut t)?;
    if t.fwdbwd_s[0] <= max_total_s {
        t = BackwardTimes::default();
        let begin = Instant::now();
        for _ in 0..reps.max(1) {
            rep(&mut t)?;
            if begin.elapsed().as_secs_f64() > max_total_s {
                break;
            }
        }
    }
    t.peak_bytes = scope.peak_extra();
    t.non_finite = [&grads.dq, &grads.dk, &grads.dv].iter().map(|g| g.iter().filter(|x| !x.is_finite()).count()).sum();
    Ok(t)
}

/// One line of `bench --backward --json` and one row of the report's *Backward* section.
#[derive(Clone, Debug, Serialize)]
pub struct BackwardRecord {
    pub backend: String,
    pub seq: usize,
    pub seq_kv: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub batch: usize,
    pub causal: bool,
    #[serde(serialize_with = "serialize_display")]
    pub window: Window,
    pub dtype: DType,
    pub threads: usize,
    #[serde(flatten)]
    pub status: Status,
    pub reps: usize,
    /// Medians: forward (with LSE), backward alone, and forward then backward on one clock.
    pub fwd_s: Option<f64>,
    pub bwd_s: Option<f64>,
    pub fwdbwd_s: Option<f64>,
    /// `Problem::flops()` / fwd_s, 2.5·flops / bwd_s, 3.5·flops / fwdbwd_s.
    pub fwd_gflops: Option<f64>,
    pub bwd_gflops: Option<f64>,
    pub fwdbwd_gflops: Option<f64>,
    /// The f32 GEMM ceiling measured in this run, and each rate's fraction of it (CPU only).
    pub gemm_gflops: Option<f64>,
    pub fwd_gemm_fraction: Option<f64>,
    pub bwd_gemm_fraction: Option<f64>,
    pub fwdbwd_gemm_fraction: Option<f64>,
    /// Peak heap of forward + backward beyond inputs, saved tensors and gradients.
    pub peak_bytes: Option<u64>,
}

impl BackwardRecord {
    /// A record of `backend` on `p`, skipped with an empty reason until filled in.
    pub fn new(backend: &str, p: &Problem, threads: usize) -> Self {
        BackwardRecord {
            backend: backend.to_string(),
            seq: p.seq_q,
            seq_kv: p.seq_k,
            dim: p.head_dim,
            heads: p.heads,
            kv_heads: p.kv_heads,
            batch: p.batch,
            causal: p.causal,
            window: p.window,
            dtype: p.dtype,
            threads,
            status: Status::Skipped(String::new()),
            reps: 0,
            fwd_s: None,
            bwd_s: None,
            fwdbwd_s: None,
            fwd_gflops: None,
            bwd_gflops: None,
            fwdbwd_gflops: None,
            gemm_gflops: None,
            fwd_gemm_fraction: None,
            bwd_gemm_fraction: None,
            fwdbwd_gemm_fraction: None,
            peak_bytes: None,
        }
    }

    pub fn skipped(mut self, reason: impl Into<String>) -> Self {
        self.status = Status::Skipped(reason.into());
        self
    }

    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.status = Status::Failed(reason.into());
        self
    }

    /// Fills in the medians of `t` (status ok) and, when `gemm_gflops` is given (a CPU
    /// backend), each rate's fraction of it.
    pub fn with_times(mut self, p: &Problem, t: &BackwardTimes, gemm_gflops: Option<f64>) -> Self {
        let (f, b, fb) = (median(&t.fwd_s), median(&t.bwd_s), median(&t.fwdbwd_s));
        let fl = p.flops();
        let rate = |flops: f64, s: f64| flops / s / 1e9;
        self.status = Status::Ok;
        self.reps = t.fwdbwd_s.len();
        (self.fwd_s, self.bwd_s, self.fwdbwd_s) = (Some(f), Some(b), Some(fb));
        self.fwd_gflops = Some(rate(fl, f));
        self.bwd_gflops = Some(rate(BACKWARD_FLOP_FACTOR * fl, b));
        self.fwdbwd_gflops = Some(rate((1.0 + BACKWARD_FLOP_FACTOR) * fl, fb));
        let c = gemm_gflops.filter(|c| *c > 0.0);
        self.gemm_gflops = c;
        let frac = |g: Option<f64>| Some(g? / c?);
        (self.fwd_gemm_fraction, self.bwd_gemm_fraction, self.fwdbwd_gemm_fraction) =
            (frac(self.fwd_gflops), frac(self.bwd_gflops), frac(self.fwdbwd_gflops));
        self.peak_bytes = t.peak_bytes;
        if t.non_finite > 0 {
            self.status = Status::Failed(format!("the gradients hold {} non-finite values", t.non_finite));
        }
        self
    }
}

/// Forward + backward of `backend` on `p`: refusal → time budget (from `previous`, the last
/// measured (N, forward+backward seconds), growing as the forward would) → ceiling, inputs and
/// dO → [`time_backward`]. Errors only when the inputs do not fit the problem or the ceiling
/// cannot be measured; what the backend does wrong ends up in the record's status.
pub fn run_backward_cell(
    backend: &dyn Attention,
    p: &Problem,
    inputs: &LazyInputs,
    seed: u64,
    ceiling: &LazyCeiling,
    policy: &Policy,
    previous: Option<(usize, f64)>,
) -> Result<BackwardRecord> {
    let record = BackwardRecord::new(backend.name(), p, rayon::current_num_threads());
    if let Some(reason) = backward_refusal(backend, p) {
        return Ok(record.skipped(reason));
    }
    if let Some((n0, t0)) = previous {
        let e = expected_exponent(backend, p);
        let t = extrapolate(n0, t0, p.seq_q.max(p.seq_k), e);
        if t > policy.max_predicted_s {
            return Ok(record.skipped(format!(
                "time budget: predicted {} (from {} at N={n0}, ∝ N^{e}) > {} per run",
                super::fmt_secs(t),
                super::fmt_secs(t0),
                super::fmt_secs(policy.max_predicted_s)
            )));
        }
    }
    let gemm = if backend.device() == Device::Cpu { Some(ceiling.get()?.gflops) } else { None };
    let (q, k, v) = inputs.get();
    let args = AttnArgs::new_with(p, q.as_ref(), k.as_ref(), v.as_ref(), inputs.pair().as_pair())?;
    let d_out = seeded_d_out(p, seed);
    Ok(match time_backward(backend, &args, &d_out, policy.reps, policy.max_measure_s) {
        Ok(t) => record.with_times(p, &t, gemm),
        Err(e) if is_skip(&e) => record.skipped(e.to_string()),
        Err(e) => record.failed(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::InputFamily;

    const POLICY: Policy = Policy { reps: 2, max_measure_s: 10.0, max_predicted_s: 10.0 };

    #[test]
    fn a_backend_without_backward_is_refused_before_inputs_and_ceiling() {
        let p = Problem::new(1, 2, 64, 16);
        let b = crate::backend("nystrom").unwrap();
        let (inputs, ceiling) = (LazyInputs::new(&p, InputFamily::Normal, 0), LazyCeiling::new(32, 1));
        let r = run_backward_cell(b.as_ref(), &p, &inputs, 0, &ceiling, &POLICY, None).unwrap();
        assert!(matches!(&r.status, Status::Skipped(why) if why.contains("no backward")), "{:?}", r.status);
        assert!(!inputs.generated() && ceiling.measured().is_none());
    }

    #[test]
    fn flash_cpu_is_timed_with_rates_by_the_convention() {
        let p = Problem::new(1, 2, 64, 16).with_causal(true);
        let b = crate::backend("flash-cpu").unwrap();
        let (inputs, ceiling) = (LazyInputs::new(&p, InputFamily::Normal, 0), LazyCeiling::new(32, 1));
        let r = run_backward_cell(b.as_ref(), &p, &inputs, 0, &ceiling, &POLICY, None).unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.reps, 2);
        let (f, bw, fb) = (r.fwd_s.unwrap(), r.bwd_s.unwrap(), r.fwdbwd_s.unwrap());
        assert!(f > 0.0 && bw > 0.0 && fb >= f.min(bw), "{f} {bw} {fb}");
        let want = BACKWARD_FLOP_FACTOR * p.flops() / bw / 1e9;
        assert!((r.bwd_gflops.unwrap() - want).abs() <= 1e-9 * want);
        let frac = r.bwd_gemm_fraction.unwrap();
        assert!((frac - r.bwd_gflops.unwrap() / r.gemm_gflops.unwrap()).abs() < 1e-12);
    }

    #[test]
    fn nan_gradients_make_a_failed_record() {
        let p = Problem::new(1, 1, 4, 2);
        let t =
            BackwardTimes { fwd_s: vec![1.0], bwd_s: vec![2.0], fwdbwd_s: vec![3.0], peak_bytes: None, non_finite: 3 };
        let r = BackwardRecord::new("x", &p, 1).with_times(&p, &t, None);
        assert!(matches!(&r.status, Status::Failed(why) if why.contains("3 non-finite")));
        assert_eq!((r.gemm_gflops, r.bwd_gemm_fraction), (None, None));
    }
}
