//! `performer`'s backward: the gradient of its documented FAVOR+ forward
//! ([`crate::backends::performer`]) with the random features ω held fixed (a constant, not a
//! parameter), generic over the float type so the same code runs in f32 (the backend) and in
//! f64 (the finite-difference tests, `tests/approx_gradients.rs`).
//!
//! Forward, per (batch, KV head) over its n used keys, with s = scale and row i seeing keys
//! j < hi(i) (hi = n, or the causal bound of [`crate::Problem::key_range_at`]):
//!
//! ```text
//! a_r(x)  = √s·ω_r·x − s‖x‖²/2                     (ReLU kernel: α·ω_r·x, α = √(s/m))
//! φq_ir   = exp(a_r(q_i) − c_i − ½ln m)             c_i = max_r a_r(q_i)      (ReLU: max(a,0)+ε)
//! φk_jr   = exp(a_r(k_j) − c_K − ½ln m)             c_K = max_{j<n, r} a_r(k_j)
//! S_i = Σ_{j<hi(i)} φk_jᵀ v_j,  z_i = Σ_{j<hi(i)} φk_j,  u_i = φq_i·z_i + δ
//! O_i = φq_iᵀ S_i / u_i,  L_i = ln(φq_i·z_i) + c_i + c_K;  with a sink σ: O_i ← w_i·O_i,
//! w_i = e^{L_i}/(e^{L_i} + e^σ)
//! ```
//!
//! Backward (g_i = dO_i; with a sink g_i ← w_i·g_i, dL_i = (dO_i·O_i^raw)·w_i(1 − w_i),
//! dσ −= dL_i): D_i = g_i·O_i, dnum_i = g_i/u_i, dden_i = −D_i/u_i + dL_i/(φq_i·z_i);
//! dφq_ir = S_r·dnum_i + z_r·dden_i; G_j = Σ_{i: hi(i)>j} φq_i ⊗ dnum_i, h_j likewise with dden_i
//! (suffix sums, walking keys backwards); dv_j = φk_jᵀ·G_j, dφk_jr = G_jr·v_j + h_jr. Through the
//! features, da = dφ∘φ and dx = √s·Σ_r da_r ω_r − s·(Σ_r da_r)·x. The shifts c_i and c_K are
//! maxima, differentiated as such: dc = −Σ da (+ Σ dL, as L contains them) lands on the argmax's
//! exponent (it is nonzero only through δ and the sink). The ReLU kernel has no shifts and
//! da_r = dφ_r·[a_r > 0].
//!
//! The passed O and LSE are not used: one pass recomputes the forward's state (O(N·m·D), the
//! forward's own cost). Three passes per (batch, KV head): the key shift, the rows in order (prefix
//! state, dQ), the keys in reverse (suffix state, dK, dV); the group's query heads share them.
//! Extra memory O(m·D) per task in flight plus dnum, dden (N_q·(D + 1) per head) and f32 copies
//! of Q, K, V. Every sum runs in a fixed order: the result does not depend on the thread count.

use super::real::{Real, axpy, dot};
use crate::options::Kernel;
use crate::problem::Problem;
use rayon::prelude::*;

/// δ of the forward.
const DELTA: f32 = crate::backends::performer::DENOM_STABILIZER;

/// One call's inputs in precision `T`: Q, K, V in the contract's layouts and ω (m×D row-major).
pub struct Inputs<'a, T> {
    pub p: &'a Problem,
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub omega: &'a [T],
    pub m: usize,
    pub kernel: Kernel,
}

/// Caller buffers for dQ, dK, dV (and dσ with sinks); every element is overwritten.
pub struct Out<'b, T> {
    pub dq: &'b mut [T],
    pub dk: &'b mut [T],
    pub dv: &'b mut [T],
    pub dsinks: Option<&'b mut [T]>,
}

/// A row's features: φ, the exponents (pre-activations for ReLU), the shift and its argmax.
struct Feat<T> {
    phi: Vec<T>,
    a: Vec<T>,
    shift: T,
    arg: usize,
}

impl<T: Real> Inputs<'_, T> {
    fn softmax(&self) -> bool {
        self.kernel == Kernel::Softmax
    }

    /// a_r(x) into `f.a`.
    fn exponents(&self, x: &[T], f: &mut Feat<T>) {
        let d = self.p.head_dim;
        let s = T::of32(self.p.scale);
        let (alpha, half) = if self.softmax() {
            (s.sqrt(), s * dot(x, x) * T::of(0.5))
        } else {
            ((s / T::of(self.m as f64)).sqrt(), T::ZERO)
        };
        for (r, a) in f.a.iter_mut().enumerate() {
            *a = alpha * dot(&self.omega[r * d..(r + 1) * d], x) - half;
        }
    }

    /// φ of `x` with shift `key_shift` (keys) or its own max (queries, `None`).
    fn features(&self, x: &[T], key_shift: Option<T>, f: &mut Feat<T>) {
        self.exponents(x, f);
        if !self.softmax() {
            let eps = T::of32(crate::backends::performer::RELU_STABILIZER);
            f.phi.iter_mut().zip(&f.a).for_each(|(p, &a)| *p = if a > T::ZERO { a } else { T::ZERO } + eps);
            return;
        }
        (f.shift, f.arg) = match key_shift {
            Some(c) => (c, 0),
            None => argmax(&f.a),
        };
        let c = f.shift + T::of(0.5 * (self.m as f64).ln());
        f.phi.iter_mut().zip(&f.a).for_each(|(p, &a)| *p = (a - c).exp());
    }

    /// dx += the features' vector–Jacobian product for dφ (in `dphi`, overwritten with da), plus
    /// `dshift` on the argmax exponent `arg` (softmax kernel). Returns Σ_r da_r.
    fn feature_vjp(&self, x: &[T], f: &Feat<T>, dphi: &mut [T], dshift: Option<(T, usize)>, dx: &mut [T]) -> T {
        let d = self.p.head_dim;
        let s = T::of32(self.p.scale);
        if !self.softmax() {
            let alpha = (s / T::of(self.m as f64)).sqrt();
            for (r, da) in dphi.iter_mut().enumerate() {
                if f.a[r] > T::ZERO {
                    axpy(dx, alpha * *da, &self.omega[r * d..(r + 1) * d]);
                }
            }
            return T::ZERO;
        }
        dphi.iter_mut().zip(&f.phi).for_each(|(da, &p)| *da *= p);
        let sum: T = dphi.iter().fold(T::ZERO, |a, &b| a + b);
        if let Some((dc, arg)) = dshift {
            dphi[arg] += dc;
        }
        let total: T = dphi.iter().fold(T::ZERO, |a, &b| a + b);
        let rs = s.sqrt();
        for (r, &da) in dphi.iter().enumerate() {
            axpy(dx, rs * da, &self.omega[r * d..(r + 1) * d]);
        }
        axpy(dx, -s * total, x);
        sum
    }

    fn feat(&self) -> Feat<T> {
        Feat { phi: vec![T::ZERO; self.m], a: vec![T::ZERO; self.m], shift: T::ZERO, arg: 0 }
    }

    fn used(&self, t: usize) -> usize {
        let p = self.p;
        p.mods.seqused_k.as_ref().map_or(p.seq_k, |u| u[t / p.kv_heads])
    }

    /// The keys row `i` of task `t` sees: [0, hi).
    fn hi(&self, t: usize, i: usize) -> usize {
        let nk = self.used(t);
        if self.p.causal { self.p.key_range_at(t / self.p.kv_heads, i).1.min(nk) } else { nk }
    }

    fn key<'x>(&self, x: &'x [T], t: usize, j: usize) -> &'x [T] {
        let d = self.p.head_dim;
        &x[(t * self.p.seq_k + j) * d..][..d]
    }

    /// c_K and its argmax (key, feature) over the used keys (softmax kernel; 0 for ReLU).
    fn key_shift(&self, t: usize) -> (T, usize, usize) {
        let mut f = self.feat();
        let mut best = (if self.softmax() { T::NEG_INFINITY } else { T::ZERO }, 0, 0);
        for j in (0..self.used(t)).filter(|_| self.softmax()) {
            self.exponents(self.key(self.k, t, j), &mut f);
            let (c, r) = argmax(&f.a);
            if c > best.0 {
                best = (c, j, r);
            }
        }
        best
    }

    /// The rows in order with the prefix state: calls `each(gi, i, feat, S, z, o_raw, den)` on
    /// every row that sees a key.
    fn walk_rows(&self, t: usize, ck: T, mut each: impl FnMut(usize, usize, &Feat<T>, &[T], &[T], &[T], T)) {
        let p = self.p;
        let (d, m, g) = (p.head_dim, self.m, p.group_size());
        let (mut st, mut z) = (vec![T::ZERO; m * d], vec![T::ZERO; m]);
        let (mut fk, mut fq) = (self.feat(), self.feat());
        let mut o = vec![T::ZERO; d];
        let mut absorbed = 0;
        for i in 0..p.seq_q {
            let hi = self.hi(t, i);
            while absorbed < hi {
                self.features(self.key(self.k, t, absorbed), Some(ck), &mut fk);
                let vj = self.key(self.v, t, absorbed);
                for (r, &ph) in fk.phi.iter().enumerate() {
                    axpy(&mut st[r * d..(r + 1) * d], ph, vj);
                    z[r] += ph;
                }
                absorbed += 1;
            }
            if hi == 0 {
                continue;
            }
            for gi in 0..g {
                self.features(&self.q[((t * g + gi) * p.seq_q + i) * d..][..d], None, &mut fq);
                let den = dot(&fq.phi, &z);
                let u = den + T::of32(DELTA);
                o.iter_mut().for_each(|x| *x = T::ZERO);
                for (r, &ph) in fq.phi.iter().enumerate() {
                    axpy(&mut o, ph / u, &st[r * d..(r + 1) * d]);
                }
                each(gi, i, &fq, &st, &z, &o, den);
            }
        }
    }

    /// L_i of a row and its sink weight w_i (1 without a sink).
    fn lse_and_weight(&self, h: usize, f: &Feat<T>, den: T, ck: T) -> (T, T) {
        let l = den.ln() + if self.softmax() { f.shift + ck } else { T::ZERO };
        match self.p.sink(h).map(T::of32) {
            None => (l, T::ONE),
            Some(s) => {
                let mx = l.max(s);
                let lf = mx + ((l - mx).exp() + (s - mx).exp()).ln();
                (lf, (l - lf).exp())
            }
        }
    }
}

/// (max, first argmax) of a nonempty slice.
fn argmax<T: Real>(a: &[T]) -> (T, usize) {
    a.iter().enumerate().fold((T::NEG_INFINITY, 0), |best, (r, &x)| if x > best.0 { (x, r) } else { best })
}

/// The forward this module differentiates: O (B,H,N_q,D) and LSE (B,H,N_q), sinks included.
pub fn forward<T: Real>(x: &Inputs<'_, T>) -> (Vec<T>, Vec<T>) {
    let p = x.p;
    let (d, g, nq) = (p.head_dim, p.group_size(), p.seq_q);
    let mut o = vec![T::ZERO; p.out_len()];
    let mut lse = vec![T::NEG_INFINITY; p.lse_len()];
    o.par_chunks_mut(g * nq * d).zip(lse.par_chunks_mut(g * nq)).enumerate().for_each(|(t, (o, l))| {
        let (ck, _, _) = x.key_shift(t);
        // A row that sees no key: O = 0, LSE = σ with a sink, else −∞.
        for (r, l) in l.iter_mut().enumerate() {
            *l = p.sink(t % p.kv_heads * g + r / nq).map_or(T::NEG_INFINITY, T::of32);
        }
        x.walk_rows(t, ck, |gi, i, f, _, _, oraw, den| {
            let (lf, w) = x.lse_and_weight(t % p.kv_heads * g + gi, f, den, ck);
            l[gi * nq + i] = lf;
            o[(gi * nq + i) * d..][..d].iter_mut().zip(oraw).for_each(|(o, &v)| *o = w * v);
        });
    });
    (o, lse)
}

/// The gradients for the output gradient `d_out` (B,H,N_q,D) into `out`.
pub fn backward<T: Real>(x: &Inputs<'_, T>, d_out: &[T], out: Out<'_, T>) {
    let p = x.p;
    let (d, g) = (p.head_dim, p.group_size());
    let kv_chunk = p.seq_k * d;
    let parts: Vec<Vec<T>> = out
        .dq
        .par_chunks_mut(g * p.seq_q * d)
        .zip(out.dk.par_chunks_mut(kv_chunk))
        .zip(out.dv.par_chunks_mut(kv_chunk))
        .enumerate()
        .map(|(t, ((dq, dk), dv))| x.backward_task(t, d_out, dq, dk, dv))
        .collect();
    if let Some(dsinks) = out.dsinks {
        dsinks.iter_mut().for_each(|x| *x = T::ZERO);
        for (t, ds) in parts.iter().enumerate() {
            for (gi, v) in ds.iter().enumerate() {
                dsinks[t % p.kv_heads * g + gi] += *v;
            }
        }
    }
}

impl<T: Real> Inputs<'_, T> {
    /// Task `t`'s gradients into its chunks; returns dσ of its query heads.
    fn backward_task(&self, t: usize, d_out: &[T], dq: &mut [T], dk: &mut [T], dv: &mut [T]) -> Vec<T> {
        let p = self.p;
        let (d, m, g, nq) = (p.head_dim, self.m, p.group_size(), p.seq_q);
        dq.iter_mut().chain(dk.iter_mut()).chain(dv.iter_mut()).for_each(|x| *x = T::ZERO);
        let mut ds = vec![T::ZERO; g];
        let (ck, jstar, rstar) = self.key_shift(t);
        // Pass 1: rows in order; dQ, and dnum, dden saved per row for the keys' pass.
        let mut dnum = vec![T::ZERO; g * nq * d];
        let mut dden = vec![T::ZERO; g * nq];
        let mut dl_total = T::ZERO;
        let mut dphi = vec![T::ZERO; m];
        self.walk_rows(t, ck, |gi, i, f, st, z, oraw, den| {
            let (row, h) = (gi * nq + i, t % p.kv_heads * g + gi);
            let gr = &d_out[((t * g + gi) * nq + i) * d..][..d];
            let (_, w) = self.lse_and_weight(h, f, den, ck);
            let draw = dot(gr, oraw);
            // The sink's share: dL = (dO·O_raw)·w(1 − w) (0 without a sink, where w = 1).
            let dl = if p.sink(h).is_some() && w > T::ZERO { draw * w * (T::ONE - w) } else { T::ZERO };
            ds[gi] -= dl;
            dl_total += dl;
            let u = den + T::of32(DELTA);
            let dn = &mut dnum[row * d..(row + 1) * d];
            dn.iter_mut().zip(gr).for_each(|(a, &b)| *a = w * b / u);
            dden[row] = -(w * draw) / u + if dl == T::ZERO { T::ZERO } else { dl / den };
            for (r, dp) in dphi.iter_mut().enumerate() {
                *dp = dot(&st[r * d..(r + 1) * d], dn) + z[r] * dden[row];
            }
            // dc_i = −Σ_r da_r + dL, computed inside from Σ da before the shift term is added.
            let sum: T = dphi.iter().zip(&f.phi).fold(T::ZERO, |a, (&x, &y)| a + x * y);
            let qi = &self.q[((t * g + gi) * nq + i) * d..][..d];
            self.feature_vjp(qi, f, &mut dphi, Some((dl - sum, f.arg)), &mut dq[row * d..(row + 1) * d]);
        });
        // Pass 2: keys in reverse with the suffix state of the rows that see them.
        let (mut gs, mut hs) = (vec![T::ZERO; m * d], vec![T::ZERO; m]);
        let (mut fk, mut fq) = (self.feat(), self.feat());
        let mut next_row = nq;
        let mut sum_dak = T::ZERO;
        for j in (0..self.used(t)).rev() {
            while next_row > 0 && self.hi(t, next_row - 1) > j {
                next_row -= 1;
                for gi in 0..g {
                    let row = gi * nq + next_row;
                    self.features(&self.q[((t * g + gi) * nq + next_row) * d..][..d], None, &mut fq);
                    for (r, &ph) in fq.phi.iter().enumerate() {
                        axpy(&mut gs[r * d..(r + 1) * d], ph, &dnum[row * d..(row + 1) * d]);
                        hs[r] += ph * dden[row];
                    }
                }
            }
            let (kj, vj) = (self.key(self.k, t, j), self.key(self.v, t, j));
            self.features(kj, Some(ck), &mut fk);
            for (r, &ph) in fk.phi.iter().enumerate() {
                axpy(&mut dv[j * d..(j + 1) * d], ph, &gs[r * d..(r + 1) * d]);
                dphi[r] = dot(&gs[r * d..(r + 1) * d], vj) + hs[r];
            }
            sum_dak += self.feature_vjp(kj, &fk, &mut dphi, None, &mut dk[j * d..(j + 1) * d]);
        }
        // c_K is the max exponent over all keys: its gradient lands on that key's exponent.
        if self.softmax() && self.used(t) > 0 {
            let dc = dl_total - sum_dak;
            let kj = self.key(self.k, t, jstar);
            let s = T::of32(p.scale);
            axpy(&mut dk[jstar * d..(jstar + 1) * d], s.sqrt() * dc, &self.omega[rstar * d..(rstar + 1) * d]);
            axpy(&mut dk[jstar * d..(jstar + 1) * d], -s * dc, kj);
        }
        ds
    }
}
