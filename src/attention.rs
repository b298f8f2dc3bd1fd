//! The `Attention` trait: the contract every backend implements.
//!
//! # Contract
//! Given a validated [`Problem`] and Q (B,H,N_q,D), K and V (B,H_kv,N_k,D) in the problem's
//! dtype — contiguous row-major, or with row strides ([`crate::row_layout`], which only backends
//! whose [`Attention::takes_strides`] is true see; the others get a contiguous copy) — a backend
//! computes
//!
//! ```text
//! O[b,h,i,:] = Σ_{j ∈ band(i)} softmax_j(scale · q_i·k_j) · v_j       (f32, (B,H,N_q,D))
//! LSE[b,h,i] = ln Σ_{j ∈ band(i)} exp(scale · q_i·k_j)                 (f32, (B,H,N_q))
//! ```
//!
//! where `band(i)` is [`Problem::key_range`] (causal bottom-right, FlashAttention window) and the
//! K/V head is [`Problem::kv_head_of`]. A row whose band is empty gets O = 0 and LSE = −∞.
//!
//! With modifiers ([`Problem::mods`]: ALiBi, softcap, sinks, additive bias, boolean mask,
//! packed varlen sequences, used key lengths) the score and the band change as
//! [`crate::modifiers`] defines, `band` becomes [`Problem::key_range_at`]`(b, i)`, and sinks join
//! the denominator. A backend that does not implement a modifier lists it in
//! `not_supported_reasons`. Bias and mask data arrive through [`AttnArgs::new_with`].
//! Approximate backends (`Exactness::Approximate`) compute their own estimator of O; their LSE,
//! when they can return one, is documented per backend.
//!
//! An implementation **must not**
//! - panic, abort or read out of bounds for any input that passed [`AttnArgs::new`];
//! - allocate an N_q×N_k buffer unless it says so (`sdpa`), and then only after checking the
//!   memory budget ([`crate::budget`]);
//! - write outside `out` / `lse`, or leave any element of them unwritten;
//! - keep state between calls that changes results (instances are shared across threads).
//!
//! NaN/Inf policy: non-finite inputs are not sanitized. A NaN or ±∞ in `q[b,h,i]` reaches only
//! output row `(b,h,i)` (for `nystrom`, whose query landmarks average a head's queries, every
//! row of that (batch, head)); one in `k`/`v` at key `j` of KV head `g` reaches only the rows of
//! the query heads mapped to `g` whose band contains `j` (for linformer, performer and nystrom,
//! which mix every key into every row, all rows of those heads). A reached row comes out non-finite from
//! the exact backends, never as a silently wrong finite value; every other output element is
//! bitwise unchanged (tests/numerics.rs).
//!
//! Overflow: scores are max-subtracted before exponentiation, so logits of any finite size
//! (tested at ±1e4) stay finite. Outputs are f32, so they never overflow. An exact backend's O
//! row is a convex combination of V rows, so |O| ≤ max |V|: if V fits in f16 (|v| ≤ 65504),
//! O rounded to f16 by the caller cannot overflow either (it can round *to* 65504 at the
//! edge). The approximations do not have that bound (performer divides by an estimated
//! normalizer, linformer mixes projected values, nystrom multiplies by a pseudo-inverse), so
//! their f32 output can exceed max |V| and overflow f16 (to ±∞) if the caller narrows it. `flash-cuda` rounds f32 inputs to f16 only
//! when every value fits (else bf16), and keeps P ∈ [0, 1] and all accumulators in f32.

use crate::error::{AttnError, Result};
use crate::grad::{Grads, GradsMut, Saved};
use crate::problem::{DType, Problem};
use crate::row_layout::{HeadRows, Layouts, Operand, contiguous_then};
use crate::tensor::TensorRef;
use serde::Serialize;
use std::fmt;

/// Whether a backend computes softmax attention exactly (up to floating-point rounding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Exactness {
    Exact,
    Approximate,
}

impl fmt::Display for Exactness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exactness::Exact => "exact",
            Exactness::Approximate => "approx",
        })
    }
}

/// Where a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// The data-sized per-pair inputs whose shapes [`Problem::mods`] declares: an additive bias
/// (f32, f16 or bf16, any of them regardless of the Q/K/V dtype) and a boolean mask (true =
/// attend), each laid out (batch|1, heads|1, N_q, N_k) row-major.
#[derive(Clone, Copy, Debug, Default)]
pub struct PairData<'a> {
    pub bias: Option<TensorRef<'a>>,
    pub mask: Option<&'a [bool]>,
}

/// Owned bias/mask data for one problem (what the CLI loads or synthesizes, and what a
/// benchmark cell keeps beside its Q, K, V); [`PairOwned::as_pair`] lends it to [`AttnArgs::new_with`].
#[derive(Clone, Debug, Default)]
pub struct PairOwned {
    pub bias: Option<crate::tensor::Tensor>,
    pub mask: Option<Vec<bool>>,
}

impl PairOwned {
    pub fn as_pair(&self) -> PairData<'_> {
        PairData { bias: self.bias.as_ref().map(|b| b.as_ref()), mask: self.mask.as_deref() }
    }
}

/// Validated inputs for one call: the problem plus Q, K, V whose dtypes and lengths match it,
/// and the bias/mask data the problem declares, and the row layouts of Q, K, V
/// ([`crate::row_layout`]; contiguous (B, H, N, D) unless built by [`AttnArgs::new_strided`]).
/// The only way to build one is [`AttnArgs::new`], [`AttnArgs::new_with`] or
/// [`AttnArgs::new_strided`], so a backend can index without re-checking.
#[derive(Clone, Copy, Debug)]
pub struct AttnArgs<'a> {
    problem: &'a Problem,
    q: TensorRef<'a>,
    k: TensorRef<'a>,
    v: TensorRef<'a>,
    pair: PairData<'a>,
    layouts: Layouts,
}

impl<'a> AttnArgs<'a> {
    /// Validates the problem and checks each tensor's dtype and length against it. A problem
    /// that declares a bias or mask needs [`AttnArgs::new_with`].
    pub fn new(
        problem: &'a Problem,
        q: impl Into<TensorRef<'a>>,
        k: impl Into<TensorRef<'a>>,
        v: impl Into<TensorRef<'a>>,
    ) -> Result<Self> {
        Self::new_with(problem, q, k, v, PairData::default())
    }

    /// [`AttnArgs::new`] plus the bias/mask data, each checked against the shape the problem
    /// declares (present exactly when declared, of the declared length).
    pub fn new_with(
        problem: &'a Problem,
        q: impl Into<TensorRef<'a>>,
        k: impl Into<TensorRef<'a>>,
        v: impl Into<TensorRef<'a>>,
        pair: PairData<'a>,
    ) -> Result<Self> {
        let (q, k, v) = (q.into(), k.into(), v.into());
        problem.validate()?;
        check_pair(problem, pair)?;
        check_dtypes(problem, [q, k, v])?;
        for (name, t, want) in [("q", &q, problem.q_len()), ("k", &k, problem.kv_len()), ("v", &v, problem.kv_len())] {
            if t.len() != want {
                return Err(AttnError::shape(format!(
                    "{name} has {} elements, expected {want} for {problem}",
                    t.len()
                )));
            }
        }
        Ok(AttnArgs { problem, q, k, v, pair, layouts: Layouts::default() })
    }

    /// [`AttnArgs::new_with`] for inputs in the row layouts `layouts` (e.g. FlashAttention's
    /// (B, N, H, D), [`Layouts::bnhd`]) instead of contiguous (B, H, N, D). The layouts are
    /// checked against the buffers before anything else runs (`AttnError::Strides` naming the
    /// tensor); a layout that is in fact contiguous takes the contiguous path.
    pub fn new_strided(
        problem: &'a Problem,
        q: impl Into<TensorRef<'a>>,
        k: impl Into<TensorRef<'a>>,
        v: impl Into<TensorRef<'a>>,
        pair: PairData<'a>,
        layouts: Layouts,
    ) -> Result<Self> {
        let (q, k, v) = (q.into(), k.into(), v.into());
        problem.validate()?;
        check_pair(problem, pair)?;
        check_dtypes(problem, [q, k, v])?;
        let layouts = layouts.check(problem, [q.len(), k.len(), v.len()])?;
        // A layout that turned out contiguous reads the buffer's first B·H·N·D elements, as
        // the contiguous kernels expect (the check above proved they exist).
        let fit = |t: TensorRef<'a>, op: Operand| match layouts.get(op) {
            None => t.prefix(op.shape(problem).iter().product()),
            Some(_) => t,
        };
        let (q, k, v) = (fit(q, Operand::Q), fit(k, Operand::K), fit(v, Operand::V));
        Ok(AttnArgs { problem, q, k, v, pair, layouts })
    }

    /// The same call on other inputs, all contiguous (B, H, N, D) (what
    /// [`crate::row_layout::contiguous_then`] builds after gathering).
    pub(crate) fn with_inputs<'b>(&self, q: TensorRef<'b>, k: TensorRef<'b>, v: TensorRef<'b>) -> AttnArgs<'b>
    where
        'a: 'b,
    {
        AttnArgs { problem: self.problem, q, k, v, pair: self.pair, layouts: Layouts::default() }
    }

    /// The row layouts of Q, K, V (all `None`, contiguous, unless built by
    /// [`AttnArgs::new_strided`]). Only backends whose [`Attention::takes_strides`] is true
    /// ever see strided ones.
    pub fn layouts(&self) -> Layouts {
        self.layouts
    }

    /// Head `h` of batch `b` of `op` (a KV head for K and V) as rows in its buffer.
    #[inline]
    pub fn head_rows(&self, op: Operand, b: usize, h: usize) -> HeadRows<'a> {
        let p = self.problem;
        let (src, [_, heads, n, d]) = (self.operand(op), op.shape(p));
        match self.layouts.get(op) {
            None => HeadRows { src, base: (b * heads + h) * n * d, stride: d },
            Some(l) => HeadRows { src, base: l.at(b, h, 0), stride: l.row },
        }
    }

    fn operand(&self, op: Operand) -> TensorRef<'a> {
        match op {
            Operand::Q => self.q,
            Operand::K => self.k,
            Operand::V => self.v,
        }
    }

    pub fn problem(&self) -> &'a Problem {
        self.problem
    }
    /// Q's buffer, laid out as [`AttnArgs::layouts`] says (contiguous unless the backend
    /// [`Attention::takes_strides`]); likewise `k()` and `v()`.
    pub fn q(&self) -> TensorRef<'a> {
        self.q
    }
    pub fn k(&self) -> TensorRef<'a> {
        self.k
    }
    pub fn v(&self) -> TensorRef<'a> {
        self.v
    }
    /// The additive bias data (present exactly when `problem().mods.bias` is set).
    pub fn bias(&self) -> Option<TensorRef<'a>> {
        self.pair.bias
    }
    /// The boolean mask data (present exactly when `problem().mods.mask` is set).
    pub fn mask(&self) -> Option<&'a [bool]> {
        self.pair.mask
    }
    /// Both, as passed.
    pub fn pair_data(&self) -> PairData<'a> {
        self.pair
    }
}

/// The bias/mask data against the shapes the problem declares.
fn check_pair(problem: &Problem, pair: PairData<'_>) -> Result<()> {
    let lens = [
        ("bias", problem.mods.bias, pair.bias.map(|b| b.len())),
        ("mask", problem.mods.mask, pair.mask.map(|m| m.len())),
    ];
    for (name, shape, got) in lens {
        match (shape, got) {
            (None, None) => {}
            (Some(s), None) => {
                return Err(AttnError::invalid(format!(
                    "the problem declares a {name} of shape ({}, {}, N_q, N_k) but none was passed",
                    s.batch, s.heads
                )));
            }
            (None, Some(_)) => {
                return Err(AttnError::invalid(format!(
                    "a {name} was passed but the problem declares none (set it with Problem::with_{name})"
                )));
            }
            (Some(s), Some(n)) => {
                let want = s.len(problem).unwrap_or(usize::MAX);
                if n != want {
                    return Err(AttnError::shape(format!(
                        "{name} has {n} elements, expected {want} for shape ({}, {}, {}, {})",
                        s.batch, s.heads, problem.seq_q, problem.seq_k
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_dtypes(problem: &Problem, qkv: [TensorRef<'_>; 3]) -> Result<()> {
    for (name, t) in ["q", "k", "v"].into_iter().zip(qkv) {
        if t.dtype() != problem.dtype {
            return Err(AttnError::invalid(format!(
                "{name} has dtype {} but the problem says {}",
                t.dtype(),
                problem.dtype
            )));
        }
    }
    Ok(())
}

/// Output of [`Attention::forward`]: O in (B,H,N_q,D) and, if requested, LSE in (B,H,N_q).
#[derive(Clone, Debug, Default)]
pub struct AttnOutput {
    pub out: Vec<f32>,
    pub lse: Option<Vec<f32>>,
}

/// Object-safe attention backend. See the module docs for the full contract.
pub trait Attention: Send + Sync {
    /// Registry name, e.g. `"flash-cpu"`.
    fn name(&self) -> &str;

    /// Exact (up to rounding) or an approximation of softmax attention.
    fn exactness(&self) -> Exactness;

    /// Where it runs.
    fn device(&self) -> Device;

    /// `Err(reason)` when the backend cannot run on this machine at all (no CUDA driver, ...).
    /// Must not panic, whatever the machine lacks.
    fn availability(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Every reason this backend cannot run `problem`; empty when it can. Cheap, never panics,
    /// allocates nothing problem-sized. Machine availability is reported separately.
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String>;

    /// Bytes of working memory one call on `problem` allocates beyond the inputs and outputs,
    /// at the current rayon pool's thread count (device memory, inputs included, for a device
    /// backend); `None` when the figure overflows u64. It is the least the backend can run in:
    /// `compute` refuses with `MemoryBudget` exactly when this exceeds the budget, so `bench` and
    /// `report` check it before they generate inputs or extrapolate a time.
    fn working_bytes(&self, problem: &Problem) -> Option<u64>;

    /// The precision `args` are computed in, which the tolerance rule judges the result at:
    /// the input dtype unless the backend rounds its inputs (flash-cuda rounds f32 to f16, or to
    /// bf16 when a value is out of f16's range).
    fn compute_precision(&self, args: &AttnArgs<'_>) -> DType {
        args.problem().dtype
    }

    /// Whether `auto` should pick this backend for `problem`, and how keenly: `Some(rank)`,
    /// lower preferred, or `None` (the default) for never. Backends state this themselves
    /// (`local` only for narrow bands, approximations never), so `auto` tests no names.
    fn auto_rank(&self, _problem: &Problem) -> Option<u32> {
        None
    }

    /// Does the math. Called by [`Attention::forward_into`] after validation, so implementations
    /// may rely on: `args` validated, `args.problem()` supported, inputs contiguous unless
    /// [`Attention::takes_strides`], `out.len() == out_len()`,
    /// `lse.len() == lse_len()` when present. Callers should use `forward_into`/`forward`.
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()>;

    /// Whether `compute` reads Q, K, V through [`AttnArgs::head_rows`] (any row layout,
    /// [`crate::row_layout`]). When false (the default), [`Attention::forward_into`] gathers
    /// strided inputs into contiguous buffers once before calling `compute`.
    fn takes_strides(&self) -> bool {
        false
    }

    /// Device-resident timing for accelerator backends: `Some(seconds per pass)` over `reps`
    /// passes on inputs already on the device (no host transfers), timed with device events.
    /// CPU backends return `None` and are timed on the host by the caller.
    fn time_on_device(&self, _problem: &Problem, _reps: usize) -> Option<Result<Vec<f64>>> {
        None
    }

    /// True when [`Attention::not_supported_reasons`] is empty.
    fn supports(&self, problem: &Problem) -> bool {
        self.not_supported_reasons(problem).is_empty()
    }

    /// Validates everything, then computes into caller-provided buffers.
    fn forward_into(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        if out.len() != p.out_len() {
            return Err(AttnError::shape(format!(
                "out has {} elements, expected {} (B·H·N_q·D)",
                out.len(),
                p.out_len()
            )));
        }
        if let Some(l) = lse.as_ref()
            && l.len() != p.lse_len()
        {
            return Err(AttnError::shape(format!("lse has {} elements, expected {} (B·H·N_q)", l.len(), p.lse_len())));
        }
        if let Err(reason) = self.availability() {
            return Err(AttnError::Unavailable { backend: self.name().to_string(), reason });
        }
        let reasons = self.not_supported_reasons(p);
        if !reasons.is_empty() {
            return Err(AttnError::Unsupported { backend: self.name().to_string(), reasons });
        }
        if self.takes_strides() {
            self.compute(args, out, lse)
        } else {
            contiguous_then(args, |a| self.compute(a, out, lse))
        }
    }

    /// Allocates and returns O (and LSE when `want_lse`).
    fn forward(&self, args: &AttnArgs<'_>, want_lse: bool) -> Result<AttnOutput> {
        let p = args.problem();
        let mut out = vec![0.0f32; p.out_len()];
        let mut lse = want_lse.then(|| vec![0.0f32; p.lse_len()]);
        self.forward_into(args, &mut out, lse.as_deref_mut())?;
        Ok(AttnOutput { out, lse })
    }

    /// Every reason this backend has no backward pass for `problem`; empty when it has one.
    /// The default: none implemented (backends override it with what they lack).
    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        vec![format!("`{}` has no backward pass", self.name())]
    }

    /// Bytes of working memory one backward call allocates beyond inputs, saved tensors and
    /// gradients (`None`: overflows u64). `compute_backward` refuses with `MemoryBudget` when it
    /// exceeds the budget.
    fn backward_working_bytes(&self, _problem: &Problem) -> Option<u64> {
        Some(0)
    }

    /// True when [`Attention::backward_not_supported_reasons`] is empty.
    fn supports_backward(&self, problem: &Problem) -> bool {
        self.backward_not_supported_reasons(problem).is_empty()
    }

    /// Does the backward math (see [`crate::grad`]). Called by [`Attention::backward_into`]
    /// after validation: every buffer has its contract length and the problem is supported.
    fn compute_backward(&self, _args: &AttnArgs<'_>, _saved: &Saved<'_>, _grads: &mut GradsMut<'_>) -> Result<()> {
        Err(AttnError::Unsupported {
            backend: self.name().to_string(),
            reasons: vec![format!("`{}` has no backward pass", self.name())],
        })
    }

    /// Validates everything, then computes dQ, dK, dV (and dσ, dB) into caller buffers from the
    /// forward's O and LSE and the output gradient dO (all f32, the forward's layouts).
    fn backward_into(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        let p = args.problem();
        crate::grad::check_lengths(p, saved, grads)?;
        if let Err(reason) = self.availability() {
            return Err(AttnError::Unavailable { backend: self.name().to_string(), reason });
        }
        let mut reasons = self.not_supported_reasons(p);
        reasons.extend(self.backward_not_supported_reasons(p));
        if !reasons.is_empty() {
            return Err(AttnError::Unsupported { backend: self.name().to_string(), reasons });
        }
        crate::budget::check_budget(self.name(), "the backward pass", self.backward_working_bytes(p))?;
        // No backward pass reads strided inputs: gather them once (nothing when contiguous).
        contiguous_then(args, |a| self.compute_backward(a, saved, grads))
    }

    /// Allocates and returns the gradients; `want_dbias` adds the bias gradient (N_q×N_k sized)
    /// when the problem declares a bias.
    fn backward(
        &self,
        args: &AttnArgs<'_>,
        out: &[f32],
        lse: &[f32],
        d_out: &[f32],
        want_dbias: bool,
    ) -> Result<Grads> {
        let p = args.problem();
        if want_dbias && p.mods.bias.is_none() {
            return Err(AttnError::invalid("the bias gradient was requested but the problem declares no bias"));
        }
        let mut g = Grads::zeros(p, want_dbias);
        self.backward_into(args, &Saved { out, lse, d_out }, &mut g.as_mut())?;
        Ok(g)
    }
}

impl fmt::Debug for dyn Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name(), self.exactness(), self.device())
    }
}
