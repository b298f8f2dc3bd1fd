//! `attnkit run`: one backend on .npy inputs, or (feature `safetensors`) on named tensors of a
//! .safetensors file (src/safetensors_io.rs reads and writes those).
//!
//! Shapes: q is (B, H, N_q, D), k and v are (B, H_kv, N_k, D). Rank-3 arrays (H, N, D) are
//! accepted as B = 1 (all three must then be rank 3) and the output keeps the rank of q. All
//! three inputs must share one dtype (float32 or float16); the output (and LSE) is float32.
//!
//! With `--d-out dO.npy` (q's shape), the backward runs after the forward and writes dQ (q's
//! shape), dK and dV (k's shape) to `--dq`, `--dk`, `--dv`, plus dσ ((H,), `--dsinks`) and dB
//! (the bias's declared shape, `--dbias`) when asked: float32, whatever the input dtype.

use super::modifiers::ModifierArgs;
use super::parse_window;
use attnkit::interop::{common_dtype, problem_from_shapes};
use attnkit::npy::{read_tensor, write_f32};
use attnkit::tensor::Tensor;
use attnkit::threads::with_threads;
use attnkit::{AttnArgs, AttnError, BackendOptions, Problem, Window};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Backend name (see `attnkit list`).
    #[arg(long)]
    pub backend: String,
    /// Read --q, --k and --v as tensor names in this .safetensors file (memory-mapped).
    #[cfg(feature = "safetensors")]
    #[arg(long)]
    pub safetensors: Option<PathBuf>,
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
    /// Output path (float32 .npy, shape of q; .safetensors holds it as `out`).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the log-sum-exp per query row (float32 .npy, (B, H, N_q) or (H, N_q);
    /// .safetensors holds it as `lse`).
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
    /// Gradient of the output, .npy with q's shape (float32, float16 or bfloat16): run the
    /// backward after the forward and write --dq, --dk, --dv (float32).
    #[arg(long, requires_all = ["dq", "dk", "dv"])]
    pub d_out: Option<PathBuf>,
    /// Where to write dQ (float32 .npy, q's shape).
    #[arg(long, requires = "d_out")]
    pub dq: Option<PathBuf>,
    /// Where to write dK (float32 .npy, k's shape; summed over each KV group's query heads).
    #[arg(long, requires = "d_out")]
    pub dk: Option<PathBuf>,
    /// Where to write dV (float32 .npy, v's shape).
    #[arg(long, requires = "d_out")]
    pub dv: Option<PathBuf>,
    /// Where to write the sinks' gradient (float32 .npy, (H,)); needs --sinks or --sinks-value.
    #[arg(long, requires = "d_out")]
    pub dsinks: Option<PathBuf>,
    /// Where to write the bias gradient (float32 .npy, (B|1, H|1, N_q, N_k) as the bias was
    /// declared); needs --bias. Computed only when asked: it is N_q×N_k sized.
    #[arg(long, requires_all = ["d_out", "bias"])]
    pub dbias: Option<PathBuf>,
}

/// One input: a `.npy` path, or with `--safetensors` a tensor name in that file.
fn read_input(a: &RunArgs, arg: &Path) -> Result<(Tensor, Vec<usize>), AttnError> {
    #[cfg(feature = "safetensors")]
    if let Some(file) = &a.safetensors {
        return attnkit::safetensors_io::read_tensor(file, &arg.to_string_lossy());
    }
    let _ = a;
    read_tensor(arg)
}

/// Writes `data` as float32 `.npy`, or as tensor `name` of a `.safetensors` file.
fn write_output(path: &Path, name: &str, shape: &[usize], data: &[f32]) -> Result<(), AttnError> {
    #[cfg(feature = "safetensors")]
    if attnkit::safetensors_io::is_safetensors_path(path) {
        return attnkit::safetensors_io::write_f32(path, &[(name, shape, data)]);
    }
    let _ = name;
    write_f32(path, shape, data)
}

pub fn run(a: &RunArgs) -> Result<ExitCode, AttnError> {
    let opts = BackendOptions {
        proj_dim: a.proj_dim,
        features: a.features,
        seed: a.seed,
        block_size: a.block_size,
        ..Default::default()
    };
    let backend = attnkit::backend_with(&a.backend, &opts)?;
    let (q, qs) = read_input(a, &a.q)?;
    let (k, ks) = read_input(a, &a.k)?;
    let (v, vs) = read_input(a, &a.v)?;
    let mut p = problem_from_shapes(&qs, &ks, &vs)?;
    let dtype = common_dtype(q.as_ref().dtype(), k.as_ref().dtype(), v.as_ref().dtype())?;
    p = p.with_dtype(dtype).with_causal(a.causal).with_window(a.window.unwrap_or_default());
    if let Some(s) = a.scale {
        p = p.with_scale(s);
    }
    let (p, pair) = a.mods.apply(p, a.seed)?;
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair.as_pair())?;
    // dO is read and checked before the forward runs, so a wrong file costs nothing.
    let d_out = a.d_out.as_deref().map(|path| read_d_out(a, path, &qs)).transpose()?;
    // A backend without a backward is refused before the forward spends anything.
    let reasons = backend.backward_not_supported_reasons(&p);
    if d_out.is_some() && !reasons.is_empty() {
        return Err(AttnError::Unsupported { backend: a.backend.clone(), reasons });
    }
    if a.dsinks.is_some() && p.mods.sinks.is_none() {
        return Err(AttnError::invalid("--dsinks needs sinks (--sinks or --sinks-value)"));
    }
    let (out, grads) = with_threads(a.threads, || -> Result<_, AttnError> {
        let out = backend.forward(&args, a.lse.is_some() || d_out.is_some())?;
        let grads = match (&d_out, &out.lse) {
            (Some(d_out), Some(lse)) => Some(backend.backward(&args, &out.out, lse, d_out, a.dbias.is_some())?),
            (Some(_), None) => return Err(AttnError::invalid(format!("`{}` returned no LSE", a.backend))),
            (None, _) => None,
        };
        Ok((out, grads))
    })??;
    write_output(&a.out, "out", &qs, &out.out)?;
    if let (Some(path), Some(lse)) = (&a.lse, &out.lse) {
        write_output(path, "lse", &qs[..qs.len() - 1], lse)?;
    }
    if let Some(g) = grads {
        write_grads(a, &g, &qs, &ks, &p)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// dO from `path` (or a tensor name with `--safetensors`), which must have q's shape.
fn read_d_out(a: &RunArgs, path: &Path, qs: &[usize]) -> Result<Vec<f32>, AttnError> {
    let (t, shape) = read_input(a, path)?;
    if shape != qs {
        return Err(AttnError::shape(format!(
            "--d-out {}: shape {shape:?}; expected q's shape {qs:?}",
            path.display()
        )));
    }
    Ok(t.to_f32())
}

/// Writes every gradient asked for: dQ in q's shape, dK and dV in k's, dσ (H,), dB as declared.
fn write_grads(a: &RunArgs, g: &attnkit::Grads, qs: &[usize], ks: &[usize], p: &Problem) -> Result<(), AttnError> {
    let files = [(&a.dq, "dq", &g.dq), (&a.dk, "dk", &g.dk), (&a.dv, "dv", &g.dv)];
    for (path, name, data) in files {
        if let Some(path) = path {
            write_output(path, name, if name == "dq" { qs } else { ks }, data)?;
        }
    }
    if let (Some(path), Some(ds)) = (&a.dsinks, &g.dsinks) {
        write_output(path, "dsinks", &[ds.len()], ds)?;
    }
    if let (Some(path), Some(db), Some(shape)) = (&a.dbias, &g.dbias, p.mods.bias) {
        write_output(path, "dbias", &[shape.batch, shape.heads, p.seq_q, p.seq_k], db)?;
    }
    Ok(())
}
