//! The backward pass: gradients of the documented forward, with every modifier.
//!
//! # Contract
//! Given the forward's inputs (`AttnArgs`), its output O (B,H,N_q,D) and LSE (B,H,N_q) in f32,
//! and dO (B,H,N_q,D) in f32, a backend's backward computes, in f32 whatever the input dtype,
//!
//! ```text
//! P_ij  = exp(s_ij − LSE_i)                  s_ij the modified score (softcap, ALiBi, bias)
//! D_i   = Σ_t dO_it · O_it                   (= Σ_j P_ij · dO_i·v_j)
//! dS_ij = P_ij · (dO_i·v_j − D_i)            the gradient of the modified score
//! dV_j  = Σ_i P_ij · dO_i                    summed over the query heads of the KV group
//! dQ_i  = scale · Σ_j dS_ij · c'_ij · k_j    c'_ij = 1 − tanh²(raw_ij/c) with softcap c, else 1
//! dK_j  = scale · Σ_i dS_ij · c'_ij · q_i
//! dσ_h  = −Σ_{b,i} exp(σ_h − LSE_i) · D_i    the sink logits' gradient, (H,)
//! dB    = Σ over broadcast dims of dS        the additive bias's gradient, on request
//! ```
//!
//! over the allowed pairs only: a pair the band (causal, window, varlen, `seqused_k`) or the
//! boolean mask drops gets no gradient, and a row with no allowed key (LSE = −∞, or σ with
//! sinks) gives zero gradients. ALiBi is applied on recompute and its slopes get no gradient
//! (as FlashAttention). The NaN/Inf policy of the forward carries over: a non-finite input
//! reaches exactly the gradient elements that the formulas above, summed over allowed pairs
//! only, make non-finite (e.g. a NaN in v_j reaches dQ_i for the rows i whose band contains j
//! and, through D_i, the dK rows of those rows' bands, but no dV row); every other element is
//! finite (tests/gradients.rs compares the pattern with the f64 oracle's).
//!
//! [`Grads`] owns the result; [`GradsMut`] lends caller buffers to
//! [`crate::Attention::backward_into`]. Implementations: [`oracle`] (f64, the `reference`
//! backend), [`flash`] (FlashAttention-2's algorithm on CPU tiles: `flash-cpu`, `local`,
//! `local-block`), [`materialized`] (the textbook N_q×N_k computation: `sdpa`), and the
//! approximations' own gradients: [`linformer`] (through the projections, with dE and dF on
//! request) and [`performer`] (through FAVOR+'s features, ω held fixed).

pub mod flash;
pub mod linformer;
pub mod materialized;
pub mod oracle;
pub mod performer;
pub mod real;
mod rowstep;

use crate::attention::AttnArgs;
use crate::error::{AttnError, Result};
use crate::problem::Problem;
use rayon::prelude::*;

/// Gradients of one backward call, f32 in the contract's layouts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grads {
    /// (B, H, N_q, D)
    pub dq: Vec<f32>,
    /// (B, H_kv, N_k, D), summed over the query heads of each KV group
    pub dk: Vec<f32>,
    /// (B, H_kv, N_k, D)
    pub dv: Vec<f32>,
    /// (H,) when the problem has sinks
    pub dsinks: Option<Vec<f32>>,
    /// The bias's declared broadcast shape (B|1, H|1, N_q, N_k), when requested
    pub dbias: Option<Vec<f32>>,
}

impl Grads {
    /// Zeroed buffers for `p`: `dsinks` when it has sinks, `dbias` when `want_dbias` and it
    /// declares a bias.
    pub fn zeros(p: &Problem, want_dbias: bool) -> Self {
        Grads {
            dq: vec![0.0; p.out_len()],
            dk: vec![0.0; p.kv_len()],
            dv: vec![0.0; p.kv_len()],
            dsinks: p.mods.sinks.as_ref().map(|s| vec![0.0; s.len()]),
            dbias: p.mods.bias.filter(|_| want_dbias).map(|s| vec![0.0; s.len(p).unwrap_or(0)]),
        }
    }

    /// Borrows every buffer for [`crate::Attention::backward_into`].
    pub fn as_mut(&mut self) -> GradsMut<'_> {
        GradsMut {
            dq: &mut self.dq,
            dk: &mut self.dk,
            dv: &mut self.dv,
            dsinks: self.dsinks.as_deref_mut(),
            dbias: self.dbias.as_deref_mut(),
        }
    }
}

/// Caller-provided gradient buffers; every element is overwritten.
#[derive(Debug)]
pub struct GradsMut<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
    /// Required exactly when the problem has sinks.
    pub dsinks: Option<&'a mut [f32]>,
    /// Optional (the bias gradient is N_q×N_k sized): present only when wanted, and then the
    /// problem must declare a bias.
    pub dbias: Option<&'a mut [f32]>,
}

/// The forward results the backward is given: O and LSE as the forward returned them.
#[derive(Clone, Copy, Debug)]
pub struct Saved<'a> {
    pub out: &'a [f32],
    pub lse: &'a [f32],
    pub d_out: &'a [f32],
}

/// Checks every buffer's length against `p` (the backward's own shape errors, named).
pub fn check_lengths(p: &Problem, saved: &Saved<'_>, g: &GradsMut<'_>) -> Result<()> {
    let want = |name: &str, got: usize, want: usize, what: &str| -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(AttnError::shape(format!("{name} has {got} elements, expected {want} ({what})")))
        }
    };
    want("out", saved.out.len(), p.out_len(), "B·H·N_q·D")?;
    want("lse", saved.lse.len(), p.lse_len(), "B·H·N_q")?;
    want("d_out", saved.d_out.len(), p.out_len(), "B·H·N_q·D")?;
    want("dq", g.dq.len(), p.out_len(), "B·H·N_q·D")?;
    want("dk", g.dk.len(), p.kv_len(), "B·H_kv·N_k·D")?;
    want("dv", g.dv.len(), p.kv_len(), "B·H_kv·N_k·D")?;
    match (&p.mods.sinks, &g.dsinks) {
        (Some(s), Some(d)) => want("dsinks", d.len(), s.len(), "H")?,
        (Some(_), None) => return Err(AttnError::invalid("the problem has sinks, so dsinks (H,) must be passed")),
        (None, Some(_)) => return Err(AttnError::invalid("dsinks was passed but the problem has no sinks")),
        (None, None) => {}
    }
    match (p.mods.bias, &g.dbias) {
        (Some(s), Some(d)) => want("dbias", d.len(), s.len(p).unwrap_or(usize::MAX), "the bias's declared shape")?,
        (None, Some(_)) => return Err(AttnError::invalid("dbias was requested but the problem declares no bias")),
        _ => {}
    }
    Ok(())
}

/// `D_i = Σ_t dO_it · O_it` for every row, in f64-free f32 (FlashAttention's preprocess).
pub fn delta_rows(p: &Problem, out: &[f32], d_out: &[f32]) -> Vec<f32> {
    let d = p.head_dim;
    out.par_chunks(d).zip(d_out.par_chunks(d)).map(|(o, g)| o.iter().zip(g).map(|(a, b)| a * b).sum()).collect()
}

/// `dσ_h = −Σ_{b,i} exp(σ_h − LSE_i) · D_i`, summed in a fixed order (b, then i).
pub fn sink_grads(p: &Problem, lse: &[f32], delta: &[f32], dsinks: &mut [f32]) {
    for (h, ds) in dsinks.iter_mut().enumerate() {
        let sigma = p.sink(h).unwrap_or(f32::NEG_INFINITY);
        let mut acc = 0.0f32;
        for b in 0..p.batch {
            let row0 = (b * p.heads + h) * p.seq_q;
            for i in 0..p.seq_q {
                let l = lse[row0 + i];
                // A row with no key has LSE = σ and D = 0: it contributes 0 (not 0·∞).
                if l == f32::NEG_INFINITY {
                    continue;
                }
                acc -= (sigma - l).exp() * delta[row0 + i];
            }
        }
        *ds = acc;
    }
}

/// Runs a tiled backward ([`flash::run`]) after checking the bias-gradient pass's scratch
/// against the memory budget when dB is requested.
pub fn run_tiled(
    name: &str,
    isa: crate::simd::Isa,
    range: &crate::tiled::RowRange<'_>,
    tiling: flash::Tiling,
    args: &AttnArgs<'_>,
    saved: &Saved<'_>,
    grads: &mut GradsMut<'_>,
) -> Result<()> {
    if grads.dbias.is_some() {
        crate::budget::check_budget(name, "the bias gradient pass", materialized::dbias_bytes(args.problem()))?;
    }
    flash::run(isa, range, tiling, args, saved, grads)
}

/// The validated pieces every backward needs, computed once: `D` rows.
pub struct Prepared {
    pub delta: Vec<f32>,
}

impl Prepared {
    pub fn new(args: &AttnArgs<'_>, saved: &Saved<'_>) -> Self {
        Prepared { delta: delta_rows(args.problem(), saved.out, saved.d_out) }
    }
}
