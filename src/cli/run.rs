//! `attnkit run`: one backend on .npy inputs.
//!
//! Shapes: q is (B, H, N_q, D), k and v are (B, H_kv, N_k, D). Rank-3 arrays (H, N, D) are
//! accepted as B = 1 (all three must then be rank 3) and the output keeps the rank of q. All
//! three inputs must share one dtype (float32 or float16); the output (and LSE) is float32.

use super::modifiers::ModifierArgs;
use super::parse_window;
use attnkit::bench::with_threads;
use attnkit::npy::{read_tensor, shape4, write_f32};
use attnkit::{AttnArgs, AttnError, BackendOptions, Problem, Window};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Backend name (see `attnkit list`).
    #[arg(long)]
    pub backend: String,
    /// Queries, .npy (B, H, N_q, D) or (H, N_q, D).
    #[arg(long)]
    pub q: PathBuf,
    /// Keys, .npy (B, H_kv, N_k, D) or (H_kv, N_k, D).
    #[arg(long)]
    pub k: PathBuf,
    /// Values, same shape as the keys.
    #[arg(long)]
    pub v: PathBuf,
    /// Bottom-right aligned causal mask.
    #[arg(long)]
    pub causal: bool,
    /// Sliding window `L,R` (inclusive, -1 = unbounded).
    #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    /// Softmax scale (default 1/√D).
    #[arg(long, allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Threads in the rayon pool (default all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output path (float32 .npy, shape of q).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the log-sum-exp per query row (float32 .npy, (B, H, N_q) or (H, N_q)).
    #[arg(long)]
    pub lse: Option<PathBuf>,
    /// Linformer's projected length k.
    #[arg(long)]
    pub proj_dim: Option<usize>,
    /// Performer's random-feature count m.
    #[arg(long)]
    pub features: Option<usize>,
    /// Seed for random projections/features.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// local-block's block size.
    #[arg(long)]
    pub block_size: Option<usize>,
    #[command(flatten)]
    pub mods: ModifierArgs,
}

fn rank_error(name: &str, shape: &[usize]) -> AttnError {
    AttnError::shape(format!("{name} has shape {shape:?}; expected (B, H, N, D) or (H, N, D)"))
}

/// The problem the three shapes describe; errors name the disagreeing values.
pub fn problem_from_shapes(q: &[usize], k: &[usize], v: &[usize]) -> Result<Problem, AttnError> {
    if !(q.len() == k.len() && k.len() == v.len()) {
        return Err(AttnError::shape(format!("q, k, v must have the same rank; got shapes {q:?}, {k:?}, {v:?}")));
    }
    let [b, h, nq, d] = shape4(q).ok_or_else(|| rank_error("q", q))?;
    let [bk, hk, nk, dk] = shape4(k).ok_or_else(|| rank_error("k", k))?;
    if bk != b {
        return Err(AttnError::shape(format!("batch differs: q has B={b}, k/v have B={bk}")));
    }
    if dk != d {
        return Err(AttnError::shape(format!("head dim differs: q has D={d}, k/v have D={dk}")));
    }
    if hk == 0 || h % hk != 0 {
        return Err(AttnError::shape(format!("q has H={h} heads, k/v have H_kv={hk}; H must be a multiple of H_kv")));
    }
    if k != v {
        return Err(AttnError::shape(format!("k has shape {k:?} but v has shape {v:?}; they must match")));
    }
    let p = Problem::new(b, h, nq, d).with_kv_heads(hk).with_seq_k(nk);
    p.validate()?;
    Ok(p)
}

pub fn run(a: &RunArgs) -> Result<ExitCode, AttnError> {
    let opts = BackendOptions { proj_dim: a.proj_dim, features: a.features, seed: a.seed, block_size: a.block_size };
    let backend = attnkit::backend_with(&a.backend, &opts)?;
    let (q, qs) = read_tensor(&a.q)?;
    let (k, ks) = read_tensor(&a.k)?;
    let (v, vs) = read_tensor(&a.v)?;
    let mut p = problem_from_shapes(&qs, &ks, &vs)?;
    let dtypes = [q.as_ref().dtype(), k.as_ref().dtype(), v.as_ref().dtype()];
    if dtypes.iter().any(|d| *d != dtypes[0]) {
        return Err(AttnError::invalid(format!(
            "q, k, v must share a dtype; got {}, {}, {}",
            dtypes[0], dtypes[1], dtypes[2]
        )));
    }
    p = p.with_dtype(dtypes[0]).with_causal(a.causal).with_window(a.window.unwrap_or_default());
    if let Some(s) = a.scale {
        p = p.with_scale(s);
    }
    let (p, pair) = a.mods.apply(p, a.seed)?;
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair.as_pair())?;
    let out = with_threads(a.threads, || backend.forward(&args, a.lse.is_some()))??;
    write_f32(&a.out, &qs, &out.out)?;
    if let (Some(path), Some(lse)) = (&a.lse, &out.lse) {
        write_f32(path, &qs[..qs.len() - 1], lse)?;
    }
    Ok(ExitCode::SUCCESS)
}
