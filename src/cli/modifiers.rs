//! Score-modifier flags shared by `run`, `check` and `bench` (semantics in
//! `attnkit::modifiers`): read from `.npy` files, or synthesized for `check`/`bench`.

use attnkit::npy::{read_bools, read_ints, read_tensor};
use attnkit::{AttnError, Problem, alibi_slopes};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone, Default)]
pub struct ModifierArgs {
    /// ALiBi with the standard geometric slopes for the problem's H heads.
    #[arg(long)]
    pub alibi: bool,
    /// ALiBi slopes from a float32 .npy, shape (H,) or (B, H).
    #[arg(long, conflicts_with = "alibi")]
    pub alibi_slopes: Option<PathBuf>,
    /// Soft-capping: scores become C·tanh(s/C) (C > 0).
    #[arg(long)]
    pub softcap: Option<f32>,
    /// Attention sinks from a float32 .npy, shape (H,).
    #[arg(long)]
    pub sinks: Option<PathBuf>,
    /// Attention sinks: the same logit for every head (synthesized).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "sinks")]
    pub sinks_value: Option<f32>,
    /// Additive bias .npy (float32/float16), shape (B|1, H|1, N_q, N_k) or (N_q, N_k).
    #[arg(long)]
    pub bias: Option<PathBuf>,
    /// Boolean mask .npy (bool or uint8, true = attend), shape (B|1, H|1, N_q, N_k) or (N_q, N_k).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Packed sequences: query offsets .npy (int32/int64, S+1 values from 0 to N_q; B must be 1).
    #[arg(long, requires = "cu_seqlens_k")]
    pub cu_seqlens_q: Option<PathBuf>,
    /// Packed sequences: key offsets .npy (int32/int64, S+1 values from 0 to N_k).
    #[arg(long, requires = "cu_seqlens_q")]
    pub cu_seqlens_k: Option<PathBuf>,
    /// Used key length per batch entry (per sequence with cu_seqlens), .npy int32/int64.
    #[arg(long)]
    pub seqused_k: Option<PathBuf>,
    /// Synthesize packed sequences of these lengths (queries = keys); replaces the sequence
    /// length: the problem becomes (1, H, Σ lengths, D).
    #[arg(long, value_delimiter = ',', conflicts_with = "cu_seqlens_q")]
    pub seqlens: Vec<usize>,
    /// Synthesize a block-sparse boolean mask allowing this fraction of blocks.
    #[arg(long, conflicts_with = "mask")]
    pub mask_density: Option<f64>,
    /// Block size of the synthesized mask.
    #[arg(long, default_value_t = 64)]
    pub mask_block: usize,
}

pub use attnkit::attention::PairOwned;

fn npy_shape_err(path: &Path, what: &str, shape: &[usize], want: &str) -> AttnError {
    AttnError::shape(format!("{}: {what} has shape {shape:?}; expected {want}", path.display()))
}

fn f32s(path: &Path, what: &str) -> Result<Vec<f32>, AttnError> {
    let (t, shape) = read_tensor(path)?;
    if shape.len() > 2 {
        return Err(npy_shape_err(path, what, &shape, "rank 1 or 2"));
    }
    Ok(t.to_f32())
}

fn lengths(path: &Path, what: &str) -> Result<Vec<usize>, AttnError> {
    let (v, shape) = read_ints(path)?;
    if shape.len() != 1 {
        return Err(npy_shape_err(path, what, &shape, "rank 1"));
    }
    v.iter()
        .map(|&x| {
            usize::try_from(x)
                .map_err(|_| AttnError::invalid(format!("{}: {what} holds {x}; values must be ≥ 0", path.display())))
        })
        .collect()
}

/// (batch, heads) of a per-pair tensor's shape, checked against N_q × N_k.
fn pair_dims(path: &Path, what: &str, shape: &[usize], p: &Problem) -> Result<(usize, usize), AttnError> {
    let want = format!("(B|1, H|1, {}, {}) or ({}, {})", p.seq_q, p.seq_k, p.seq_q, p.seq_k);
    match *shape {
        [nq, nk] if (nq, nk) == (p.seq_q, p.seq_k) => Ok((1, 1)),
        [b, h, nq, nk] if (nq, nk) == (p.seq_q, p.seq_k) => Ok((b, h)),
        _ => Err(npy_shape_err(path, what, shape, &want)),
    }
}

impl ModifierArgs {
    /// Applies the flags to `p` (validated again) and loads or synthesizes bias/mask data.
    pub fn apply(&self, mut p: Problem, seed: u64) -> Result<(Problem, PairOwned), AttnError> {
        if !self.seqlens.is_empty() {
            if p.batch != 1 {
                return Err(AttnError::invalid(format!("--seqlens packs sequences: batch must be 1, got {}", p.batch)));
            }
            let cu: Vec<usize> = std::iter::once(0)
                .chain(self.seqlens.iter().scan(0usize, |a, &l| {
                    *a += l;
                    Some(*a)
                }))
                .collect();
            let total = *cu.last().unwrap_or(&0);
            p.seq_q = total;
            p.seq_k = total;
            p = p.with_varlen(cu.clone(), cu);
        }
        if let (Some(q), Some(k)) = (&self.cu_seqlens_q, &self.cu_seqlens_k) {
            p = p.with_varlen(lengths(q, "cu_seqlens_q")?, lengths(k, "cu_seqlens_k")?);
        }
        if self.alibi {
            p.mods.alibi_slopes = Some(alibi_slopes(p.heads));
        }
        if let Some(path) = &self.alibi_slopes {
            p = p.with_alibi(f32s(path, "alibi slopes")?);
        }
        if let Some(c) = self.softcap {
            p = p.with_softcap(c);
        }
        if let Some(path) = &self.sinks {
            p = p.with_sinks(f32s(path, "sinks")?);
        }
        if let Some(v) = self.sinks_value {
            p.mods.sinks = Some(vec![v; p.heads]);
        }
        if let Some(path) = &self.seqused_k {
            p = p.with_seqused_k(lengths(path, "seqused_k")?);
        }
        // Validate the shape-like options before reading data-sized files.
        p.validate()?;
        let mut pair = PairOwned::default();
        if let Some(path) = &self.bias {
            let (t, shape) = read_tensor(path)?;
            let (b, h) = pair_dims(path, "bias", &shape, &p)?;
            p = p.with_bias(b, h);
            pair.bias = Some(t);
        }
        if let Some(path) = &self.mask {
            let (m, shape) = read_bools(path)?;
            let (b, h) = pair_dims(path, "mask", &shape, &p)?;
            p = p.with_mask(b, h);
            pair.mask = Some(m);
        }
        if let Some(d) = self.mask_density {
            if !(0.0..=1.0).contains(&d) {
                return Err(AttnError::invalid(format!("--mask-density must be in [0, 1], got {d}")));
            }
            p = p.with_mask(1, 1);
            pair.mask = Some(attnkit::seeded::block_sparse_mask(p.seq_q, p.seq_k, self.mask_block, d, seed));
        }
        p.validate()?;
        Ok((p, pair))
    }
}
