//! `reference`: the exact oracle.
//!
//! Algorithm: for every (batch, head, query row) compute all scores of the row's key band in
//! f64, a max-subtracted softmax in f64, and Σ pⱼ·vⱼ in f64; round once to f32 at the end.
//! Complexity O(B·H·N_q·N_k·D) time, O(N_k) extra memory per row. Rows run in parallel (rayon)
//! only so the test suite stays quick; nothing here is tuned. Every other backend is checked
//! against this one, so it is deliberately the most obvious code in the crate.
//!
//! Modifiers ([`crate::modifiers`]) are applied per pair straight from their definitions by
//! [`modified_score`], in f64; `tests/modifiers.rs` checks this against independent
//! formulations (ALiBi as an explicit bias, varlen as a block-diagonal mask, sinks as an extra
//! key with a zero value).
//!
//! Also here: [`naive_same_precision`], the textbook computation *in the input precision*
//! that FlashAttention's tolerance rule compares against (see tests/cross_validation.rs).

use crate::attention::{Attention, AttnArgs, Device, Exactness};
use crate::error::Result;
use crate::grad::oracle::{gradients_f64, write_f32};
use crate::grad::{GradsMut, Saved};
use crate::problem::{DType, Problem};
use half::{bf16, f16};
use rayon::prelude::*;

#[derive(Debug, Default, Clone, Copy)]
pub struct Reference;

/// The score of pair `(b, h, i, j)` after the modifiers, from its scaled score `s`: softcap,
/// ALiBi, bias, then `None` when the boolean mask drops it (the band is the caller's check).
pub fn modified_score(args: &AttnArgs<'_>, (b, h, i, j): (usize, usize, usize, usize), s: f64) -> Option<f64> {
    let p = args.problem();
    let mut s = s;
    if let Some(c) = p.mods.softcap {
        let c = c as f64;
        s = c * (s / c).tanh();
    }
    if p.mods.alibi_slopes.is_some() {
        s -= p.alibi_slope(b, i, h) as f64 * (p.row_seq(b, i).diag() - j as i64).abs() as f64;
    }
    if let (Some(bias), Some(shape)) = (args.bias(), p.mods.bias) {
        s += bias.get_f32(shape.row_offset(p, b, h, i) + j) as f64;
    }
    match (args.mask(), p.mods.mask) {
        (Some(mask), Some(shape)) if !mask[shape.row_offset(p, b, h, i) + j] => None,
        _ => Some(s),
    }
}

/// Exact attention in f64. Returns (O, LSE) in the contract's layouts, as f64.
pub fn attention_f64(args: &AttnArgs<'_>) -> (Vec<f64>, Vec<f64>) {
    let p = args.problem();
    let d = p.head_dim;
    let (q, k, v) = (args.q(), args.k(), args.v());
    let mut out = vec![0.0f64; p.out_len()];
    let mut lse = vec![f64::NEG_INFINITY; p.lse_len()];
    out.par_chunks_mut(d).zip(lse.par_iter_mut()).enumerate().for_each(|(row, (o, l))| {
        let (bh, i) = (row / p.seq_q, row % p.seq_q);
        let (b, h) = (bh / p.heads, bh % p.heads);
        let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * p.seq_k * d;
        let q_base = row * d;
        let (lo, hi) = p.key_range_at(b, i);
        let scores: Vec<(usize, f64)> = (lo..hi)
            .filter_map(|j| {
                let dot: f64 =
                    (0..d).map(|t| q.get_f32(q_base + t) as f64 * k.get_f32(kv_base + j * d + t) as f64).sum();
                modified_score(args, (b, h, i, j), dot * p.scale as f64).map(|s| (j, s))
            })
            .collect();
        let sink = p.sink(h).map(f64::from);
        let m = scores.iter().map(|x| x.1).fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
        // No allowed key, or every allowed score −∞ (a −∞ bias): O = 0, LSE = sink or −∞.
        if m == f64::NEG_INFINITY && !scores.iter().any(|x| x.1.is_nan()) {
            return;
        }
        // A row whose max is +∞ or NaN propagates that per the NaN/Inf policy; no special case.
        let weights: Vec<f64> = scores.iter().map(|(_, s)| (s - m).exp()).collect();
        let sum: f64 = weights.iter().sum::<f64>() + sink.map_or(0.0, |sg| (sg - m).exp());
        for (w, (j, _)) in weights.iter().zip(&scores) {
            let w = w / sum;
            for (t, ot) in o.iter_mut().enumerate() {
                *ot += w * v.get_f32(kv_base + j * d + t) as f64;
            }
        }
        *l = m + sum.ln();
    });
    if let Some(sinks) = &p.mods.sinks {
        // Rows with no allowed key: LSE = sink.
        for (row, l) in lse.iter_mut().enumerate() {
            if *l == f64::NEG_INFINITY {
                *l = sinks[(row / p.seq_q) % p.heads] as f64;
            }
        }
    }
    (out, lse)
}

/// The naive textbook computation in the input precision, FlashAttention-test style
/// (`upcast=False`): S = scale·QKᵀ accumulated in f32 and rounded to the dtype, softmax in f32
/// with P rounded to the dtype, O = PV accumulated in f32. For f32 inputs this is plain f32
/// attention. Its error against [`attention_f64`] sets each backend's tolerance.
pub fn naive_same_precision(args: &AttnArgs<'_>) -> Vec<f32> {
    let p = args.problem();
    let d = p.head_dim;
    let round: fn(f32) -> f32 = match p.dtype {
        DType::F32 => |x| x,
        DType::F16 => |x| f16::from_f32(x).to_f32(),
        DType::BF16 => |x| bf16::from_f32(x).to_f32(),
    };
    let (q, k, v) = (args.q(), args.k(), args.v());
    let mut out = vec![0.0f32; p.out_len()];
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let (bh, i) = (row / p.seq_q, row % p.seq_q);
        let (b, h) = (bh / p.heads, bh % p.heads);
        let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * p.seq_k * d;
        let (lo, hi) = p.key_range_at(b, i);
        let s: Vec<(usize, f32)> = (lo..hi)
            .filter_map(|j| {
                let dot: f32 = (0..d).map(|t| q.get_f32(row * d + t) * k.get_f32(kv_base + j * d + t)).sum();
                let s = round(dot * p.scale);
                if !p.mods.changes_scores() {
                    return Some((j, s));
                }
                modified_score(args, (b, h, i, j), s as f64).map(|x| (j, round(x as f32)))
            })
            .collect();
        let sink = p.sink(h);
        let m = s.iter().map(|x| x.1).fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
        if m == f32::NEG_INFINITY && !s.iter().any(|x| x.1.is_nan()) {
            return;
        }
        let e: Vec<f32> = s.iter().map(|(_, x)| (x - m).exp()).collect();
        let sum: f32 = e.iter().sum::<f32>() + sink.map_or(0.0, |sg| (sg - m).exp());
        for (w, (j, _)) in e.iter().zip(&s) {
            let j = *j;
            let w = round(w / sum);
            for (t, ot) in o.iter_mut().enumerate() {
                *ot += w * v.get_f32(kv_base + j * d + t);
            }
        }
        for x in o.iter_mut() {
            *x = round(*x);
        }
    });
    out
}

impl Attention for Reference {
    fn name(&self) -> &str {
        "reference"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    /// f64 O and LSE for the whole problem, plus one row of f64 scores and weights per thread.
    fn working_bytes(&self, p: &Problem) -> Option<u64> {
        let whole = (p.out_len() as u64).checked_add(p.lse_len() as u64)?.checked_mul(8)?;
        let rows = (p.seq_k as u64).checked_mul(16)?.checked_mul(rayon::current_num_threads() as u64)?;
        whole.checked_add(rows)
    }
    /// Last resort for `auto`: always exact, never fast.
    fn auto_rank(&self, _problem: &Problem) -> Option<u32> {
        Some(40)
    }
    /// f64 gradients of the exact forward (`crate::grad::oracle`); O and LSE are recomputed
    /// in f64, not taken from `saved`.
    fn backward_not_supported_reasons(&self, _problem: &Problem) -> Vec<String> {
        Vec::new()
    }
    /// f64 copies of the gradients and of O.
    fn backward_working_bytes(&self, p: &Problem) -> Option<u64> {
        (p.out_len() as u64).checked_mul(2)?.checked_add((p.kv_len() as u64).checked_mul(2)?)?.checked_mul(8)
    }
    fn compute_backward(&self, args: &AttnArgs<'_>, saved: &Saved<'_>, grads: &mut GradsMut<'_>) -> Result<()> {
        let g64 = gradients_f64(args, saved.d_out, grads.dbias.is_some());
        write_f32(&g64, grads);
        Ok(())
    }
    fn compute(&self, args: &AttnArgs<'_>, out: &mut [f32], lse: Option<&mut [f32]>) -> Result<()> {
        let (o64, l64) = attention_f64(args);
        for (dst, src) in out.iter_mut().zip(&o64) {
            *dst = *src as f32;
        }
        if let Some(lse) = lse {
            for (dst, src) in lse.iter_mut().zip(&l64) {
                *dst = *src as f32;
            }
        }
        Ok(())
    }
}
