//! Context parallelism: one attention problem split by sequence across P ranks (processes,
//! machines), exact against the single-process result.
//!
//! # Algorithm (ring attention, Liu et al.; ring-flash-attention's zigzag layout)
//! The N rows of Q, K and V are cut into C chunks whose sizes differ by at most one
//! ([`ShardPlan`]): C = P with [`Layout::Contiguous`] (rank r holds chunk r), C = 2P with
//! [`Layout::Zigzag`] (rank r holds chunks r and 2P−1−r, so every rank has the same causal work).
//! Each rank keeps its queries and passes its K/V block around the ring ([`ring::forward`]): at
//! step s it posts the nonblocking send of the block in hand to rank+1 and the receive from
//! rank−1, computes its queries against the block in hand with `flash-cpu` (each chunk pair is
//! classified by the global band of its rows, [`block::pair`]: skipped when the causal mask or
//! the window excludes it entirely, unmasked when no row is masked, otherwise a masked
//! sub-problem whose diagonal shift keeps the global positions; ALiBi keeps them too), merges the partial result into its accumulator by LSE in f32
//! ([`crate::merge_partials`]), and waits. The merge order is the step order, fixed by the rank,
//! so results are bitwise reproducible run to run (they differ from one process's summation
//! order by rounding only, within FlashAttention's tolerance rule).
//! [`Schedule::AllGather`] (Llama 3's context parallelism) gathers every K/V block first and
//! then computes, in the same order.
//!
//! The backward ([`ring::backward`]) circulates K/V again, with each block's dK/dV accumulator
//! travelling one step behind it around a second ring and arriving home after P steps; dQ stays
//! local. Each chunk pair's gradients come from `flash-cpu`'s backward given the *global* O and
//! LSE of the query rows, which makes them the exact contributions of that pair.
//!
//! # Complexity
//! Per rank: the allowed pairs of its rows (≈ 1/P of the total with zigzag or non-causal, and
//! with a window in either layout, since every row then has at most L+R+1 keys) times 4·D FLOPs
//! forward, plus O(rows) per chunk pair to classify it; memory O((N/P)·(H + 2·H_kv)·D) plus two K/V blocks in flight. Traffic per
//! rank per step: one K/V block, 2·B·H_kv·(N/C)·D·4 bytes per chunk held (GQA sends H_kv heads
//! only); the backward sends the K/V block and its dK/dV accumulator.
//!
//! # Caveats
//! f32 inputs; self-attention (N_q = N_k). Supported: causal, sliding windows (one- or
//! two-sided, with or without causal), ALiBi ((H,) or (B,H) slopes), softcap, a diagonal shift
//! of the whole problem (all position-dependent terms use each chunk's global offset), and
//! sinks (added once, after the merge). Refused by name ([`not_supported_reasons`]): f16/bf16
//! inputs, N_q ≠ N_k, packed varlen and used key lengths (their per-sequence alignment is not
//! a contiguous shard of one sequence), additive bias and boolean masks (their data is N_q×N_k,
//! which no rank holds), head_dim > 256. N must be at least the chunk count C. With a window
//! narrower than a chunk most pairs are skipped, but every block still travels the whole ring
//! (the ring does not shorten to the window's reach). The transport is MPI ([`mpi`], feature
//! `mpi`) or, for tests and single-machine runs, threads in one process ([`local::ThreadRing`]).

pub mod block;
pub mod local;
pub mod model;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod ring;

use crate::error::{AttnError, Result};
use crate::problem::{DType, Problem};
use serde::Serialize;

/// How the sequence is cut into chunks and which rank holds which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// P chunks, rank r holds chunk r. Balanced for non-causal attention only.
    Contiguous,
    /// 2P chunks, rank r holds chunks r and 2P−1−r: balanced causal work.
    Zigzag,
}

/// How K/V reach every rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// P steps around a ring, the next block's transfer overlapped with the current compute.
    Ring,
    /// All K/V blocks gathered first (one collective), then computed on.
    AllGather,
}

impl std::str::FromStr for Layout {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "contiguous" => Ok(Layout::Contiguous),
            "zigzag" => Ok(Layout::Zigzag),
            _ => Err(AttnError::invalid(format!("unknown layout `{s}` (expected contiguous or zigzag)"))),
        }
    }
}

/// A run of consecutive global rows `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Chunk {
    pub start: usize,
    pub len: usize,
}

impl Chunk {
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Which global rows every rank holds for a sequence of `n` rows over `ranks` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ShardPlan {
    pub n: usize,
    pub ranks: usize,
    pub layout: Layout,
}

impl ShardPlan {
    /// Checks `ranks ≥ 1` and that every chunk holds at least one row.
    pub fn new(n: usize, ranks: usize, layout: Layout) -> Result<Self> {
        let plan = ShardPlan { n, ranks, layout };
        if ranks == 0 {
            return Err(AttnError::invalid("the ring needs at least 1 rank, got 0"));
        }
        if n < plan.chunk_count() {
            return Err(AttnError::shape(format!(
                "N={n} is shorter than the {} chunks of the {layout:?} layout over P={ranks} ranks: every chunk needs a row",
                plan.chunk_count()
            )));
        }
        Ok(plan)
    }

    /// C: P (contiguous) or 2P (zigzag).
    pub fn chunk_count(&self) -> usize {
        match self.layout {
            Layout::Contiguous => self.ranks,
            Layout::Zigzag => 2 * self.ranks,
        }
    }

    /// Chunk `c` of C: rows `[c·N/C, (c+1)·N/C)` (sizes differ by at most one).
    pub fn chunk(&self, c: usize) -> Chunk {
        let cc = self.chunk_count();
        let start = c * self.n / cc;
        Chunk { start, len: (c + 1) * self.n / cc - start }
    }

    /// The chunks rank `r` holds, in the order its buffers store them.
    pub fn chunks_of(&self, r: usize) -> Vec<Chunk> {
        match self.layout {
            Layout::Contiguous => vec![self.chunk(r)],
            Layout::Zigzag => vec![self.chunk(r), self.chunk(2 * self.ranks - 1 - r)],
        }
    }

    /// Rows rank `r` holds.
    pub fn rows_of(&self, r: usize) -> usize {
        self.chunks_of(r).iter().map(|c| c.len).sum()
    }
}

/// Every reason the distributed computation cannot run `p` (empty when it can), by name.
pub fn not_supported_reasons(p: &Problem) -> Vec<String> {
    let mut r = Vec::new();
    if p.dtype != DType::F32 {
        r.push(format!("the ring takes f32 inputs, got {}", p.dtype));
    }
    if p.seq_q != p.seq_k {
        r.push(format!("the ring shards self-attention: N_q={} must equal N_k={}", p.seq_q, p.seq_k));
    }
    use crate::modifiers::Modifier;
    let why = "the ring shards one dense sequence by position";
    let implemented = [Modifier::Softcap, Modifier::Sinks, Modifier::Alibi, Modifier::DiagShift];
    r.extend(p.mods.refusals_except("the ring", why, &implemented));
    if p.head_dim > 256 {
        r.push(format!("flash-cpu (each rank's engine) takes head_dim ≤ 256, got {}", p.head_dim));
    }
    r
}

/// [`not_supported_reasons`] as an error.
pub fn check_supported(p: &Problem) -> Result<()> {
    p.validate()?;
    let reasons = not_supported_reasons(p);
    if reasons.is_empty() { Ok(()) } else { Err(AttnError::Unsupported { backend: "ring".into(), reasons }) }
}

/// Rows `rows` (one chunk) of a (B, H, N, D) tensor as a contiguous (B, H, len, D) tensor.
pub fn slice_rows(data: &[f32], batch_heads: usize, n: usize, d: usize, rows: Chunk) -> Vec<f32> {
    let mut out = Vec::with_capacity(batch_heads * rows.len * d);
    for bh in 0..batch_heads {
        let base = (bh * n + rows.start) * d;
        out.extend_from_slice(&data[base..base + rows.len * d]);
    }
    out
}

/// Writes a contiguous (B, H, len, D) chunk back into rows `rows` of a (B, H, N, D) tensor.
pub fn put_rows(dst: &mut [f32], batch_heads: usize, n: usize, d: usize, rows: Chunk, src: &[f32]) {
    for bh in 0..batch_heads {
        let base = (bh * n + rows.start) * d;
        dst[base..base + rows.len * d].copy_from_slice(&src[bh * rows.len * d..(bh + 1) * rows.len * d]);
    }
}

/// One rank's share of the inputs: its query chunks (B, H, len, D) one after another, and its
/// K/V block laid out as it travels: for each chunk, K (B, H_kv, len, D) then V.
#[derive(Clone, Debug)]
pub struct Shard {
    pub rank: usize,
    pub chunks: Vec<Chunk>,
    pub q: Vec<f32>,
    pub kv: Vec<f32>,
}

impl Shard {
    /// Cuts rank `rank`'s shard out of full (B, H, N, D) Q and (B, H_kv, N, D) K, V.
    pub fn from_full(p: &Problem, plan: &ShardPlan, rank: usize, q: &[f32], k: &[f32], v: &[f32]) -> Result<Self> {
        check_plan(p, plan)?;
        if q.len() != p.q_len() || k.len() != p.kv_len() || v.len() != p.kv_len() {
            return Err(AttnError::shape(format!(
                "q, k, v have {}, {}, {} elements, expected {}, {}, {} for {p}",
                q.len(),
                k.len(),
                v.len(),
                p.q_len(),
                p.kv_len(),
                p.kv_len()
            )));
        }
        let (bh, bkv, n, d) = (p.batch * p.heads, p.batch * p.kv_heads, p.seq_q, p.head_dim);
        let chunks = plan.chunks_of(rank);
        let mut sq = Vec::new();
        let mut kv = Vec::new();
        for &c in &chunks {
            sq.extend(slice_rows(q, bh, n, d, c));
            kv.extend(slice_rows(k, bkv, n, d, c));
            kv.extend(slice_rows(v, bkv, n, d, c));
        }
        Ok(Shard { rank, chunks, q: sq, kv })
    }

    /// Checks the shard's lengths against `p` and `plan` (a bad shard is refused by name before
    /// any communication).
    pub fn check(&self, p: &Problem, plan: &ShardPlan) -> Result<()> {
        let want = plan.chunks_of(self.rank);
        let rows = plan.rows_of(self.rank);
        let (q_want, kv_want) = (p.batch * p.heads * rows * p.head_dim, 2 * p.batch * p.kv_heads * rows * p.head_dim);
        if self.chunks != want || self.q.len() != q_want || self.kv.len() != kv_want {
            return Err(AttnError::shape(format!(
                "rank {}: shard has chunks {:?}, q {} and kv {} elements; the plan wants chunks {want:?}, q {q_want} and kv {kv_want}",
                self.rank,
                self.chunks,
                self.q.len(),
                self.kv.len()
            )));
        }
        Ok(())
    }
}

/// The plan must cover the problem's sequence.
pub fn check_plan(p: &Problem, plan: &ShardPlan) -> Result<()> {
    check_supported(p)?;
    if plan.n != p.seq_q {
        return Err(AttnError::shape(format!("the shard plan covers N={} but the problem has N={}", plan.n, p.seq_q)));
    }
    ShardPlan::new(plan.n, plan.ranks, plan.layout).map(|_| ())
}

/// Elements of the K/V block of `chunks`: 2·B·H_kv·rows·D.
pub fn kv_block_len(p: &Problem, chunks: &[Chunk]) -> usize {
    2 * p.batch * p.kv_heads * p.head_dim * chunks.iter().map(|c| c.len).sum::<usize>()
}

/// Elements of the query rows of `chunks` for `width` values per row (D for Q/O, 1 for LSE).
pub fn rows_len(p: &Problem, chunks: &[Chunk], width: usize) -> usize {
    p.batch * p.heads * width * chunks.iter().map(|c| c.len).sum::<usize>()
}

/// Reassembles full (B, H, N, `width`) rows from every rank's chunk-major buffers (rank order).
pub fn gather_full(p: &Problem, plan: &ShardPlan, per_rank: &[Vec<f32>], width: usize, heads: usize) -> Vec<f32> {
    let bh = p.batch * heads;
    let mut full = vec![0.0f32; bh * p.seq_q * width];
    for (r, buf) in per_rank.iter().enumerate() {
        let mut at = 0;
        for c in plan.chunks_of(r) {
            let n = bh * c.len * width;
            put_rows(&mut full, bh, p.seq_q, width, c, &buf[at..at + n]);
            at += n;
        }
    }
    full
}

/// Reassembles full (B, H_kv, N, D) K-like and V-like tensors (e.g. dK, dV) from every rank's
/// K/V-block-shaped buffers (rank order).
pub fn gather_kv(p: &Problem, plan: &ShardPlan, per_rank: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let (bkv, d) = (p.batch * p.kv_heads, p.head_dim);
    let (mut k, mut v) = (vec![0.0f32; p.kv_len()], vec![0.0f32; p.kv_len()]);
    for (r, buf) in per_rank.iter().enumerate() {
        let mut at = 0;
        for c in plan.chunks_of(r) {
            let n = bkv * c.len * d;
            put_rows(&mut k, bkv, p.seq_k, d, c, &buf[at..at + n]);
            put_rows(&mut v, bkv, p.seq_k, d, c, &buf[at + n..at + 2 * n]);
            at += 2 * n;
        }
    }
    (k, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_pairs_chunks_and_uneven_sizes_differ_by_one() {
        let plan = ShardPlan::new(13, 3, Layout::Zigzag).unwrap();
        let lens: Vec<usize> = (0..6).map(|c| plan.chunk(c).len).collect();
        assert_eq!(lens.iter().sum::<usize>(), 13);
        assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
        assert_eq!(plan.chunks_of(0), vec![plan.chunk(0), plan.chunk(5)]);
        assert_eq!(plan.chunks_of(2), vec![plan.chunk(2), plan.chunk(3)]);
        let c = ShardPlan::new(10, 4, Layout::Contiguous).unwrap();
        assert_eq!((0..4).map(|r| c.rows_of(r)).sum::<usize>(), 10);
        let e = ShardPlan::new(5, 3, Layout::Zigzag).unwrap_err().to_string();
        assert!(e.contains("N=5") && e.contains("6 chunks"), "{e}");
    }

    #[test]
    fn refusals_name_the_modifier() {
        let mut p = Problem::new(1, 2, 8, 8).with_window(crate::Window::new(4, 0)).with_alibi(vec![0.5, 0.25]);
        p.mods.sinks = Some(vec![0.0, 1.0]);
        p.mods.softcap = Some(30.0);
        assert!(not_supported_reasons(&p.clone().with_diag_shift(3)).is_empty());
        let cases: Vec<(Problem, &str)> = vec![
            (p.clone().with_bias(1, 1), "additive bias"),
            (p.clone().with_mask(1, 2), "boolean mask"),
            (p.clone().with_varlen(vec![0, 3, 8], vec![0, 3, 8]), "varlen"),
            (p.clone().with_seqused_k(vec![5]), "seqused_k"),
            (p.clone().with_dtype(DType::BF16), "f32 inputs, got bf16"),
            (p.clone().with_seq_k(9), "N_q=8 must equal N_k=9"),
        ];
        for (q, want) in cases {
            let r = not_supported_reasons(&q);
            assert!(r.len() == 1 && r[0].contains(want), "{want}: {r:?}");
        }
    }
}
