//! `linformer`: low-rank attention by projecting keys and values along the sequence axis
//! (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity", arXiv 2006.04768).
//!
//! Algorithm, per (batch, KV head): K′ = E·K and V′ = F·V with E, F ∈ ℝ^{k×N_k}, then for every
//! query head of the group O = softmax(scale·Q·K′ᵀ + b)·V′, the softmax running over the k
//! projected keys (b = 0 except for pooled projections). Q·K′ᵀ and P·V′ are f32 GEMMs
//! ([`crate::linalg::sgemm`]) streaming Q in blocks of 128 rows; the softmax uses
//! [`crate::simd::exp_shifted`].
//!
//! Projections ([`Projection`]):
//! - **pooled** (the default, [`Linformer::pooled`]; training-free): E = F = segment means,
//!   k contiguous segments of ⌊N_k/k⌋ or ⌈N_k/k⌉ keys ([`super::segments`]), and b_r =
//!   ln |segment r|, so a pooled key keeps its segment's share of the softmax mass:
//!   |seg|·exp(s·q·k̄) ≈ Σ_{j ∈ seg} exp(s·q·k_j) when the keys of a segment are alike. k is
//!   clamped to N_k; with k = N_k every segment is one key and the result is exact attention.
//!   Costs O(N_k·D) for the means, no stored matrix.
//! - **Gaussian** ([`Linformer::new`]): seeded entries N(0, 1/k), the paper's untrained
//!   initialization, or supplied by the user ([`Linformer::with_projections`]). E·K and F·V
//!   stream K and V in blocks of 512 keys (E, F stored transposed so a block's columns are
//!   contiguous). Sharing ([`Sharing`]): separate E and F per KV head (default), one matrix for
//!   keys and values per head, one E and one F for all heads, or one matrix for everything.
//!   Seeded matrices are a pure function of (seed, N_k, k, head, role), generated on first use
//!   for a given N_k (in parallel, one RNG per matrix, so thread-count independent) and cached
//!   for the most recent N_k only. k > N_k is allowed; with k = N_k and E = F = I the result is
//!   exact attention.
//!
//! Complexity: O(B·H·N·k·D) time; extra memory O(k·D) per KV head in flight, plus for Gaussian
//! projections the cached (1 or 2)·(H_kv or 1)·k·N_k floats (the Linformer parameter itself).
//!
//! Masks: non-causal, unbounded window only. E·K mixes every key into every projected key, so
//! there is no way to keep query i from seeing key j > i, nor to restrict it to a band: causal
//! and sliding-window problems are refused with `Unsupported` and that reason (even a window
//! wide enough to mask nothing: the request is judged, not its effect).
//!
//! Modifiers: attention sinks join each row's own softmax through its log-normalizer
//! ([`crate::lse::add_sinks`]). Used key lengths (`seqused_k`, n ≤ N_k keys of a batch entry)
//! shorten the key axis before the projection: pooled segments cut the n used keys, dense E and
//! F keep their first n columns, and a projected key that no used key reaches (its E row zero on
//! them, as for E = I) is dropped instead of entering the softmax as a zero key; with E = F = I
//! or pooled k ≥ n the result is exact attention over the used keys. ALiBi, softcap, bias and
//! mask are per (query, key) pair terms with no key to apply to after mixing, and are refused.
//!
//! LSE: we return ln Σ_r exp(scale·q·K′_r + b_r), the log-normalizer of Linformer's own softmax.
//! Pooled, it estimates the exact LSE (never above it, by Jensen; exact when k = N_k); Gaussian,
//! it equals the exact LSE only when E = I and otherwise is **not** an estimate of it.
//!
//! Accuracy: pooled projections beat the mean of V where attention is smooth along the sequence
//! and are on par with it on N(0, 1) inputs. Untrained Gaussian projections do **not**
//! approximate softmax attention: each projected key and value is a random mixture of all N_k
//! rows, of norm ≈ √(N_k/k)·‖k‖, so the scores are √(N_k/k) times too large and the softmax picks
//! a few projected values of norm ≈ √(N_k/k)·‖v‖, while exact attention over N(0, 1) data
//! averages many values into a small ‖O‖; the error grows with N_k/k. Gaussian Linformer is only
//! useful with projections learned together with the model.
//!
//! Backward: exact attention's backward over the projected keys, then dK = Eᵀ·dK′, dV = Fᵀ·dV′
//! ([`crate::grad::linformer`]); dense E and F get their gradients on request
//! ([`Linformer::backward_with_projections`], `linformer_backward.rs`).
//!
//! Measured figures (relative error beside the mean-of-V baseline per input family, pooled and
//! Gaussian, speed against `flash-cpu`, time and memory slopes) live in reports/README.md,
//! sections *Accuracy–speed frontier per input family* and *Results per backend* (written by
//! `attnkit report`); `examples/approx_frontier.rs` reproduces them at other sizes.

pub use super::linformer_proj::Sharing;
#[path = "linformer_backward.rs"]
mod backward;
use super::linformer_proj::{Mat, ProjSet, supplied_set, transpose};
use super::segments;
use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::grad::{GradsMut, Saved};
use crate::linalg::{MatRef, Par, sgemm};
use crate::options::{BackendOptions, Projection};
use crate::problem::Problem;
use crate::problem::modifiers::Modifier;
use crate::seeded;
pub use backward::ProjectionGrads;
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

/// Default projected length k.
pub const DEFAULT_PROJ_DIM: usize = 256;
/// Keys projected per GEMM block.
const KEY_BLOCK: usize = 512;
/// Query rows per GEMM block.
const QUERY_BLOCK: usize = 128;

enum Source {
    /// Segment means with the ln(segment size) logit correction: no matrix is stored.
    Pooled,
    /// Seeded N(0, 1/k) matrices; the cache holds (N_k, slots, set) for the latest N_k.
    Gaussian { seed: u64, cache: RwLock<Option<(usize, usize, Arc<ProjSet>)>> },
    /// User matrices for one fixed N_k.
    Supplied { seq_k: usize, set: Arc<ProjSet> },
}

/// The Linformer backend. See the module docs.
pub struct Linformer {
    k: usize,
    sharing: Sharing,
    source: Source,
}

impl Linformer {
    /// Seeded Gaussian projections of length `proj_dim`, separate E and F per KV head.
    pub fn new(proj_dim: usize, seed: u64) -> Result<Self> {
        Self::check_k(proj_dim)?;
        Ok(Linformer {
            k: proj_dim,
            sharing: Sharing::Separate,
            source: Source::Gaussian { seed, cache: RwLock::new(None) },
        })
    }

    /// Pooled projections: `proj_dim` segment means with the ln(segment size) logit correction
    /// (the training-free default, see the module docs).
    pub fn pooled(proj_dim: usize) -> Result<Self> {
        Self::check_k(proj_dim)?;
        Ok(Linformer { k: proj_dim, sharing: Sharing::Layerwise, source: Source::Pooled })
    }

    fn check_k(proj_dim: usize) -> Result<()> {
        if proj_dim == 0 {
            return Err(AttnError::invalid("linformer: proj_dim k must be ≥ 1, got 0"));
        }
        Ok(())
    }

    /// From registry options: `projection` (default pooled), `proj_dim` (default 256), `seed`.
    pub fn from_options(opts: &BackendOptions) -> Result<Self> {
        let k = opts.proj_dim.unwrap_or(DEFAULT_PROJ_DIM);
        match opts.projection.unwrap_or_default() {
            Projection::Pooled => Self::pooled(k),
            Projection::Gaussian => Self::new(k, opts.seed),
        }
    }

    /// Which projection this instance uses (supplied matrices count as Gaussian-style dense ones).
    pub fn projection(&self) -> Projection {
        match self.source {
            Source::Pooled => Projection::Pooled,
            _ => Projection::Gaussian,
        }
    }

    /// The number of projected keys for `seq_k` keys: min(k, N_k) when pooled, else k.
    pub fn effective_proj_dim(&self, seq_k: usize) -> usize {
        match self.source {
            Source::Pooled => self.k.min(seq_k),
            _ => self.k,
        }
    }

    /// Chooses how the seeded projections are shared. Supplied projections carry their own
    /// sharing (see [`Linformer::with_projections`]), so this only applies to seeded ones.
    pub fn with_sharing(mut self, sharing: Sharing) -> Result<Self> {
        match self.source {
            Source::Supplied { .. } => {
                return Err(AttnError::invalid(
                    "linformer: sharing of supplied projections is given by how many matrices were supplied",
                ));
            }
            Source::Pooled => {
                return Err(AttnError::invalid(
                    "linformer: pooled projections are fixed segment means; sharing applies to Gaussian ones",
                ));
            }
            Source::Gaussian { .. } => {}
        }
        self.sharing = sharing;
        self.source = match self.source {
            Source::Gaussian { seed, .. } => Source::Gaussian { seed, cache: RwLock::new(None) },
            s => s,
        };
        Ok(self)
    }

    /// User projections for sequences of exactly `seq_k` keys. `e` holds one k×N_k row-major
    /// matrix shared by every head, or one per KV head; `f` the same for values, or `None` to
    /// project values with E as well.
    pub fn with_projections(e: Vec<Vec<f32>>, f: Option<Vec<Vec<f32>>>, proj_dim: usize, seq_k: usize) -> Result<Self> {
        let (set, sharing) = supplied_set(e, f, proj_dim, seq_k)?;
        Ok(Linformer { k: proj_dim, sharing, source: Source::Supplied { seq_k, set: Arc::new(set) } })
    }

    /// The projected length k.
    pub fn proj_dim(&self) -> usize {
        self.k
    }

    /// How E and F are shared.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// Copies of (E, F), each k×N_k row-major, that KV head `kv_head` of a problem with `seq_k`
    /// keys and `kv_heads` KV heads is projected with (for tests and inspection).
    pub fn projection_pair(&self, seq_k: usize, kv_heads: usize, kv_head: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        if kv_head >= kv_heads {
            return Err(AttnError::invalid(format!("kv_head {kv_head} ≥ kv_heads {kv_heads}")));
        }
        if let Source::Pooled = self.source {
            let k = self.k.min(seq_k);
            let mut e = vec![0.0f32; k * seq_k];
            for (r, row) in e.chunks_mut(seq_k).enumerate() {
                let (lo, hi) = segments::bounds(r, seq_k, k);
                row[lo..hi].fill(1.0 / (hi - lo) as f32);
            }
            return Ok((e.clone(), e));
        }
        let set = self.projections(seq_k, kv_heads)?;
        let (et, ft) = set.pair(kv_head);
        Ok((transpose(et, seq_k, self.k), transpose(ft, seq_k, self.k)))
    }

    /// The seeded matrix for (N_k, slot, role ∈ {0 = E, 1 = F}), transposed (entry (r, j) of E
    /// is drawn at position j·k + r).
    fn gaussian_matrix(&self, seed: u64, seq_k: usize, slot: usize, role: u64) -> Mat {
        let s = seeded::derive_seed(seed, &[0x4c494e46, seq_k as u64, self.k as u64, slot as u64, role]);
        Arc::from(seeded::gaussian(s, self.k * seq_k, 1.0 / (self.k as f64).sqrt()))
    }

    fn projections(&self, seq_k: usize, kv_heads: usize) -> Result<Arc<ProjSet>> {
        let (seed, cache) = match &self.source {
            Source::Supplied { seq_k: n, set } => {
                if *n != seq_k || (set.e.len() != 1 && set.e.len() != kv_heads) {
                    return Err(AttnError::Unsupported {
                        backend: "linformer".into(),
                        reasons: self.projection_reasons(seq_k, kv_heads),
                    });
                }
                return Ok(set.clone());
            }
            Source::Gaussian { seed, cache } => (*seed, cache),
            Source::Pooled => return Err(AttnError::invalid("linformer: pooled projections have no matrices")),
        };
        let slots = if self.sharing.per_head() { kv_heads } else { 1 };
        if let Some((n, s, set)) = cache.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && *n == seq_k
            && *s >= slots
        {
            return Ok(set.clone());
        }
        let distinct = slots * if self.sharing.kv_shared() { 1 } else { 2 };
        let bytes =
            (distinct as u64).checked_mul(self.k as u64).and_then(|x| x.checked_mul(seq_k as u64)?.checked_mul(4));
        check_budget("linformer", "the seeded k×N_k projection matrices", bytes)?;
        let mats: Vec<Mat> =
            (0..distinct).into_par_iter().map(|i| self.gaussian_matrix(seed, seq_k, i / 2, (i % 2) as u64)).collect();
        let set = if self.sharing.kv_shared() {
            ProjSet { e: mats.clone(), f: mats }
        } else {
            let (e, f) = mats.chunks(2).map(|p| (p[0].clone(), p[1].clone())).unzip();
            ProjSet { e, f }
        };
        let set = Arc::new(set);
        *cache.write().unwrap_or_else(|e| e.into_inner()) = Some((seq_k, slots, set.clone()));
        Ok(set)
    }

    fn projection_reasons(&self, seq_k: usize, kv_heads: usize) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Source::Supplied { seq_k: n, set } = &self.source {
            if *n != seq_k {
                reasons.push(format!("the supplied projections are for N_k = {n}, the problem has N_k = {seq_k}"));
            }
            if set.e.len() != 1 && set.e.len() != kv_heads {
                reasons.push(format!(
                    "{} per-head projections were supplied but the problem has {kv_heads} KV heads",
                    set.e.len()
                ));
            }
        }
        reasons
    }

    /// Bytes one (batch, KV head) task allocates for `seq_k` keys.
    fn task_bytes(&self, d: usize, seq_k: usize) -> Option<u64> {
        let (k, d) = (self.effective_proj_dim(seq_k) as u64, d as u64);
        // K′, V′, the pooled logit bias, block scores; key and query blocks.
        let floats = (2 * d + 1 + QUERY_BLOCK as u64).checked_mul(k)? + (KEY_BLOCK + QUERY_BLOCK) as u64 * d;
        floats.checked_mul(4)
    }

    /// K′ = E·K and V′ = F·V of KV slice `t` (k×D each) over its first `nk` keys (the used ones),
    /// streamed in key blocks: the columns of E and F past `nk` are left out.
    fn project(&self, args: &AttnArgs<'_>, t: usize, nk: usize, set: &ProjSet) -> Result<(Vec<f32>, Vec<f32>)> {
        let p = args.problem();
        let (d, k) = (p.head_dim, self.k);
        let (e, f) = set.pair(t % p.kv_heads);
        let kv_base = t * p.seq_k * d;
        let mut kp = vec![0.0f32; k * d];
        let mut vp = vec![0.0f32; k * d];
        let mut buf = vec![0.0f32; KEY_BLOCK.min(nk) * d];
        for j0 in (0..nk).step_by(KEY_BLOCK) {
            let len = KEY_BLOCK.min(nk - j0);
            let beta = if j0 == 0 { 0.0 } else { 1.0 };
            for (src, proj, dst) in [(args.k(), e, &mut kp), (args.v(), f, &mut vp)] {
                let x = &mut buf[..len * d];
                src.read_f32(kv_base + j0 * d, x);
                // Columns j0..j0+len of E: rows j0..j0+len of the stored Eᵀ, viewed transposed.
                let cols = MatRef::transposed(&proj[j0 * k..(j0 + len) * k], len, k);
                sgemm(cols, MatRef::row_major(x, len, d), dst, d, 1.0, beta, Par::Serial)?;
            }
        }
        Ok((kp, vp))
    }

    /// With `seqused_k`, the projected keys that no used key reaches: row r of E is zero on the
    /// first `nk` columns. Such a key is a zero vector standing for no key at all, and would
    /// otherwise take exp(0) of the softmax; it is dropped (its logit is −∞). Identity
    /// projections thus give exact attention over the used keys; dense Gaussian rows are never
    /// all zero, so they keep all k.
    fn unreached(&self, e: &[f32], nk: usize) -> Vec<f32> {
        let k = self.k;
        (0..k).map(|r| if (0..nk).all(|j| e[j * k + r] == 0.0) { f32::NEG_INFINITY } else { 0.0 }).collect()
    }

    /// One (batch, KV head): project K and V (`set`, or segment means when it is `None`), then
    /// attend every query head of the group. `o` is (group, N_q, D) and `l` (group, N_q).
    fn one_kv_head(
        &self,
        args: &AttnArgs<'_>,
        t: usize,
        set: Option<&ProjSet>,
        o: &mut [f32],
        mut l: Option<&mut [f32]>,
    ) -> Result<()> {
        let p = args.problem();
        let (nq, d) = (p.seq_q, p.head_dim);
        // The used keys of this batch entry (all N_k without seqused_k); the causal and window
        // refusals leave nothing else that restricts a row's keys.
        let nk = p.mods.seqused_k.as_ref().map_or(p.seq_k, |u| u[t / p.kv_heads]);
        if nk == 0 {
            // No key: zeros and −∞ by contract (an empty softmax, not 0/0).
            o.fill(0.0);
            l.iter_mut().for_each(|l| l.fill(f32::NEG_INFINITY));
            return Ok(());
        }
        let k = self.effective_proj_dim(nk);
        let (kp, vp, bias) = match set {
            Some(set) => {
                let (kp, vp) = self.project(args, t, nk, set)?;
                let dropped = (nk < p.seq_k).then(|| self.unreached(set.pair(t % p.kv_heads).0, nk));
                (kp, vp, dropped)
            }
            None => {
                // Pooled key r stands for its |segment| keys: exp(s·q·k̄ + ln|seg|) = |seg|·exp(s·q·k̄).
                let bias: Vec<f32> =
                    (0..k).map(|r| segments::bounds(r, nk, k)).map(|(lo, hi)| ((hi - lo) as f32).ln()).collect();
                let base = t * p.seq_k * d;
                (segments::means(args.k(), base, nk, d, k), segments::means(args.v(), base, nk, d, k), Some(bias))
            }
        };
        let mut qbuf = vec![0.0f32; QUERY_BLOCK.min(nq) * d];
        let mut s = vec![0.0f32; QUERY_BLOCK.min(nq) * k];
        let g = p.group_size();
        for (gi, oh) in o.chunks_mut(nq * d).enumerate() {
            let q_base = (t * g + gi) * nq * d;
            let mut lh = l.as_deref_mut().map(|l| &mut l[gi * nq..(gi + 1) * nq]);
            for i0 in (0..nq).step_by(QUERY_BLOCK) {
                let c = QUERY_BLOCK.min(nq - i0);
                let q = &mut qbuf[..c * d];
                args.q().read_f32(q_base + i0 * d, q);
                let sc = &mut s[..c * k];
                sgemm(MatRef::row_major(q, c, d), MatRef::transposed(&kp, k, d), sc, k, p.scale, 0.0, Par::Serial)?;
                for (r, row) in sc.chunks_mut(k).enumerate() {
                    if let Some(b) = &bias {
                        row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                    }
                    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    if row.iter().all(|&x| x == f32::NEG_INFINITY) {
                        // Every projected key dropped (supplied E zero on all used columns).
                        row.fill(0.0);
                        if let Some(lh) = lh.as_deref_mut() {
                            lh[i0 + r] = f32::NEG_INFINITY;
                        }
                        continue;
                    }
                    crate::simd::exp_shifted(row, m);
                    let sum: f32 = row.iter().sum();
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                    if let Some(lh) = lh.as_deref_mut() {
                        lh[i0 + r] = m + sum.ln();
                    }
                }
                let od = &mut oh[i0 * d..(i0 + c) * d];
                sgemm(MatRef::row_major(sc, c, k), MatRef::row_major(&vp, k, d), od, d, 1.0, 0.0, Par::Serial)?;
            }
        }
        Ok(())
    }
}

impl Attention for Linformer {
    fn name(&self) -> &str {
        "linformer"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Approximate
    }
    fn device(&self) -> Device {
        Device::Cpu
    }

    /// The forward's refusals only (`backward_into` adds them): the backward covers everything
    /// the forward runs ([`crate::grad::linformer`]).
    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    fn backward_working_bytes(&self, p: &Problem) -> Option<u64> {
        self.backward_bytes(p, false)
    }
    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        self.run_backward(args, saved, grads, false).map(|_| ())
    }
    fn not_supported_reasons(&self, problem: &Problem) -> Vec<String> {
        // Sinks need only the row's log-normalizer, which linformer has (crate::lse::add_sinks);
        // used key lengths only shorten the key axis the projection runs over.
        let mut reasons = problem.mods.refusals_except(
            "linformer",
            "its projected keys mix every position, so per-pair terms have no key to apply to",
            &[Modifier::Sinks, Modifier::SequsedK],
        );
        if problem.causal {
            reasons.push(
                "causal masking is impossible: E·K mixes every key (future ones included) into each of the k projected \
                 keys, so no query can be kept from seeing keys after it; use an exact backend"
                    .to_string(),
            );
        }
        if !problem.window.is_unbounded() {
            reasons.push(format!(
                "a sliding window ({}) cannot be applied: projected keys mix all positions, so there is no band to \
                 restrict a query to; use an exact backend",
                problem.window
            ));
        }
        reasons.extend(self.projection_reasons(problem.seq_k, problem.kv_heads));
        reasons
    }

    /// The projection matrices (cached across calls, so counted) plus the per-task buffers of
    /// the tasks in flight.
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let in_flight = (p.batch * p.kv_heads).min(rayon::current_num_threads()).max(1) as u64;
        let tasks = self.task_bytes(p.head_dim, p.seq_k)?.checked_mul(in_flight)?;
        if let Source::Pooled = self.source {
            return Some(tasks);
        }
        let slots = if self.sharing.per_head() { p.kv_heads } else { 1 } as u64;
        let distinct = slots * if self.sharing.kv_shared() { 1 } else { 2 };
        let proj = distinct.checked_mul(self.k as u64)?.checked_mul(p.seq_k as u64)?.checked_mul(4)?;
        tasks.checked_add(proj)
    }

    /// LSE: the log-normalizer of the softmax over the k projected keys (see module docs).
    /// With sinks, each row's sink joins its own softmax's denominator ([`crate::lse::add_sinks`]).
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        crate::lse::compute_with_sinks(args.problem(), out, lse, |o, l| self.compute_rows(args, o, l))
    }
}

impl Linformer {
    /// Linformer's own rows (sinks aside).
    fn compute_rows(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let p = args.problem();
        let tasks = p.batch * p.kv_heads;
        let in_flight = tasks.min(rayon::current_num_threads()).max(1) as u64;
        check_budget(
            "linformer",
            "the projected keys/values and block buffers",
            self.task_bytes(p.head_dim, p.seq_k).and_then(|b| b.checked_mul(in_flight)),
        )?;
        let set = match self.source {
            Source::Pooled => None,
            _ => Some(self.projections(p.seq_k, p.kv_heads)?),
        };
        let per_task = p.group_size() * p.seq_q;
        let lse_parts: Vec<Option<&mut [f32]>> = match lse {
            Some(l) => l.chunks_mut(per_task).map(Some).collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        out.par_chunks_mut(per_task * p.head_dim)
            .zip(lse_parts.into_par_iter())
            .enumerate()
            .try_for_each(|(t, (o, l))| self.one_kv_head(args, t, set.as_deref(), o, l))
    }
}
