//! Fuzzes problem descriptions end to end: arbitrary dims, scale, window, dtype and data go
//! through validation and, when valid and small, through every available CPU backend. Score
//! modifiers (ALiBi, softcap, sinks, varlen offsets, used key lengths, bias, boolean mask) are
//! drawn from the input too, including invalid ones. Any panic or abort is a bug; errors are fine.
//!
//! Where the problem is small (at most [`ORACLE_WORK`] multiply-adds) and its finite inputs are
//! moderate (|x| ≤ [`ORACLE_MAX_ABS`], so that no f32 score overflows where the f64 oracle's does
//! not), every exact backend's output is also held to the crate's tolerance rule against the f64
//! oracle ([`attnkit::validate::exact_tolerance`]), non-finite places included: a NaN or ∞ input
//! must stay in the rows the oracle puts it in.
#![no_main]

use arbitrary::Arbitrary;
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{Attention, AttnOutput, Exactness};
use attnkit::{AttnArgs, DType, Device, Problem, Tensor, Window, backend, backend_names};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Largest B·H·N_q·N_k·D checked against the oracle (the oracle and the naive same-precision run
/// both cost about this many f64 multiply-adds; ~1 ms at this size keeps executions fast).
const ORACLE_WORK: usize = 1 << 16;
/// Largest finite |value| of the inputs, slopes, sinks and scale when the oracle is checked.
const ORACLE_MAX_ABS: f32 = 1e3;

#[derive(Arbitrary, Debug)]
struct Input {
    batch: u8,
    heads: u8,
    kv_heads: u8,
    seq_q: u16,
    seq_k: u16,
    head_dim: u16,
    scale: f32,
    causal: bool,
    left: i16,
    right: i16,
    dtype: u8,
    data: Vec<f32>,
    alibi: Option<Vec<f32>>,
    softcap: Option<f32>,
    sinks: Option<Vec<f32>>,
    /// Sequence lengths (query, key) for varlen; offsets are their prefix sums.
    varlen: Option<Vec<(u8, u8)>>,
    seqused_k: Option<Vec<u16>>,
    /// (batch, heads) broadcast dims of the bias and mask, and the mask's bits.
    bias: Option<(u8, u8)>,
    mask: Option<(u8, u8, Vec<bool>)>,
}

fuzz_target!(|inp: Input| {
    let dtype = [DType::F32, DType::F16, DType::BF16][inp.dtype as usize % 3];
    let p = Problem {
        batch: inp.batch as usize,
        heads: inp.heads as usize,
        kv_heads: inp.kv_heads as usize,
        seq_q: inp.seq_q as usize,
        seq_k: inp.seq_k as usize,
        head_dim: inp.head_dim as usize,
        scale: inp.scale,
        causal: inp.causal,
        window: Window::new(inp.left as i64, inp.right as i64),
        dtype,
        mods: Default::default(),
    };
    let mut p = p;
    p.mods.alibi_slopes = inp.alibi.clone();
    p.mods.softcap = inp.softcap;
    p.mods.sinks = inp.sinks.clone();
    if let Some(lens) = &inp.varlen {
        let cu = |f: fn(&(u8, u8)) -> u8| {
            std::iter::once(0)
                .chain(lens.iter().scan(0usize, move |acc, l| {
                    *acc += f(l) as usize;
                    Some(*acc)
                }))
                .collect::<Vec<usize>>()
        };
        p = p.with_varlen(cu(|l| l.0), cu(|l| l.1));
    }
    p.mods.seqused_k = inp.seqused_k.as_ref().map(|u| u.iter().map(|&x| x as usize).collect());
    if let Some((b, h)) = inp.bias {
        p = p.with_bias(b as usize, h as usize);
    }
    if let Some((b, h, _)) = &inp.mask {
        p = p.with_mask(*b as usize, *h as usize);
    }
    if p.validate().is_err() {
        return;
    }
    let _ = p.flops();
    // Keep executions fast: only small problems run the kernels.
    if p.q_len() > 1 << 14 || p.kv_len() > 1 << 14 || p.seq_q * p.seq_k > 1 << 16 {
        return;
    }
    let fill = |len: usize, off: usize| -> Vec<f32> {
        (0..len).map(|i| inp.data.get((i + off) % inp.data.len().max(1)).copied().unwrap_or(0.5)).collect()
    };
    let (q, k, v) = (
        Tensor::from_f32(&fill(p.q_len(), 0), dtype),
        Tensor::from_f32(&fill(p.kv_len(), 7), dtype),
        Tensor::from_f32(&fill(p.kv_len(), 13), dtype),
    );
    let pair_len = |s: Option<attnkit::PairShape>| s.and_then(|s| s.len(&p)).unwrap_or(0);
    if pair_len(p.mods.bias) > 1 << 16 || pair_len(p.mods.mask) > 1 << 16 {
        return;
    }
    let bias = p.mods.bias.map(|s| Tensor::from_f32(&fill(pair_len(Some(s)), 3), dtype));
    let mask: Option<Vec<bool>> = inp.mask.as_ref().zip(p.mods.mask).map(|((_, _, bits), s)| {
        (0..pair_len(Some(s))).map(|i| bits.get(i % bits.len().max(1)).copied().unwrap_or(true)).collect()
    });
    let pair = attnkit::PairData { bias: bias.as_ref().map(|b| b.as_ref()), mask: mask.as_deref() };
    let Ok(args) = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair) else { return };
    let work = p.batch * p.heads * p.seq_q * p.seq_k * p.head_dim;
    let moderate = |x: &[f32]| x.iter().all(|v| !v.is_finite() || v.abs() <= ORACLE_MAX_ABS);
    let slopes_and_sinks = [p.mods.alibi_slopes.as_deref(), p.mods.sinks.as_deref()];
    let checked = work <= ORACLE_WORK
        && p.scale <= ORACLE_MAX_ABS
        && slopes_and_sinks.into_iter().flatten().flatten().all(|v| v.is_finite() && v.abs() <= ORACLE_MAX_ABS)
        && [Some(&q), Some(&k), Some(&v), bias.as_ref()]
            .into_iter()
            .flatten()
            .all(|t| moderate(&Tensor::as_ref(t).to_f32_cow()));
    let want = checked.then(|| oracle(&args));
    for b in cpu_backends() {
        let got = b.forward(&args, true);
        if let (Some(want), Ok(got)) = (&want, &got) {
            check_against_oracle(b.as_ref(), &args, got, want);
        }
    }
});

/// Every available CPU backend, built once and kept across executions as a user keeps them: a
/// backend's caches (performer's features, linformer's projections) then live across calls, and
/// an execution pays for them only when its head dimension or N_k differs from the last one's.
fn cpu_backends() -> &'static [Box<dyn Attention>] {
    static BACKENDS: OnceLock<Vec<Box<dyn Attention>>> = OnceLock::new();
    BACKENDS.get_or_init(|| {
        backend_names()
            .iter()
            .filter_map(|name| backend(name).ok())
            .filter(|b| b.device() == Device::Cpu && b.availability().is_ok())
            .collect()
    })
}

/// Panics (a fuzzer finding) when an exact backend's output breaks the tolerance rule.
fn check_against_oracle(b: &dyn Attention, args: &AttnArgs<'_>, got: &AttnOutput, want: &[f64]) {
    if b.exactness() != Exactness::Exact {
        return;
    }
    let tol = exact_tolerance(args, want, b.compute_precision(args));
    let err = compare(&got.out, want);
    assert!(err.within(tol.bound), "{}: {err:?} exceeds {tol:?} on {:?}", b.name(), args.problem());
}
