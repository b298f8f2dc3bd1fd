//! `performer`'s backward as a backend: dQ, dK, dV (dσ with sinks) through FAVOR+'s features
//! with ω held fixed. The math is [`crate::grad::performer`].

use super::Performer;
use crate::attention::AttnArgs;
use crate::error::Result;
use crate::grad::performer::{Inputs, Out, backward};
use crate::grad::real::values;
use crate::grad::{GradsMut, Saved};
use crate::problem::Problem;

impl Performer {
    /// Working bytes of the backward: f32 copies of Q, K, V, and per task in flight the prefix
    /// and suffix states (2·m·(D + 1)), feature rows and dnum, dden for its rows.
    pub(super) fn backward_bytes(&self, p: &Problem) -> Option<u64> {
        let in_flight = (p.batch * p.kv_heads).min(rayon::current_num_threads()).max(1) as u64;
        let (m, d) = (self.m as u64, p.head_dim as u64);
        let rows = (p.group_size() as u64).checked_mul(p.seq_q as u64)?.checked_mul(d + 1)?;
        let task = (2 * m).checked_mul(d + 1)?.checked_add(8 * m + d)?.checked_add(rows)?;
        let copies = (p.out_len() as u64).checked_add(2 * p.kv_len() as u64)?;
        task.checked_mul(in_flight)?.checked_add(copies)?.checked_mul(4)
    }

    pub(super) fn run_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        let p = args.problem();
        let omega = self.feature_matrix(p.head_dim)?;
        let (q, k, v) = (values::<f32>(args.q()), values::<f32>(args.k()), values::<f32>(args.v()));
        let x = Inputs { p, q: &q, k: &k, v: &v, omega: &omega, m: self.m, kernel: self.kernel };
        backward(
            &x,
            saved.d_out,
            Out { dq: grads.dq, dk: grads.dk, dv: grads.dv, dsinks: grads.dsinks.as_deref_mut() },
        );
        Ok(())
    }
}
