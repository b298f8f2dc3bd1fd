//! `linformer`'s backward as a backend: the trait's dQ, dK, dV (dσ with sinks) and, on request
//! ([`Linformer::backward_with_projections`]), the gradients of dense projection matrices E and
//! F so they can be trained. The math is [`crate::grad::linformer`].

use super::{Linformer, Source, transpose};
use crate::attention::{Attention, AttnArgs};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::grad::linformer::{Inputs, Out, Proj, backward};
use crate::grad::real::values;
use crate::grad::{GradsMut, Saved, check_lengths};
use crate::problem::Problem;

/// The gradients of `linformer`'s projection matrices, in the layout
/// [`Linformer::with_projections`] takes them: one k×N_k row-major matrix per slot (one per KV
/// head, or a single one shared by every head), summed over the batch and the heads sharing it.
/// `f` is `None` when values are projected with E as well (E = F), and then `e` holds the sum
/// of both roles' gradients, dK′·Kᵀ + dV′·Vᵀ.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionGrads {
    pub e: Vec<Vec<f32>>,
    pub f: Option<Vec<Vec<f32>>>,
}

impl Linformer {
    /// Working bytes of the backward: f32 copies of Q, K, V, the per-task projected keys and
    /// values with their gradients, and with `want_proj` the dEᵀ, dFᵀ matrices and their
    /// row-major copies.
    pub(super) fn backward_bytes(&self, p: &Problem, want_proj: bool) -> Option<u64> {
        let in_flight = (p.batch * p.kv_heads).min(rayon::current_num_threads()).max(1) as u64;
        let (k, d) = (self.effective_proj_dim(p.seq_k) as u64, p.head_dim as u64);
        let task = (4 * k).checked_mul(d)?.checked_add(k + d)?.checked_mul(4)?.checked_mul(in_flight)?;
        let copies = (p.out_len() as u64).checked_add(2 * p.kv_len() as u64)?.checked_mul(4)?;
        let slots = if self.sharing.per_head() { p.kv_heads as u64 } else { 1 };
        let proj = if want_proj { slots.checked_mul(k)?.checked_mul(p.seq_k as u64)?.checked_mul(16)? } else { 0 };
        task.checked_add(copies)?.checked_add(proj)
    }

    /// The backward proper; with `want_proj`, also dE and dF (dense projections only).
    pub(super) fn run_backward(
        &self,
        args: &AttnArgs<'_>,
        saved: &Saved<'_>,
        grads: &mut GradsMut<'_>,
        want_proj: bool,
    ) -> Result<Option<ProjectionGrads>> {
        let p = args.problem();
        let (q, k, v) = (values::<f32>(args.q()), values::<f32>(args.k()), values::<f32>(args.v()));
        let set = match self.source {
            Source::Pooled => None,
            _ => Some(self.projections(p.seq_k, p.kv_heads)?),
        };
        let proj = match &set {
            None => Proj::Pooled { k: self.k },
            Some(s) => {
                // A seeded cache may hold more slots than this problem's KV heads.
                let n = if s.e.len() == 1 { 1 } else { p.kv_heads };
                Proj::Dense {
                    k: self.k,
                    e: s.e[..n].iter().map(|m| &m[..]).collect(),
                    f: s.f[..n].iter().map(|m| &m[..]).collect(),
                }
            }
        };
        let x = Inputs { p, q: &q, k: &k, v: &v, proj };
        let out = Out { dq: grads.dq, dk: grads.dk, dv: grads.dv, dsinks: grads.dsinks.as_deref_mut() };
        let Some(g) = backward(&x, saved.d_out, out, want_proj) else { return Ok(None) };
        let rows = |m: &Vec<f32>| transpose(m, p.seq_k, self.k);
        Ok(Some(if self.sharing.kv_shared() {
            let sum = g.de.iter().zip(&g.df).map(|(e, f)| rows(&e.iter().zip(f).map(|(a, b)| a + b).collect()));
            ProjectionGrads { e: sum.collect(), f: None }
        } else {
            ProjectionGrads { e: g.de.iter().map(rows).collect(), f: Some(g.df.iter().map(rows).collect()) }
        }))
    }

    /// [`Attention::backward_into`] plus the gradients of the projection matrices E and F (see
    /// [`ProjectionGrads`]), validated the same way. Pooled projections are fixed segment means
    /// with no parameters and are refused with `InvalidArgument`.
    pub fn backward_with_projections(
        &self,
        args: &AttnArgs<'_>,
        saved: &Saved<'_>,
        grads: &mut GradsMut<'_>,
    ) -> Result<ProjectionGrads> {
        if let Source::Pooled = self.source {
            return Err(AttnError::invalid(
                "linformer: pooled projections are fixed segment means with no parameters to train; \
                 dE and dF need Gaussian or supplied projections (Linformer::new, Linformer::with_projections)",
            ));
        }
        let p = args.problem();
        check_lengths(p, saved, grads)?;
        let reasons = self.not_supported_reasons(p);
        if !reasons.is_empty() {
            return Err(AttnError::Unsupported { backend: self.name().to_string(), reasons });
        }
        check_budget("linformer", "the backward with projection gradients", self.backward_bytes(p, true))?;
        self.run_backward(args, saved, grads, true)?
            .ok_or_else(|| AttnError::invalid("linformer: no projection gradients for pooled projections"))
    }
}
