//! `nystrom`: Nyström approximation of softmax attention with segment-mean landmarks
//! (Xiong et al. 2021, "Nyströmformer: A Nyström-Based Algorithm for Approximating
//! Self-Attention", arXiv 2102.03902).
//!
//! Algorithm, per (batch, query head), with s = `Problem::scale` and m landmarks:
//! Q̃, K̃ ∈ ℝ^{m×D} are the means of m contiguous segments of the queries and keys
//! ([`super::segments`]), and
//!
//! ```text
//! O = softmax(s·Q·K̃ᵀ) · Z · (softmax(s·Q̃·Kᵀ) · V),   Z ≈ Ã⁺,  Ã = softmax(s·Q̃·K̃ᵀ)
//! ```
//!
//! (row softmaxes; F̃ = softmax(s·Q·K̃ᵀ) is N_q×m, B̃ = softmax(s·Q̃·Kᵀ) is m×N_k). Z is the paper's
//! iterative Moore–Penrose pseudo-inverse (its Eq. 14 and reference code): Z₀ = Ãᵀ / (‖Ã‖₁·‖Ã‖_∞),
//! Z ← ¼·Z·(13I − ÃZ·(15I − ÃZ·(7I − ÃZ))), [`DEFAULT_PINV_ITERS`] = 6 times, in f64 GEMMs.
//! When Ã is singular (two landmarks alike, e.g. under huge logits) the iteration multiplies
//! rounding errors in its null space by 13/4 per step: harmless at 6 steps (≤ 1.2e3 × f64
//! rounding), which is one reason not to iterate much longer.
//! B̃·V streams the keys in blocks of 512 with an online (max-rescaled) softmax, so no m×N_k
//! matrix is stored; F̃ streams the queries in blocks of 128 rows against W = Z·(B̃·V) (m×D).
//! m is clamped to min(m, N_q, N_k); segments differ in size by at most one when m does not
//! divide N (the reference code requires it to divide). The paper's optional depthwise
//! convolution on V is a learned component and is left out: this backend is training-free.
//!
//! Complexity: O(B·H·(N_q + N_k)·m·D + B·H·m³) time (the m³ is 24·m³ flops of the pseudo-inverse
//! per head, in f64); extra memory O(m² + m·D + 512·(m + D)) per head in flight, independent of N.
//! Parallel over (batch, query head); every reduction runs in a fixed order inside one task, so
//! the output is bitwise identical for any thread count.
//!
//! Masks: non-causal, unbounded window only, as in the paper (bidirectional encoders): every
//! landmark averages a segment of the whole sequence and every row of B̃ sees every key, so no
//! query can be kept from keys after it or outside a band. Causal and windowed problems are
//! refused with `Unsupported` and that reason.
//!
//! NaN: the query landmarks mix the queries of a head, so a NaN in q (not only in k or v)
//! reaches every row of its (batch, head) — wider than the contract's per-row rule for q, which
//! this backend documents as its exception; other heads are bitwise unaffected.
//!
//! LSE: ln Σ_r |segment_r|·exp(s·q·k̃_r), the log-normalizer of the softmax over the key
//! landmarks with each landmark standing for its segment (the same estimate as pooled
//! `linformer`'s); it is exact when m = N_k, and by Jensen never above the exact LSE.
//!
//! Accuracy: good when attention is smooth along the sequence (the structured input family), no
//! better than the mean of V on unstructured N(0, 1) inputs and worse than it where attention is
//! local (the local-global family). Measured figures (relative error beside the mean-of-V
//! baseline per input family and landmark count, speed against `flash-cpu`, time and memory
//! slopes) live in reports/README.md, sections *Accuracy–speed frontier per input family* and
//! *Results per backend* (written by `attnkit report`).

use super::segments;
use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::linalg::{MatRef, Par, dgemm, sgemm};
use crate::options::BackendOptions;
use crate::problem::Problem;
use rayon::prelude::*;

/// Default number of landmarks m.
pub const DEFAULT_LANDMARKS: usize = 64;
/// Iterations of the pseudo-inverse (the paper's choice).
pub const DEFAULT_PINV_ITERS: usize = 6;
/// Keys per block of B̃·V.
const KEY_BLOCK: usize = 512;
/// Query rows per block of F̃·W.
const QUERY_BLOCK: usize = 128;

/// The Nyströmformer backend. See the module docs.
#[derive(Clone, Debug)]
pub struct Nystrom {
    landmarks: usize,
    pinv_iters: usize,
}

impl Nystrom {
    /// `landmarks` segment-mean landmarks, [`DEFAULT_PINV_ITERS`] pseudo-inverse iterations.
    pub fn new(landmarks: usize) -> Result<Self> {
        if landmarks == 0 {
            return Err(AttnError::invalid("nystrom: the number of landmarks m must be ≥ 1, got 0"));
        }
        Ok(Nystrom { landmarks, pinv_iters: DEFAULT_PINV_ITERS })
    }

    /// From registry options: `landmarks` (default 64).
    pub fn from_options(opts: &BackendOptions) -> Result<Self> {
        Self::new(opts.landmarks.unwrap_or(DEFAULT_LANDMARKS))
    }

    /// Runs the pseudo-inverse iteration `iters` times instead of 6 (0 leaves Z = Z₀).
    pub fn with_pinv_iters(mut self, iters: usize) -> Self {
        self.pinv_iters = iters;
        self
    }

    /// The requested landmark count m (before clamping to N).
    pub fn landmarks(&self) -> usize {
        self.landmarks
    }

    /// Pseudo-inverse iterations.
    pub fn pinv_iters(&self) -> usize {
        self.pinv_iters
    }

    /// The landmark count used for `p`: min(m, N_q, N_k).
    pub fn effective_landmarks(&self, p: &Problem) -> usize {
        self.landmarks.min(p.seq_q).min(p.seq_k)
    }

    /// Bytes one (batch, head) task allocates.
    fn task_bytes(&self, p: &Problem) -> Option<u64> {
        let (m, d) = (self.effective_landmarks(p) as u64, p.head_dim as u64);
        let (kb, qb) = (KEY_BLOCK as u64, QUERY_BLOCK as u64);
        // f32: Q̃, K̃, B̃V accumulator, W, key/value block, block scores, query block and scores.
        let f32s = 4 * m.checked_mul(d)? + 2 * kb * d + m.checked_mul(kb)? + qb * d + qb.checked_mul(m)? + 3 * m;
        // f64: Ã, Z and three m×m temporaries of the iteration.
        let f64s = m.checked_mul(m)?.checked_mul(5)?;
        f32s.checked_mul(4)?.checked_add(f64s.checked_mul(8)?)
    }
}

/// c = a·b for n×n row-major f64 matrices.
fn matmul(a: &[f64], b: &[f64], c: &mut [f64], n: usize) -> Result<()> {
    dgemm(MatRef::row_major(a, n, n), MatRef::row_major(b, n, n), c, n, 1.0, 0.0, Par::Serial)
}

/// The paper's iterative pseudo-inverse of the m×m matrix `a` (see module docs), in f64.
pub fn iterative_pinv(a: &[f64], m: usize, iters: usize) -> Result<Vec<f64>> {
    let col_max = (0..m).map(|c| (0..m).map(|r| a[r * m + c].abs()).sum::<f64>()).fold(0.0, f64::max);
    let row_max = a.chunks(m).map(|r| r.iter().map(|x| x.abs()).sum::<f64>()).fold(0.0, f64::max);
    let inv = 1.0 / (col_max * row_max);
    let mut z: Vec<f64> = (0..m * m).map(|i| a[(i % m) * m + i / m] * inv).collect();
    let (mut az, mut t, mut u) = (vec![0.0; m * m], vec![0.0; m * m], vec![0.0; m * m]);
    // t ← c·I − t, in place.
    let shift = |t: &mut [f64], c: f64| {
        t.iter_mut().for_each(|x| *x = -*x);
        (0..m).for_each(|i| t[i * m + i] += c);
    };
    for _ in 0..iters {
        matmul(a, &z, &mut az, m)?;
        t.copy_from_slice(&az);
        shift(&mut t, 7.0); // 7I − AZ
        matmul(&az, &t, &mut u, m)?;
        shift(&mut u, 15.0); // 15I − AZ(7I − AZ)
        matmul(&az, &u, &mut t, m)?;
        shift(&mut t, 13.0); // 13I − AZ(15I − AZ(7I − AZ))
        matmul(&z, &t, &mut u, m)?;
        z.iter_mut().zip(&u).for_each(|(z, u)| *z = 0.25 * u);
    }
    Ok(z)
}

/// Row softmax of the rows×cols f64 matrix `s` in place.
fn softmax_rows(s: &mut [f64], cols: usize) {
    for row in s.chunks_mut(cols) {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        row.iter_mut().for_each(|x| *x = (*x - mx).exp());
        let sum: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

impl Nystrom {
    /// One (batch, query head) `t`: `o` is its N_q×D output, `l` its N_q LSEs.
    fn one_head(&self, args: &AttnArgs<'_>, t: usize, o: &mut [f32], l: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        let (nq, nk, d, m) = (p.seq_q, p.seq_k, p.head_dim, self.effective_landmarks(p));
        let (b, h) = (t / p.heads, t % p.heads);
        let q_base = t * nq * d;
        let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * nk * d;
        let ql = segments::means(args.q(), q_base, nq, d, m);
        let kl = segments::means(args.k(), kv_base, nk, d, m);
        let s = p.scale as f64;

        // Ã = softmax(s·Q̃K̃ᵀ) and Z ≈ Ã⁺, in f64 (m×m, cheap next to the O(N·m·D) products).
        let mut a: Vec<f64> = (0..m * m)
            .map(|i| {
                let (x, y) = (&ql[(i / m) * d..(i / m + 1) * d], &kl[(i % m) * d..(i % m + 1) * d]);
                s * x.iter().zip(y).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>()
            })
            .collect();
        softmax_rows(&mut a, m);
        let z = iterative_pinv(&a, m, self.pinv_iters)?;

        let bv = self.landmark_rows(args, kv_base, &ql, m)?;
        // W = Z·(B̃V), m×D.
        let mut w = vec![0.0f32; m * d];
        for (wi, zi) in w.chunks_mut(d).zip(z.chunks(m)) {
            for c in 0..d {
                wi[c] = zi.iter().enumerate().map(|(r, &zr)| zr * bv[r * d + c] as f64).sum::<f64>() as f32;
            }
        }
        self.query_rows(args, q_base, &kl, &w, m, o, l)
    }

    /// B̃·V = softmax(s·Q̃·Kᵀ)·V (m×D), keys streamed in blocks with an online softmax.
    fn landmark_rows(&self, args: &AttnArgs<'_>, kv_base: usize, ql: &[f32], m: usize) -> Result<Vec<f32>> {
        let p = args.problem();
        let (nk, d) = (p.seq_k, p.head_dim);
        let mut acc = vec![0.0f32; m * d];
        let (mut mx, mut sum) = (vec![f32::NEG_INFINITY; m], vec![0.0f32; m]);
        let mut kx = vec![0.0f32; KEY_BLOCK.min(nk) * d];
        let mut vx = vec![0.0f32; KEY_BLOCK.min(nk) * d];
        let mut sc = vec![0.0f32; m * KEY_BLOCK.min(nk)];
        for j0 in (0..nk).step_by(KEY_BLOCK) {
            let len = KEY_BLOCK.min(nk - j0);
            let (kx, vx, sc) = (&mut kx[..len * d], &mut vx[..len * d], &mut sc[..m * len]);
            args.k().read_f32(kv_base + j0 * d, kx);
            args.v().read_f32(kv_base + j0 * d, vx);
            let kt = MatRef::transposed(kx, len, d);
            sgemm(MatRef::row_major(ql, m, d), kt, sc, len, p.scale, 0.0, Par::Serial)?;
            for (r, row) in sc.chunks_mut(len).enumerate() {
                let new = row.iter().cloned().fold(mx[r], f32::max);
                if new > mx[r] {
                    // exp(−∞) = 0 on the first block.
                    let c = (mx[r] - new).exp();
                    acc[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= c);
                    sum[r] *= c;
                    mx[r] = new;
                }
                crate::simd::exp_shifted(row, mx[r]);
                sum[r] += row.iter().sum::<f32>();
            }
            sgemm(MatRef::row_major(sc, m, len), MatRef::row_major(vx, len, d), &mut acc, d, 1.0, 1.0, Par::Serial)?;
        }
        for (r, row) in acc.chunks_mut(d).enumerate() {
            let inv = 1.0 / sum[r];
            row.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(acc)
    }

    /// O = softmax(s·Q·K̃ᵀ)·W, query blocks of 128 rows, and the LSE (module docs).
    #[allow(clippy::too_many_arguments)] // one head's inputs and outputs
    fn query_rows(
        &self,
        args: &AttnArgs<'_>,
        q_base: usize,
        kl: &[f32],
        w: &[f32],
        m: usize,
        o: &mut [f32],
        mut l: Option<&mut [f32]>,
    ) -> Result<()> {
        let p = args.problem();
        let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
        let sizes: Vec<f32> = (0..m).map(|r| segments::bounds(r, nk, m)).map(|(lo, hi)| (hi - lo) as f32).collect();
        let mut qx = vec![0.0f32; QUERY_BLOCK.min(nq) * d];
        let mut sc = vec![0.0f32; QUERY_BLOCK.min(nq) * m];
        for i0 in (0..nq).step_by(QUERY_BLOCK) {
            let c = QUERY_BLOCK.min(nq - i0);
            let (qx, sc) = (&mut qx[..c * d], &mut sc[..c * m]);
            args.q().read_f32(q_base + i0 * d, qx);
            sgemm(MatRef::row_major(qx, c, d), MatRef::transposed(kl, m, d), sc, m, p.scale, 0.0, Par::Serial)?;
            for (r, row) in sc.chunks_mut(m).enumerate() {
                let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                crate::simd::exp_shifted(row, mx);
                let sum: f32 = row.iter().sum();
                if let Some(l) = l.as_deref_mut() {
                    let weighted: f32 = row.iter().zip(&sizes).map(|(x, n)| x * n).sum();
                    l[i0 + r] = mx + weighted.ln();
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
            let od = &mut o[i0 * d..(i0 + c) * d];
            sgemm(MatRef::row_major(sc, c, m), MatRef::row_major(w, m, d), od, d, 1.0, 0.0, Par::Serial)?;
        }
        Ok(())
    }
}

impl Attention for Nystrom {
    fn name(&self) -> &str {
        "nystrom"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Approximate
    }
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        // Kept refused on purpose: the gradient would have to run back through every step of the
        // iterative pseudo-inverse (or use the pseudo-inverse's derivative, which blows up where
        // Ã is near-singular, e.g. two alike landmarks), plus both landmark softmaxes.
        vec![
            "nystrom has no backward pass: its forward multiplies by the iterative Moore–Penrose pseudo-inverse \
              Z ≈ Ã⁺ of the landmark kernel (the paper's Z ← ¼·Z·(13I − ÃZ·(15I − ÃZ·(7I − ÃZ))), a fixed number \
              of iterations in f64), whose gradient, back through every iteration, is not implemented; train \
              through flash-cpu or sdpa (exact), or linformer or performer (approximations with a backward)"
                .to_string(),
        ]
    }
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        let mut reasons = Vec::new();
        if problem.causal {
            reasons.push(
                "causal masking is impossible: each landmark is the mean of a segment of the whole sequence and \
                 softmax(Q̃·Kᵀ) sees every key, so no query can be kept from keys after it (Nyströmformer is \
                 for bidirectional attention); use an exact backend or performer"
                    .to_string(),
            );
        }
        if !problem.window.is_unbounded() {
            reasons.push(format!(
                "a sliding window ({}) cannot be applied: landmarks summarize all positions, so there is no band \
                 to restrict a query to; use local or an exact backend",
                problem.window
            ));
        }
        if problem.mods.diag_shift != 0 {
            reasons.push(format!(
                "a diagonal shift ({}) has no band or position to move: landmarks summarize all positions",
                problem.mods.diag_shift
            ));
        }
        reasons
    }

    /// The per-head buffers of the tasks in flight.
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let in_flight = (p.batch * p.heads).min(rayon::current_num_threads()).max(1) as u64;
        self.task_bytes(p)?.checked_mul(in_flight)
    }

    /// LSE: the landmark log-normalizer (module docs), an estimate of the exact LSE.
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        check_budget("nystrom", "the landmark matrices and block buffers", self.working_bytes(p))?;
        let per_task = p.seq_q;
        let tasks = p.batch * p.heads;
        let lse_parts: Vec<Option<&mut [f32]>> = match lse {
            Some(l) => l.chunks_mut(per_task).map(Some).collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        out.par_chunks_mut(per_task * p.head_dim)
            .zip(lse_parts.into_par_iter())
            .enumerate()
            .try_for_each(|(t, (o, l))| self.one_head(args, t, o, l))
    }
}
