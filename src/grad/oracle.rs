//! The gradient oracle (`reference`'s backward) and the naive same-precision backward that the
//! gradient tolerance rule compares against.
//!
//! Algorithm: per (batch, KV head), every query head of the group and every row in turn:
//! recompute the row's modified scores and softmax in f64 from Q, K, V (the passed O and LSE
//! are not used, so the oracle is the gradient of the exact forward, not of a rounded one),
//! then dS = P∘(dP − D) and the three accumulations, all in f64. Complexity
//! O(B·H·N_q·N_k·D) time, O(N_k) extra per row plus f64 copies of the gradients.
//! `tests/gradients.rs` checks it against central finite differences of [`attention_f64`] in
//! f64 for every modifier, so it is checked independently of the formulas it implements.

use super::GradsMut;
use crate::attention::AttnArgs;
use crate::backends::reference::{attention_f64, modified_score};
use crate::problem::DType;
use half::{bf16, f16};

/// f64 gradients in the contract's layouts.
#[derive(Clone, Debug, Default)]
pub struct Grads64 {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub dsinks: Option<Vec<f64>>,
    pub dbias: Option<Vec<f64>>,
}

/// One row's allowed keys with their modified score and softcap derivative.
struct RowScores {
    /// (key, modified score, d modified / d raw scaled score)
    keys: Vec<(usize, f64, f64)>,
    lse: f64,
}

fn row_scores(args: &AttnArgs<'_>, b: usize, h: usize, i: usize) -> RowScores {
    let p = args.problem();
    let d = p.head_dim;
    let (q, k) = (args.q(), args.k());
    let q_base = ((b * p.heads + h) * p.seq_q + i) * d;
    let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * p.seq_k * d;
    let (lo, hi) = p.key_range_at(b, i);
    let keys: Vec<(usize, f64, f64)> = (lo..hi)
        .filter_map(|j| {
            let dot: f64 = (0..d).map(|t| q.get_f32(q_base + t) as f64 * k.get_f32(kv_base + j * d + t) as f64).sum();
            let raw = dot * p.scale as f64;
            let chain = p.mods.softcap.map_or(1.0, |c| 1.0 - (raw / c as f64).tanh().powi(2));
            modified_score(args, (b, h, i, j), raw).map(|s| (j, s, chain))
        })
        .collect();
    let sink = p.sink(h).map(f64::from);
    let m = keys.iter().map(|x| x.1).fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
    let lse = if m == f64::NEG_INFINITY && !keys.iter().any(|x| x.1.is_nan()) {
        m
    } else {
        m + (keys.iter().map(|x| (x.1 - m).exp()).sum::<f64>() + sink.map_or(0.0, |s| (s - m).exp())).ln()
    };
    RowScores { keys, lse }
}

/// f64 gradients of the exact forward for `d_out` (f32, (B,H,N_q,D)); `want_dbias` adds the bias
/// gradient when the problem declares a bias.
pub fn gradients_f64(args: &AttnArgs<'_>, d_out: &[f32], want_dbias: bool) -> Grads64 {
    let p = args.problem();
    let d = p.head_dim;
    let v = args.v();
    let (o64, _) = attention_f64(args);
    let mut g = Grads64 {
        dq: vec![0.0; p.out_len()],
        dk: vec![0.0; p.kv_len()],
        dv: vec![0.0; p.kv_len()],
        dsinks: p.mods.sinks.as_ref().map(|s| vec![0.0; s.len()]),
        dbias: p.mods.bias.filter(|_| want_dbias).map(|s| vec![0.0; s.len(p).unwrap_or(0)]),
    };
    let (q, k) = (args.q(), args.k());
    for b in 0..p.batch {
        for h in 0..p.heads {
            let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * p.seq_k * d;
            for i in 0..p.seq_q {
                let row = (b * p.heads + h) * p.seq_q + i;
                let rs = row_scores(args, b, h, i);
                if rs.lse == f64::NEG_INFINITY && !rs.keys.iter().any(|x| x.1.is_nan()) {
                    continue; // no allowed key, or every one at −∞: zero gradients
                }
                let dout = |t: usize| d_out[row * d + t] as f64;
                let delta: f64 = (0..d).map(|t| dout(t) * o64[row * d + t]).sum();
                if let (Some(ds), Some(sigma)) = (g.dsinks.as_mut(), p.sink(h)) {
                    ds[h] -= (sigma as f64 - rs.lse).exp() * delta;
                }
                for &(j, s, chain) in &rs.keys {
                    let pij = (s - rs.lse).exp();
                    let dp: f64 = (0..d).map(|t| dout(t) * v.get_f32(kv_base + j * d + t) as f64).sum();
                    let dsij = pij * (dp - delta);
                    if let (Some(db), Some(shape)) = (g.dbias.as_mut(), p.mods.bias) {
                        db[shape.row_offset(p, b, h, i) + j] += dsij;
                    }
                    let draw = dsij * chain * p.scale as f64;
                    for t in 0..d {
                        g.dv[kv_base + j * d + t] += pij * dout(t);
                        g.dq[row * d + t] += draw * k.get_f32(kv_base + j * d + t) as f64;
                        g.dk[kv_base + j * d + t] += draw * q.get_f32(row * d + t) as f64;
                    }
                }
            }
        }
    }
    g
}

/// Rounds the f64 oracle into caller buffers (the `reference` backend's backward).
pub fn write_f32(g64: &Grads64, g: &mut GradsMut<'_>) {
    let copy = |dst: &mut [f32], src: &[f64]| dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s as f32);
    copy(g.dq, &g64.dq);
    copy(g.dk, &g64.dk);
    copy(g.dv, &g64.dv);
    if let (Some(dst), Some(src)) = (g.dsinks.as_deref_mut(), &g64.dsinks) {
        copy(dst, src);
    }
    if let (Some(dst), Some(src)) = (g.dbias.as_deref_mut(), &g64.dbias) {
        copy(dst, src);
    }
}

/// The naive textbook backward in the input precision (FlashAttention's test reference with
/// `upcast=False`): scores, P, O and D in f32 with S, P and O rounded to the dtype, dO rounded
/// to the dtype, dS = P∘(dP − D) rounded to the dtype (the operand the half-precision GEMMs
/// would take), every accumulation in f32. For f32 inputs this is plain f32 backward. Its error
/// against [`gradients_f64`] sets each backend's gradient tolerance ([`crate::validate`]).
pub fn naive_backward_same_precision(args: &AttnArgs<'_>, d_out: &[f32]) -> super::Grads {
    let p = args.problem();
    let d = p.head_dim;
    let round: fn(f32) -> f32 = match p.dtype {
        DType::F32 => |x| x,
        DType::F16 => |x| f16::from_f32(x).to_f32(),
        DType::BF16 => |x| bf16::from_f32(x).to_f32(),
    };
    let (q, k, v) = (args.q().to_f32_cow(), args.k().to_f32_cow(), args.v().to_f32_cow());
    let mut g = super::Grads::zeros(p, false);
    for b in 0..p.batch {
        for h in 0..p.heads {
            let kv_base = (b * p.kv_heads + p.kv_head_of(h)) * p.seq_k * d;
            for i in 0..p.seq_q {
                let row = (b * p.heads + h) * p.seq_q + i;
                let qi = &q[row * d..(row + 1) * d];
                let (lo, hi) = p.key_range_at(b, i);
                // (key, rounded modified score, softcap chain factor)
                let s: Vec<(usize, f32, f32)> = (lo..hi)
                    .filter_map(|j| {
                        let kj = &k[kv_base + j * d..kv_base + (j + 1) * d];
                        let raw = round(qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * p.scale);
                        let chain = p.mods.softcap.map_or(1.0, |c| 1.0 - (raw / c).tanh().powi(2));
                        if !p.mods.changes_scores() && p.mods.mask.is_none() {
                            return Some((j, raw, chain));
                        }
                        modified_score(args, (b, h, i, j), raw as f64).map(|x| (j, round(x as f32), chain))
                    })
                    .collect();
                let sink = p.sink(h);
                let m = s.iter().map(|x| x.1).fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
                if m == f32::NEG_INFINITY && !s.iter().any(|x| x.1.is_nan()) {
                    continue;
                }
                let sum: f32 = s.iter().map(|x| (x.1 - m).exp()).sum::<f32>() + sink.map_or(0.0, |sg| (sg - m).exp());
                let pr: Vec<f32> = s.iter().map(|x| round((x.1 - m).exp() / sum)).collect();
                let dout: Vec<f32> = d_out[row * d..(row + 1) * d].iter().map(|&x| round(x)).collect();
                let mut o = vec![0.0f32; d];
                for (pij, (j, _, _)) in pr.iter().zip(&s) {
                    for t in 0..d {
                        o[t] += pij * v[kv_base + j * d + t];
                    }
                }
                let delta: f32 = o.iter().zip(&dout).map(|(a, b)| round(*a) * b).sum();
                if let (Some(ds), Some(sg)) = (g.dsinks.as_mut(), sink) {
                    ds[h] -= ((sg - m).exp() / sum) * delta;
                }
                for (pij, &(j, _, chain)) in pr.iter().zip(&s) {
                    let vj = &v[kv_base + j * d..kv_base + (j + 1) * d];
                    let dp: f32 = dout.iter().zip(vj).map(|(a, b)| a * b).sum();
                    let ds = round(pij * (dp - delta)) * chain * p.scale;
                    for t in 0..d {
                        g.dv[kv_base + j * d + t] += pij * dout[t];
                        g.dq[row * d + t] += ds * k[kv_base + j * d + t];
                        g.dk[kv_base + j * d + t] += ds * qi[t];
                    }
                }
            }
        }
    }
    g
}
