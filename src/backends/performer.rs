//! `performer`: FAVOR+ linear attention with positive orthogonal random features
//! (Choromanski et al. 2020, "Rethinking Attention with Performers", arXiv 2009.14794).
//!
//! Estimator. With s = `Problem::scale`, data are scaled by √s on each side (q̃ = √s·q,
//! k̃ = √s·k, so q̃·k̃ = s·q·k; for the default s = 1/√D this is the paper's D^(−1/4)), and
//! exp(q̃·k̃) ≈ φ(q̃)·φ(k̃) with the positive features φ(x)_r = exp(ω_rᵀx − ‖x‖²/2)/√m, r < m.
//! Then O_i = Σ_j φ(q̃_i)·φ(k̃_j) v_j / (Σ_j φ(q̃_i)·φ(k̃_j) + δ).
//!
//! Features ([`orthogonal_features`]): ⌈m/D⌉ blocks of D Gaussian rows, orthonormalized by
//! modified Gram–Schmidt (two passes) in f64, each row rescaled to an independent
//! chi(D)-distributed norm so every ω_r is marginally N(0, I_D). Block b depends only on
//! (seed, D, b), so the features for m are a prefix of those for any m′ > m. One ω matrix
//! (m×D) serves every head, as in the reference implementation; it is generated on first use
//! for a head dimension and cached. [`Performer::with_iid_features`] switches to i.i.d. rows.
//!
//! Kernels ([`Kernel`], `--kernel`): `softmax` (default) is FAVOR+ as above; `relu` is the paper's
//! generalized attention with f = ReLU (its §2.2 and the reference `relu_kernel_transformation`):
//! φ(x)_r = ReLU(ω_rᵀx̃/√m) + ε with ε = [`RELU_STABILIZER`] = 1e-3, same ω, same x̃ = √s·x,
//! O_i = Σ_j φ(q̃_i)·φ(k̃_j) v_j / (Σ_j φ(q̃_i)·φ(k̃_j) + δ). It is a different attention
//! kernel, not an estimate of softmax attention; its features need no shifts (all shifts are 0),
//! and causal runs work the same way. Its accuracy against softmax attention per input family is
//! in reports/.
//!
//! Stabilization (softmax kernel), as in the reference implementation (google-research/performer, fast_attention):
//! - queries: each row's exponents ω_rᵀq̃ − ‖q̃‖²/2 are shifted by that row's max over r (a
//!   per-row constant, cancels in the ratio; unlike the reference we include −‖q̃‖²/2 in the
//!   max, which keeps exp(−‖q̃‖²/2) from underflowing to 0/0 for large ‖q‖);
//! - keys: one shift for the whole (batch, KV head): the max over all positions and features.
//!   A per-key shift would reweight keys against each other and bias the estimator.
//!   Non-causal runs keep a running max over key blocks and rescale the accumulated state when
//!   it grows (single pass, same result as the global max); causal runs make a first pass for it;
//! - δ = [`DENOM_STABILIZER`] = 1e-6 is added to the (shifted) denominator.
//!
//! Non-causal: K′ᵀV (m×D) and Σ_j K′_j (m) are accumulated over key blocks, then each query
//! block is one GEMM with K′ᵀV. Causal (bottom-right aligned, N_q ≠ N_k allowed): query blocks
//! of 128 rows walk the keys in order with a running prefix state S = Σ K′_jᵀ v_j (m×D) and
//! z = Σ K′_j (m); the keys inside a block's own diagonal band are handled by a masked
//! (128×≤128) GEMM. Running state is O(m·D) per KV head in flight, never O(N·m·D).
//! Sliding windows are refused: a band needs a prefix-state difference, which cancels
//! catastrophically for these positive sums.
//!
//! Used key lengths (`seqused_k`): each batch entry's sums over keys (K′ᵀV, Σ K′_j, the key
//! shift) run over its first n used keys only, and causal rows align to n (as
//! [`Problem::key_range_at`]), so the result equals the same call on the entry cut to n keys; an
//! entry with n = 0 gives zero rows and LSE −∞. Other per-pair modifiers are refused.
//!
//! Complexity: O(B·H·N·m·D) time; extra memory O(m·D + 128·(m + D)) per KV head in flight,
//! independent of N. Parallel over (batch, KV head) pairs; every reduction runs in a fixed
//! order inside one task, so outputs are bitwise identical for any thread count.
//!
//! LSE: we return ln(Σ_j φ(q̃_i)·φ(k̃_j)) + shifts, the estimator's log-normalizer, i.e. the log of
//! the FAVOR+ estimate of Σ_j exp(s·q_i·k_j). It is an estimate of the exact LSE, not the LSE.
//! With the ReLU kernel it is the log of that kernel's normalizer, not an estimate of the LSE.
//!
//! Accuracy: the estimator is unbiased for each exp(q̃·k̃) but its relative variance is
//! (exp(‖q̃ + k̃‖²) − 1)/m for i.i.d. features (paper, Lemma 2; orthogonal ones are slightly
//! better), so the error grows exponentially with the input norms: the log-normalizer's error
//! grows without bound, while the output error saturates at a few units because both O and its
//! estimate are (near-)convex combinations of the values. Plain N(0, 1) inputs at D = 64 are
//! already far outside the useful range (`examples/approx_scaling.rs norms` tabulates the error
//! against the input scale). On small-norm inputs the error falls like m^(−1/2)
//! (tests/performer.rs fits the slope and accepts −0.75 … −0.25).
//!
//! Backward: the gradient of this forward with ω held fixed, through the features, the
//! normalizer with its δ and the max-shifts, causal and sinks included ([`crate::grad::performer`],
//! `performer_backward.rs`).
//!
//! Measured figures (relative error beside the mean-of-V baseline per input family, softmax and
//! ReLU kernels, speed against `flash-cpu` and `sdpa`, time and memory slopes, causal and not)
//! live in reports/README.md, sections *Accuracy–speed frontier per input family* and
//! *Results per backend* (written by `attnkit report`).

use super::performer_features::FeatureMap;
#[path = "performer_backward.rs"]
mod backward;
pub use super::performer_features::{RELU_STABILIZER, iid_features, orthogonal_features};
use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::grad::{GradsMut, Saved};
use crate::linalg::{MatRef, Par, sgemm};
use crate::options::BackendOptions;
use crate::options::Kernel;
use crate::problem::Problem;
use crate::problem::modifiers::Modifier;
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

/// Default number of random features m.
pub const DEFAULT_FEATURES: usize = 256;
/// δ added to the shifted denominator.
pub const DENOM_STABILIZER: f32 = 1e-6;
/// Rows per block, for keys and queries alike.
const BLOCK: usize = 128;

/// The Performer backend. See the module docs.
pub struct Performer {
    m: usize,
    seed: u64,
    orthogonal: bool,
    kernel: Kernel,
    /// (D, ω) for the most recent head dimension.
    cache: RwLock<Option<(usize, Arc<[f32]>)>>,
}

impl Performer {
    /// `features` orthogonal random features drawn from `seed`.
    pub fn new(features: usize, seed: u64) -> Result<Self> {
        if features == 0 {
            return Err(AttnError::invalid("performer: the number of features m must be ≥ 1, got 0"));
        }
        Ok(Performer { m: features, seed, orthogonal: true, kernel: Kernel::Softmax, cache: RwLock::new(None) })
    }

    /// From registry options: `features` (default 256), `seed` and `kernel` (default softmax).
    pub fn from_options(opts: &BackendOptions) -> Result<Self> {
        Ok(Self::new(opts.features.unwrap_or(DEFAULT_FEATURES), opts.seed)?
            .with_kernel(opts.kernel.unwrap_or_default()))
    }

    /// Uses `kernel`'s features (same ω).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The kernel the features estimate.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Uses i.i.d. Gaussian features instead of orthogonal ones.
    pub fn with_iid_features(mut self) -> Self {
        self.orthogonal = false;
        self.cache = RwLock::new(None);
        self
    }

    /// The number of features m.
    pub fn features(&self) -> usize {
        self.m
    }

    /// ω, m×D row-major, for head dimension `d` (what `compute` uses).
    pub fn feature_matrix(&self, d: usize) -> Result<Arc<[f32]>> {
        if let Some((cd, w)) = self.cache.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && *cd == d
        {
            return Ok(w.clone());
        }
        let bytes = (self.m as u64).checked_mul(d as u64).and_then(|x| x.checked_mul(12));
        check_budget("performer", "the m×D random feature matrix", bytes)?;
        let w: Arc<[f32]> = if self.orthogonal {
            orthogonal_features(self.m, d, self.seed)
        } else {
            iid_features(self.m, d, self.seed)
        }
        .into();
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some((d, w.clone()));
        Ok(w)
    }

    /// Bytes one (batch, KV head) task allocates.
    fn task_bytes(&self, d: usize) -> Option<u64> {
        let m = self.m as u64;
        let (d, b) = (d as u64, BLOCK as u64);
        // state m·D + z; key block K, V, features; query block Q, features, row shifts; band scores.
        let floats = m.checked_mul(d)? + m + b * (2 * d) + b.checked_mul(m)? * 2 + b * (d + 1) + b * b;
        floats.checked_mul(4)
    }
}

/// Running K′ᵀV (m×D) and Σ K′ (m) of one KV head.
struct KvState {
    kv: Vec<f32>,
    z: Vec<f32>,
}

impl KvState {
    fn new(m: usize, d: usize) -> Self {
        KvState { kv: vec![0.0; m * d], z: vec![0.0; m] }
    }
    /// Adds the key features `kf` (rows×m) with their values `v` (rows×D).
    fn absorb(&mut self, kf: &[f32], v: &[f32], m: usize, d: usize) -> Result<()> {
        let rows = kf.len() / m;
        if rows == 0 {
            return Ok(());
        }
        sgemm(MatRef::transposed(kf, rows, m), MatRef::row_major(v, rows, d), &mut self.kv, d, 1.0, 1.0, Par::Serial)?;
        for row in kf.chunks(m) {
            self.z.iter_mut().zip(row).for_each(|(z, x)| *z += x);
        }
        Ok(())
    }
    fn rescale(&mut self, r: f32) {
        self.kv.iter_mut().chain(self.z.iter_mut()).for_each(|x| *x *= r);
    }
}

/// Buffers of one task, allocated once.
struct Scratch {
    kx: Vec<f32>,
    vx: Vec<f32>,
    kf: Vec<f32>,
    qx: Vec<f32>,
    qf: Vec<f32>,
    qshift: Vec<f32>,
    band: Vec<f32>,
}

impl Scratch {
    fn new(m: usize, d: usize) -> Self {
        Scratch {
            kx: vec![0.0; BLOCK * d],
            vx: vec![0.0; BLOCK * d],
            kf: vec![0.0; BLOCK * m],
            qx: vec![0.0; BLOCK * d],
            qf: vec![0.0; BLOCK * m],
            qshift: vec![0.0; BLOCK],
            band: vec![0.0; BLOCK * BLOCK],
        }
    }
}

/// One task's view of the call.
struct Task<'a, 'b> {
    args: &'a AttnArgs<'b>,
    fm: FeatureMap<'a>,
    /// Index of (batch, KV head).
    t: usize,
}

impl Task<'_, '_> {
    fn kv_base(&self) -> usize {
        self.t * self.args.problem().seq_k * self.fm.d
    }

    /// Keys this task reads: the batch entry's used length with `seqused_k`, else N_k. Keys past
    /// it are neither read nor counted, as in exact attention.
    fn used_keys(&self) -> usize {
        let p = self.args.problem();
        p.mods.seqused_k.as_ref().map_or(p.seq_k, |u| u[self.t / p.kv_heads])
    }

    /// Loads keys [j0, j1) and their exponents into the scratch (`len·m` of `kf`).
    fn key_exponents(&self, s: &mut Scratch, j0: usize, j1: usize) -> Result<()> {
        let d = self.fm.d;
        let kx = &mut s.kx[..(j1 - j0) * d];
        self.args.k().read_f32(self.kv_base() + j0 * d, kx);
        self.fm.raw(kx, &mut s.kf[..(j1 - j0) * self.fm.m])
    }

    fn load_values(&self, s: &mut Scratch, j0: usize, j1: usize) {
        let d = self.fm.d;
        self.args.v().read_f32(self.kv_base() + j0 * d, &mut s.vx[..(j1 - j0) * d]);
    }

    /// Query features of rows [i0, i0 + c) of group member `gi` into `s.qf`, shifts into `s.qshift`.
    fn query_features(&self, s: &mut Scratch, gi: usize, i0: usize, c: usize) -> Result<()> {
        let p = self.args.problem();
        let d = self.fm.d;
        let base = ((self.t * p.group_size() + gi) * p.seq_q + i0) * d;
        let qx = &mut s.qx[..c * d];
        self.args.q().read_f32(base, qx);
        self.fm.queries(qx, &mut s.qf[..c * self.fm.m], &mut s.qshift[..c])
    }

    /// Divides each output row by its denominator and writes the estimator's LSE.
    fn normalize(od: &mut [f32], den: &[f32], shift: &[f32], key_shift: f32, d: usize, mut lse: Option<&mut [f32]>) {
        for (r, row) in od.chunks_mut(d).enumerate() {
            let inv = 1.0 / (den[r] + DENOM_STABILIZER);
            row.iter_mut().for_each(|x| *x *= inv);
            if let Some(l) = lse.as_deref_mut() {
                l[r] = den[r].ln() + shift[r] + key_shift;
            }
        }
    }

    /// Σ_r qf_r·z for each query row.
    fn denominators(qf: &[f32], z: &[f32], den: &mut [f32]) {
        for (dn, row) in den.iter_mut().zip(qf.chunks(z.len())) {
            *dn = row.iter().zip(z).map(|(a, b)| a * b).sum();
        }
    }

    fn non_causal(&self, o: &mut [f32], mut l: Option<&mut [f32]>) -> Result<()> {
        let p = self.args.problem();
        let (nq, nk, m, d) = (p.seq_q, self.used_keys(), self.fm.m, self.fm.d);
        if nk == 0 {
            // No key: zeros and −∞ by contract, whatever the queries hold.
            o.fill(0.0);
            l.iter_mut().for_each(|l| l.fill(f32::NEG_INFINITY));
            return Ok(());
        }
        let mut s = Scratch::new(m, d);
        let mut st = KvState::new(m, d);
        let mut key_shift = f32::NEG_INFINITY;
        for j0 in (0..nk).step_by(BLOCK) {
            let j1 = (j0 + BLOCK).min(nk);
            self.key_exponents(&mut s, j0, j1)?;
            self.load_values(&mut s, j0, j1);
            let kf = &mut s.kf[..(j1 - j0) * m];
            let block_max = self.fm.key_shift_of(kf);
            if block_max > key_shift {
                // Rescale what was accumulated under the old shift; exp(−∞) = 0 on the first block.
                st.rescale((key_shift - block_max).exp());
                key_shift = block_max;
            }
            self.fm.finish_keys(kf, key_shift);
            st.absorb(kf, &s.vx[..(j1 - j0) * d], m, d)?;
        }
        let mut den = [0.0f32; BLOCK];
        for (gi, oh) in o.chunks_mut(nq * d).enumerate() {
            let mut lh = l.as_deref_mut().map(|l| &mut l[gi * nq..(gi + 1) * nq]);
            for i0 in (0..nq).step_by(BLOCK) {
                let c = BLOCK.min(nq - i0);
                self.query_features(&mut s, gi, i0, c)?;
                let qf = &s.qf[..c * m];
                let od = &mut oh[i0 * d..(i0 + c) * d];
                sgemm(MatRef::row_major(qf, c, m), MatRef::row_major(&st.kv, m, d), od, d, 1.0, 0.0, Par::Serial)?;
                Self::denominators(qf, &st.z, &mut den[..c]);
                let lr = lh.as_deref_mut().map(|l| &mut l[i0..i0 + c]);
                Self::normalize(od, &den[..c], &s.qshift[..c], key_shift, d, lr);
            }
        }
        Ok(())
    }

    fn causal(&self, o: &mut [f32], mut l: Option<&mut [f32]>) -> Result<()> {
        let p = self.args.problem();
        let (nq, nk, m, d) = (p.seq_q, self.used_keys(), self.fm.m, self.fm.d);
        let mut s = Scratch::new(m, d);
        // Pass 1: the single key shift, over all keys of this head (a causal row's ratio does not
        // depend on it, but δ and the LSE do, and they must not depend on the block walk).
        let mut key_shift = if self.fm.shifts_keys() { f32::NEG_INFINITY } else { 0.0 };
        for j0 in (0..nk).step_by(BLOCK).filter(|_| self.fm.shifts_keys()) {
            let j1 = (j0 + BLOCK).min(nk);
            self.key_exponents(&mut s, j0, j1)?;
            key_shift = key_shift.max(self.fm.key_shift_of(&s.kf[..(j1 - j0) * m]));
        }
        // Bottom-right aligned to the used keys (Problem::key_range_at).
        let b = self.t / p.kv_heads;
        let hi = |i: usize| p.key_range_at(b, i).1;
        let mut st = KvState::new(m, d);
        let mut absorbed = 0usize;
        let mut den = [0.0f32; BLOCK];
        for i0 in (0..nq).step_by(BLOCK) {
            let c = BLOCK.min(nq - i0);
            let lo_blk = hi(i0);
            // Keys every row of this block sees (only before the first block when N_k > N_q).
            while absorbed < lo_blk {
                let j1 = (absorbed + BLOCK).min(lo_blk);
                self.key_exponents(&mut s, absorbed, j1)?;
                self.load_values(&mut s, absorbed, j1);
                let kf = &mut s.kf[..(j1 - absorbed) * m];
                self.fm.finish_keys(kf, key_shift);
                st.absorb(kf, &s.vx[..(j1 - absorbed) * d], m, d)?;
                absorbed = j1;
            }
            // The block's own band: keys [lo_blk, hi_blk), at most BLOCK of them since hi(i)
            // grows by at most one per row; it reaches the next block's start so the state can
            // absorb it afterwards.
            let hi_blk = if i0 + c < nq { hi(i0 + c) } else { hi(i0 + c - 1) };
            let nb = hi_blk - lo_blk;
            if nb > 0 {
                self.key_exponents(&mut s, lo_blk, hi_blk)?;
                self.load_values(&mut s, lo_blk, hi_blk);
                self.fm.finish_keys(&mut s.kf[..nb * m], key_shift);
            }
            for (gi, oh) in o.chunks_mut(nq * d).enumerate() {
                self.query_features(&mut s, gi, i0, c)?;
                let qf = &s.qf[..c * m];
                let od = &mut oh[i0 * d..(i0 + c) * d];
                sgemm(MatRef::row_major(qf, c, m), MatRef::row_major(&st.kv, m, d), od, d, 1.0, 0.0, Par::Serial)?;
                Self::denominators(qf, &st.z, &mut den[..c]);
                if nb > 0 {
                    let band = &mut s.band[..c * nb];
                    let kf = MatRef::transposed(&s.kf[..nb * m], nb, m);
                    sgemm(MatRef::row_major(qf, c, m), kf, band, nb, 1.0, 0.0, Par::Serial)?;
                    for (r, row) in band.chunks_mut(nb).enumerate() {
                        let allowed = hi(i0 + r).saturating_sub(lo_blk).min(nb);
                        row[allowed..].fill(0.0);
                        den[r] += row[..allowed].iter().sum::<f32>();
                    }
                    sgemm(
                        MatRef::row_major(band, c, nb),
                        MatRef::row_major(&s.vx[..nb * d], nb, d),
                        od,
                        d,
                        1.0,
                        1.0,
                        Par::Serial,
                    )?;
                }
                let mut lr = l.as_deref_mut().map(|l| &mut l[gi * nq + i0..gi * nq + i0 + c]);
                Self::normalize(od, &den[..c], &s.qshift[..c], key_shift, d, lr.as_deref_mut());
                // Rows that see no key at all: zeros and −∞ by contract, not 0/δ.
                for r in (0..c).filter(|&r| hi(i0 + r) == 0) {
                    od[r * d..(r + 1) * d].fill(0.0);
                    if let Some(lr) = lr.as_deref_mut() {
                        lr[r] = f32::NEG_INFINITY;
                    }
                }
            }
            if nb > 0 {
                st.absorb(&s.kf[..nb * m], &s.vx[..nb * d], m, d)?;
            }
            absorbed = absorbed.max(hi_blk);
        }
        Ok(())
    }
}

impl Attention for Performer {
    fn name(&self) -> &str {
        "performer"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Approximate
    }
    fn device(&self) -> Device {
        Device::Cpu
    }

    /// The forward's refusals only (`backward_into` adds them): the backward covers everything
    /// the forward runs, ω held fixed ([`crate::grad::performer`]).
    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    fn backward_working_bytes(&self, p: &Problem) -> Option<u64> {
        self.backward_bytes(p)
    }
    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        self.run_backward(args, saved, grads)
    }
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        // Sinks need only the row's log-normalizer: the softmax kernel's LSE estimates it; the ReLU
        // kernel's normalizer is not a softmax's, so a sink logit has no meaning there. Used key
        // lengths only shorten the sums over keys, for either kernel.
        let implemented: &[Modifier] =
            if self.kernel == Kernel::Softmax { &[Modifier::Sinks, Modifier::SequsedK] } else { &[Modifier::SequsedK] };
        let mut r = problem.mods.refusals_except(
            "performer",
            "FAVOR+ never forms per-pair scores, so there is no score to modify",
            implemented,
        );
        if problem.window.is_unbounded() {
            return r;
        }
        r.push(format!(
            "a sliding window ({}) is not supported: FAVOR+ would need differences of prefix sums of \
             positive features, which cancel catastrophically; use causal=true without a window, or an exact backend",
            problem.window
        ));
        r
    }

    /// The m×D feature matrix (with its construction scratch) plus the per-task state and
    /// buffers of the tasks in flight.
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let in_flight = (p.batch * p.kv_heads).min(rayon::current_num_threads()).max(1) as u64;
        let tasks = self.task_bytes(p.head_dim)?.checked_mul(in_flight)?;
        let features = (self.m as u64).checked_mul(p.head_dim as u64)?.checked_mul(12)?;
        tasks.checked_add(features)
    }

    /// LSE: the log of the FAVOR+ estimate of Σ_j exp(scale·q·k_j) (see module docs).
    /// With sinks (softmax kernel), each row's sink joins its estimated normalizer
    /// ([`crate::lse::add_sinks`]).
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        crate::lse::compute_with_sinks(args.problem(), out, lse, |o, l| self.compute_rows(args, o, l))
    }
}

impl Performer {
    /// FAVOR+'s own rows (sinks aside).
    fn compute_rows(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        let tasks = p.batch * p.kv_heads;
        let in_flight = tasks.min(rayon::current_num_threads()).max(1) as u64;
        let what =
            if p.causal { "the causal prefix state and block buffers" } else { "the K′ᵀV state and block buffers" };
        check_budget("performer", what, self.task_bytes(p.head_dim).and_then(|b| b.checked_mul(in_flight)))?;
        let omega = self.feature_matrix(p.head_dim)?;
        let per_task = p.group_size() * p.seq_q;
        let lse_parts: Vec<Option<&mut [f32]>> = match lse {
            Some(l) => l.chunks_mut(per_task).map(Some).collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        out.par_chunks_mut(per_task * p.head_dim).zip(lse_parts.into_par_iter()).enumerate().try_for_each(
            |(t, (o, l))| {
                let fm = FeatureMap { omega: &omega, m: self.m, d: p.head_dim, scale: p.scale, kernel: self.kernel };
                let task = Task { args, fm, t };
                if p.causal { task.causal(o, l) } else { task.non_causal(o, l) }
            },
        )
    }
}
