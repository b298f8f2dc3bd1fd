//! `MultiHeadAttention`: the textbook layer (Vaswani et al. 2017, §3.2.2) over any backend.
//!
//! ```text
//! MultiHead(X_q, X_kv) = Concat(head_1, …, head_H) · W_O,
//! head_i = Attention(X_q·W_Q,i, X_kv·W_K,g(i), X_kv·W_V,g(i))
//! ```
//!
//! where `Attention` is whatever `Box<dyn Attention>` the layer owns and g(i) is the KV head of
//! query head i (g(i) = i for MHA; GQA/MQA share K/V heads, [`Problem::kv_head_of`]).
//! Self-attention is X_q = X_kv; cross-attention passes a different X_kv, of another length and
//! feature size (`d_kv`, PyTorch's kdim/vdim).
//!
//! Layouts: inputs and output are (B, N, features) row-major, the usual layer layout. Weights
//! multiply from the right and are row-major: W_Q is d_model×(H·D_h), W_K and W_V are
//! d_kv×(H_kv·D_h), W_O is (H·D_h)×d_model; head i uses columns [i·D_h, (i+1)·D_h) of W_Q
//! (rows of W_O). No biases, as in the paper's formulation. Seeded weights are Xavier-uniform,
//! U(±√(6/(fan_in + fan_out))) per matrix, PyTorch's `in_proj` initialization.
//!
//! Cost: the four projections are O(B·N·d·H·D_h) f32 GEMMs (spread over rayon); attention costs
//! whatever the backend costs. Per-head Q/K/V and the concatenated heads are materialized
//! (O(B·N·H·D_h) floats, checked against the memory budget first).

use crate::attention::{Attention, AttnArgs};
use crate::budget::check_budget;
use crate::error::{AttnError, Result};
use crate::linalg::{MatRef, Par, sgemm};
use crate::problem::{Problem, Window};
use crate::seeded;
use rand_distr::{Distribution, Uniform};
use rayon::prelude::*;

/// Shape and mask options of a [`MultiHeadAttention`] layer.
#[derive(Clone, Debug, PartialEq)]
pub struct MhaConfig {
    /// Feature size of the query input and of the output.
    pub d_model: usize,
    /// Feature size of the key/value input (= d_model unless cross-attending to another space).
    pub d_kv: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads H_kv (H % H_kv == 0).
    pub kv_heads: usize,
    /// Per-head size D_h.
    pub head_dim: usize,
    pub causal: bool,
    pub window: Window,
}

impl MhaConfig {
    /// MHA with D_h = d_model / heads (an error if it does not divide), d_kv = d_model.
    pub fn new(d_model: usize, heads: usize) -> Result<Self> {
        if heads == 0 || d_model == 0 || !d_model.is_multiple_of(heads) {
            return Err(AttnError::shape(format!(
                "d_model ({d_model}) must be a positive multiple of heads ({heads}); use with_head_dim for other sizes"
            )));
        }
        Ok(MhaConfig {
            d_model,
            d_kv: d_model,
            heads,
            kv_heads: heads,
            head_dim: d_model / heads,
            causal: false,
            window: Window::UNBOUNDED,
        })
    }
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Self {
        self.kv_heads = kv_heads;
        self
    }
    pub fn with_head_dim(mut self, head_dim: usize) -> Self {
        self.head_dim = head_dim;
        self
    }
    pub fn with_d_kv(mut self, d_kv: usize) -> Self {
        self.d_kv = d_kv;
        self
    }
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// The attention problem one forward call hands the backend.
    pub fn problem(&self, batch: usize, seq_q: usize, seq_k: usize) -> Problem {
        Problem::new(batch, self.heads, seq_q, self.head_dim)
            .with_kv_heads(self.kv_heads)
            .with_seq_k(seq_k)
            .with_causal(self.causal)
            .with_window(self.window)
    }

    fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.d_kv == 0 {
            return Err(AttnError::shape(format!("d_model ({}) and d_kv ({}) must be ≥ 1", self.d_model, self.d_kv)));
        }
        self.problem(1, 1, 1).validate()
    }

    /// (rows, cols) of W_Q, W_K, W_V, W_O.
    fn weight_shapes(&self) -> [(&'static str, usize, usize); 4] {
        let (hq, hkv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        [("w_q", self.d_model, hq), ("w_k", self.d_kv, hkv), ("w_v", self.d_kv, hkv), ("w_o", hq, self.d_model)]
    }
}

/// The layer's projection weights (row-major, see the module docs for shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct MhaWeights {
    pub w_q: Vec<f32>,
    pub w_k: Vec<f32>,
    pub w_v: Vec<f32>,
    pub w_o: Vec<f32>,
}

impl MhaWeights {
    fn all(&self) -> [&Vec<f32>; 4] {
        [&self.w_q, &self.w_k, &self.w_v, &self.w_o]
    }
}

/// Multi-head attention with its own projection weights over any backend.
pub struct MultiHeadAttention {
    cfg: MhaConfig,
    weights: MhaWeights,
    backend: Box<dyn Attention>,
}

impl MultiHeadAttention {
    /// Seeded Xavier-uniform weights.
    pub fn new(cfg: MhaConfig, backend: Box<dyn Attention>, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let [q, k, v, o] = cfg.weight_shapes().map(|(_, rows, cols)| (rows, cols));
        let init = |role: u64, (rows, cols): (usize, usize)| -> Result<Vec<f32>> {
            let bound = (6.0 / (rows + cols) as f64).sqrt() as f32;
            let dist = Uniform::new_inclusive(-bound, bound)
                .map_err(|e| AttnError::invalid(format!("weight init bound {bound}: {e}")))?;
            let mut rng = seeded::rng(seeded::derive_seed(seed, &[0x4d4841, role]));
            Ok((0..rows * cols).map(|_| dist.sample(&mut rng)).collect())
        };
        let weights = MhaWeights { w_q: init(0, q)?, w_k: init(1, k)?, w_v: init(2, v)?, w_o: init(3, o)? };
        Ok(MultiHeadAttention { cfg, weights, backend })
    }

    /// User weights; shapes must match `cfg` (`Shape` error otherwise) and be finite.
    pub fn with_weights(cfg: MhaConfig, weights: MhaWeights, backend: Box<dyn Attention>) -> Result<Self> {
        cfg.validate()?;
        for ((name, rows, cols), w) in cfg.weight_shapes().into_iter().zip(weights.all()) {
            if w.len() != rows * cols {
                return Err(AttnError::shape(format!(
                    "{name} has {} elements, expected {rows}×{cols} = {} for {cfg:?}",
                    w.len(),
                    rows * cols
                )));
            }
            if let Some(i) = w.iter().position(|x| !x.is_finite()) {
                return Err(AttnError::invalid(format!("{name} has a non-finite entry at {i}")));
            }
        }
        Ok(MultiHeadAttention { cfg, weights, backend })
    }

    pub fn config(&self) -> &MhaConfig {
        &self.cfg
    }
    pub fn weights(&self) -> &MhaWeights {
        &self.weights
    }
    pub fn backend(&self) -> &dyn Attention {
        self.backend.as_ref()
    }

    /// Self-attention: `x` is (B, N, d_model); returns (B, N, d_model). Requires d_kv = d_model.
    pub fn forward(&self, x: &[f32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        if self.cfg.d_kv != self.cfg.d_model {
            return Err(AttnError::shape(format!(
                "self-attention needs d_kv = d_model, the layer has d_kv = {} and d_model = {}; use forward_cross",
                self.cfg.d_kv, self.cfg.d_model
            )));
        }
        self.forward_cross(x, x, batch, seq, seq)
    }

    /// Cross-attention: `x_q` is (B, N_q, d_model), `x_kv` is (B, N_k, d_kv); returns (B, N_q, d_model).
    pub fn forward_cross(
        &self,
        x_q: &[f32],
        x_kv: &[f32],
        batch: usize,
        seq_q: usize,
        seq_k: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let p = c.problem(batch, seq_q, seq_k);
        p.validate()?;
        for (name, x, rows, width) in [("x_q", x_q, seq_q, c.d_model), ("x_kv", x_kv, seq_k, c.d_kv)] {
            let want = batch.checked_mul(rows).and_then(|n| n.checked_mul(width));
            if want != Some(x.len()) {
                return Err(AttnError::shape(format!(
                    "{name} has {} elements, expected B×N×d = {batch}×{rows}×{width}",
                    x.len()
                )));
            }
        }
        let floats = (p.q_len() as u64) * 3 + (p.kv_len() as u64) * 2 + (batch * seq_q * c.d_model) as u64;
        check_budget("layer", "the per-head Q/K/V, attention output and concatenated heads", floats.checked_mul(4))?;
        let q = project_heads(x_q, &self.weights.w_q, batch, seq_q, c.d_model, c.heads, c.head_dim)?;
        let k = project_heads(x_kv, &self.weights.w_k, batch, seq_k, c.d_kv, c.kv_heads, c.head_dim)?;
        let v = project_heads(x_kv, &self.weights.w_v, batch, seq_k, c.d_kv, c.kv_heads, c.head_dim)?;
        let attn = self.backend.forward(&AttnArgs::new(&p, &q, &k, &v)?, false)?.out;
        // Concat(head_1 … head_H): (B, H, N_q, D_h) → (B, N_q, H·D_h).
        let (h, dh) = (c.heads, c.head_dim);
        let mut concat = vec![0.0f32; attn.len()];
        concat.par_chunks_mut(seq_q * h * dh).zip(attn.par_chunks(h * seq_q * dh)).for_each(|(dst, src)| {
            for (hi, head) in src.chunks(seq_q * dh).enumerate() {
                for (i, row) in head.chunks(dh).enumerate() {
                    dst[i * h * dh + hi * dh..][..dh].copy_from_slice(row);
                }
            }
        });
        let mut y = vec![0.0f32; batch * seq_q * c.d_model];
        let (rows, hd) = (batch * seq_q, h * dh);
        sgemm(
            MatRef::row_major(&concat, rows, hd),
            MatRef::row_major(&self.weights.w_o, hd, c.d_model),
            &mut y,
            c.d_model,
            1.0,
            0.0,
            Par::Rayon,
        )?;
        Ok(y)
    }
}

/// X·W_i for every head i, laid out (B, heads, N, D_h): one GEMM per (batch, head) reading
/// W's column block in place and writing its contiguous N×D_h slice.
fn project_heads(
    x: &[f32],
    w: &[f32],
    batch: usize,
    seq: usize,
    d_in: usize,
    heads: usize,
    dh: usize,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; batch * heads * seq * dh];
    out.par_chunks_mut(seq * dh).enumerate().try_for_each(|(bh, o)| {
        let (b, hi) = (bh / heads, bh % heads);
        let xb = MatRef::row_major(&x[b * seq * d_in..(b + 1) * seq * d_in], seq, d_in);
        let wi = MatRef { data: &w[hi * dh..], rows: d_in, cols: dh, row_stride: heads * dh, col_stride: 1 };
        sgemm(xb, wi, o, dh, 1.0, 0.0, Par::Serial)
    })?;
    Ok(out)
}
