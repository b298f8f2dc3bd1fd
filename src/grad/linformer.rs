//! `linformer`'s backward: the gradient of its documented forward
//! ([`crate::backends::linformer`]), generic over the float type so the same code runs in f32
//! (the backend) and in f64 (the finite-difference tests, `tests/approx_gradients.rs`).
//!
//! Forward, per (batch, KV head) over its n used keys: K′ = E·K, V′ = F·V (k×D), then for each
//! query row s_r = scale·q·K′_r + b_r (b_r = ln|segment r| for pooled projections, −∞ for a
//! projected key no used key reaches, else 0), P = softmax(s) over the k projected keys and the
//! sink σ_h when present, O = P·V′. Backward, the exact attention backward over the k projected
//! keys followed by the projections' transposes:
//!
//! ```text
//! D_i = dO_i·O_i,  dS_ir = P_ir·(dO_i·V′_r − D_i)
//! dQ_i = scale·Σ_r dS_ir K′_r      dK′_r = scale·Σ_i dS_ir q_i      dV′_r = Σ_i P_ir dO_i
//! dK = Eᵀ·dK′,  dV = Fᵀ·dV′        dσ_h = −Σ_i exp(σ_h − LSE_i)·D_i
//! dE = dK′·Kᵀ,  dF = dV′·Vᵀ        (on request, dense projections only; summed over the batch
//!                                   and over the heads that share a matrix)
//! ```
//!
//! What is held fixed: pooled projections are fixed segment means (no parameters; their
//! gradient flows to K and V as dK_j = dK′_r/|segment r|), the ln|segment| logit correction is a
//! constant, and a projected key dropped because E is exactly zero on every used key (`seqused_k`)
//! stays dropped (the forward is discontinuous there). Columns of E and F past a batch entry's
//! used keys get no gradient from it, and neither do dK, dV rows past n.
//!
//! The passed O and LSE are not used: each row's softmax is recomputed from Q and K′ (one
//! forward's worth of work, O(N·k·D)), so the gradient is that of the forward this code
//! computes, which `tests/approx_gradients.rs` checks against the backend's own output.
//!
//! Complexity: O(B·H·N·k·D) time; extra memory per (batch, KV head) in flight O(k·D) for K′, V′,
//! dK′, dV′, plus an f32 copy of Q, K, V (and, with dE, dF requested, the N_k×k gradients per
//! matrix). Parallel over (batch, KV head); every sum runs in a fixed order, so the result does
//! not depend on the thread count.

use super::real::{Real, axpy, dot};
use crate::backends::segments;
use crate::problem::Problem;
use rayon::prelude::*;

/// How K and V are projected along the sequence, as `linformer`'s forward does it.
pub enum Proj<'a, T> {
    /// Segment means of the used keys, k clamped to their number, logit bias ln|segment|.
    Pooled { k: usize },
    /// Dense matrices, one per slot (one slot per KV head, or a single one shared by every
    /// head), each stored transposed: Eᵀ, N_k×k row-major (entry (r, j) of E at j·k + r).
    Dense { k: usize, e: Vec<&'a [T]>, f: Vec<&'a [T]> },
}

/// One call's inputs in precision `T`, in the contract's layouts.
pub struct Inputs<'a, T> {
    pub p: &'a Problem,
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub proj: Proj<'a, T>,
}

/// Caller buffers for dQ, dK, dV (and dσ with sinks); every element is overwritten.
pub struct Out<'b, T> {
    pub dq: &'b mut [T],
    pub dk: &'b mut [T],
    pub dv: &'b mut [T],
    pub dsinks: Option<&'b mut [T]>,
}

/// dEᵀ and dFᵀ per slot (N_k×k row-major, the layout of [`Proj::Dense`]).
pub struct ProjGrads<T> {
    pub de: Vec<Vec<T>>,
    pub df: Vec<Vec<T>>,
}

/// One task's dK′, dV′ (k×D) and dσ of its query heads.
type Part<T> = (Vec<T>, Vec<T>, Vec<T>);

/// One (batch, KV head)'s projected keys and values with their logit bias.
struct Projected<T> {
    kk: usize,
    kp: Vec<T>,
    vp: Vec<T>,
    bias: Vec<T>,
}

impl<T: Real> Inputs<'_, T> {
    fn used(&self, t: usize) -> usize {
        let p = self.p;
        p.mods.seqused_k.as_ref().map_or(p.seq_k, |u| u[t / p.kv_heads])
    }

    fn slot(&self, t: usize) -> usize {
        match &self.proj {
            Proj::Dense { e, .. } if e.len() > 1 => t % self.p.kv_heads,
            _ => 0,
        }
    }

    /// K′, V′ and the logit bias of task `t` over its first `nk` used keys.
    fn project(&self, t: usize, nk: usize) -> Projected<T> {
        let d = self.p.head_dim;
        let base = t * self.p.seq_k * d;
        let key = |x: &[T], j: usize| -> Vec<T> { x[base + j * d..base + (j + 1) * d].to_vec() };
        match &self.proj {
            Proj::Pooled { k } => {
                let kk = (*k).min(nk);
                let (mut kp, mut vp) = (vec![T::ZERO; kk * d], vec![T::ZERO; kk * d]);
                let mut bias = vec![T::ZERO; kk];
                for r in 0..kk {
                    let (lo, hi) = segments::bounds(r, nk, kk);
                    let inv = T::ONE / T::of((hi - lo) as f64);
                    for j in lo..hi {
                        axpy(&mut kp[r * d..(r + 1) * d], inv, &key(self.k, j));
                        axpy(&mut vp[r * d..(r + 1) * d], inv, &key(self.v, j));
                    }
                    bias[r] = T::of((hi - lo) as f64).ln();
                }
                Projected { kk, kp, vp, bias }
            }
            Proj::Dense { k, e, f } => {
                let (kk, s) = (*k, self.slot(t));
                let (mut kp, mut vp) = (vec![T::ZERO; kk * d], vec![T::ZERO; kk * d]);
                for j in 0..nk {
                    let (kj, vj) = (key(self.k, j), key(self.v, j));
                    for r in 0..kk {
                        axpy(&mut kp[r * d..(r + 1) * d], e[s][j * kk + r], &kj);
                        axpy(&mut vp[r * d..(r + 1) * d], f[s][j * kk + r], &vj);
                    }
                }
                // As the forward: with seqused_k, a projected key no used key reaches is dropped.
                let bias = (0..kk)
                    .map(|r| {
                        let unreached = nk < self.p.seq_k && (0..nk).all(|j| e[s][j * kk + r] == T::ZERO);
                        if unreached { T::NEG_INFINITY } else { T::ZERO }
                    })
                    .collect();
                Projected { kk, kp, vp, bias }
            }
        }
    }

    /// One row of query head `h`: writes P (sink included) into `probs` and O into `o`, returns
    /// the row's LSE (−∞ for a row with no projected key and no sink: O = 0, P = 0).
    fn row(&self, h: usize, qi: &[T], pr: &Projected<T>, probs: &mut [T], o: &mut [T]) -> T {
        let d = self.p.head_dim;
        let scale = T::of32(self.p.scale);
        for (r, s) in probs.iter_mut().enumerate() {
            *s = scale * dot(qi, &pr.kp[r * d..(r + 1) * d]) + pr.bias[r];
        }
        let m = probs.iter().fold(T::NEG_INFINITY, |a, &b| a.max(b));
        let sink = self.p.sink(h).map(T::of32);
        o.iter_mut().for_each(|x| *x = T::ZERO);
        let lse_raw = if m == T::NEG_INFINITY {
            probs.iter_mut().for_each(|x| *x = T::ZERO);
            T::NEG_INFINITY
        } else {
            let mut sum = T::ZERO;
            for x in probs.iter_mut() {
                *x = (*x - m).exp();
                sum += *x;
            }
            m + sum.ln()
        };
        let lse = match sink {
            Some(s) if lse_raw == T::NEG_INFINITY => s,
            Some(s) => {
                let mx = lse_raw.max(s);
                mx + ((lse_raw - mx).exp() + (s - mx).exp()).ln()
            }
            None => lse_raw,
        };
        if lse_raw == T::NEG_INFINITY {
            return lse;
        }
        // P_r = exp(s_r − LSE) = exp(s_r − m)·exp(m − LSE).
        let w = (m - lse).exp();
        for (r, x) in probs.iter_mut().enumerate() {
            *x *= w;
            axpy(o, *x, &pr.vp[r * d..(r + 1) * d]);
        }
        lse
    }

    /// Task `t`'s forward: O (group, N_q, D) and LSE (group, N_q).
    fn forward_task(&self, t: usize, o: &mut [T], lse: &mut [T]) {
        let p = self.p;
        let (nq, d, g) = (p.seq_q, p.head_dim, p.group_size());
        let pr = self.project(t, self.used(t));
        let mut probs = vec![T::ZERO; pr.kk];
        for gi in 0..g {
            for i in 0..nq {
                let row = gi * nq + i;
                let qi = &self.q[((t * g + gi) * nq + i) * d..][..d];
                lse[row] = self.row(t % p.kv_heads * g + gi, qi, &pr, &mut probs, &mut o[row * d..(row + 1) * d]);
            }
        }
    }

    /// Task `t`'s backward into its dQ (group, N_q, D), dK and dV (N_k, D) and dσ (group)
    /// chunks; returns dK′ and dV′ (k×D) for the projections' gradients.
    fn backward_task(
        &self,
        t: usize,
        d_out: &[T],
        dq: &mut [T],
        dk: &mut [T],
        dv: &mut [T],
        ds: &mut [T],
    ) -> (Vec<T>, Vec<T>) {
        let p = self.p;
        let (nq, d, g) = (p.seq_q, p.head_dim, p.group_size());
        let scale = T::of32(p.scale);
        dq.iter_mut().chain(dk.iter_mut()).chain(dv.iter_mut()).chain(ds.iter_mut()).for_each(|x| *x = T::ZERO);
        let nk = self.used(t);
        if nk == 0 {
            return (Vec::new(), Vec::new());
        }
        let pr = self.project(t, nk);
        let (mut dkp, mut dvp) = (vec![T::ZERO; pr.kk * d], vec![T::ZERO; pr.kk * d]);
        let (mut probs, mut o) = (vec![T::ZERO; pr.kk], vec![T::ZERO; d]);
        for gi in 0..g {
            let h = t % p.kv_heads * g + gi;
            for i in 0..nq {
                let at = ((t * g + gi) * nq + i) * d;
                let (qi, gr) = (&self.q[at..at + d], &d_out[at..at + d]);
                let lse = self.row(h, qi, &pr, &mut probs, &mut o);
                if lse == T::NEG_INFINITY {
                    continue; // no key and no sink: zero gradients
                }
                let delta = dot(gr, &o);
                if let Some(s) = p.sink(h) {
                    ds[gi] -= (T::of32(s) - lse).exp() * delta;
                }
                let dqi = &mut dq[(gi * nq + i) * d..(gi * nq + i + 1) * d];
                for (r, &pir) in probs.iter().enumerate() {
                    let dsr = pir * (dot(gr, &pr.vp[r * d..(r + 1) * d]) - delta);
                    axpy(dqi, scale * dsr, &pr.kp[r * d..(r + 1) * d]);
                    axpy(&mut dkp[r * d..(r + 1) * d], scale * dsr, qi);
                    axpy(&mut dvp[r * d..(r + 1) * d], pir, gr);
                }
            }
        }
        self.unproject(t, nk, &dkp, &dvp, dk, dv);
        (dkp, dvp)
    }

    /// dK = Eᵀ·dK′ and dV = Fᵀ·dV′ over the first `nk` keys (pooled: dK′_r / |segment r|).
    fn unproject(&self, t: usize, nk: usize, dkp: &[T], dvp: &[T], dk: &mut [T], dv: &mut [T]) {
        let d = self.p.head_dim;
        match &self.proj {
            Proj::Pooled { k } => {
                let kk = (*k).min(nk);
                for r in 0..kk {
                    let (lo, hi) = segments::bounds(r, nk, kk);
                    let inv = T::ONE / T::of((hi - lo) as f64);
                    for j in lo..hi {
                        axpy(&mut dk[j * d..(j + 1) * d], inv, &dkp[r * d..(r + 1) * d]);
                        axpy(&mut dv[j * d..(j + 1) * d], inv, &dvp[r * d..(r + 1) * d]);
                    }
                }
            }
            Proj::Dense { k, e, f } => {
                let s = self.slot(t);
                for j in 0..nk {
                    for r in 0..*k {
                        axpy(&mut dk[j * d..(j + 1) * d], e[s][j * k + r], &dkp[r * d..(r + 1) * d]);
                        axpy(&mut dv[j * d..(j + 1) * d], f[s][j * k + r], &dvp[r * d..(r + 1) * d]);
                    }
                }
            }
        }
    }
}

/// The forward this module differentiates: O (B,H,N_q,D) and LSE (B,H,N_q), sinks included.
pub fn forward<T: Real>(x: &Inputs<'_, T>) -> (Vec<T>, Vec<T>) {
    let p = x.p;
    let per_task = p.group_size() * p.seq_q;
    let mut o = vec![T::ZERO; p.out_len()];
    let mut lse = vec![T::ZERO; p.lse_len()];
    o.par_chunks_mut(per_task * p.head_dim)
        .zip(lse.par_chunks_mut(per_task))
        .enumerate()
        .for_each(|(t, (o, l))| x.forward_task(t, o, l));
    (o, lse)
}

/// The gradients for the output gradient `d_out` (B,H,N_q,D) into `out`; with `want_proj` and
/// dense projections, also the projections' gradients.
pub fn backward<T: Real>(x: &Inputs<'_, T>, d_out: &[T], out: Out<'_, T>, want_proj: bool) -> Option<ProjGrads<T>> {
    let p = x.p;
    let (d, g) = (p.head_dim, p.group_size());
    let kv_chunk = p.seq_k * d;
    let parts: Vec<Part<T>> = out
        .dq
        .par_chunks_mut(g * p.seq_q * d)
        .zip(out.dk.par_chunks_mut(kv_chunk))
        .zip(out.dv.par_chunks_mut(kv_chunk))
        .enumerate()
        .map(|(t, ((dq, dk), dv))| {
            let mut ds = vec![T::ZERO; g];
            let (dkp, dvp) = x.backward_task(t, d_out, dq, dk, dv, &mut ds);
            (dkp, dvp, ds)
        })
        .collect();
    if let Some(dsinks) = out.dsinks {
        dsinks.iter_mut().for_each(|x| *x = T::ZERO);
        // Summed over the batch in task order: deterministic.
        for (t, (_, _, ds)) in parts.iter().enumerate() {
            for (gi, v) in ds.iter().enumerate() {
                dsinks[t % p.kv_heads * g + gi] += *v;
            }
        }
    }
    let Proj::Dense { k, e, .. } = &x.proj else { return None };
    if !want_proj {
        return None;
    }
    // dEᵀ_s[j] = Σ over the tasks of slot s that use key j of dK′_t·k_j (dF likewise), rows in
    // parallel, each row's sum in task order.
    let grad = |pick: fn(&Part<T>) -> &Vec<T>, src: &[T], s: usize| -> Vec<T> {
        let mut m = vec![T::ZERO; p.seq_k * k];
        m.par_chunks_mut(*k).enumerate().for_each(|(j, row)| {
            for (t, part) in parts.iter().enumerate().filter(|(t, _)| x.slot(*t) == s && j < x.used(*t)) {
                let xj = &src[t * kv_chunk + j * d..][..d];
                let dp = pick(part);
                row.iter_mut().enumerate().for_each(|(r, v)| *v += dot(&dp[r * d..(r + 1) * d], xj));
            }
        });
        m
    };
    let slots = 0..e.len();
    Some(ProjGrads {
        de: slots.clone().map(|s| grad(|p| &p.0, x.k, s)).collect(),
        df: slots.map(|s| grad(|p| &p.1, x.v, s)).collect(),
    })
}
