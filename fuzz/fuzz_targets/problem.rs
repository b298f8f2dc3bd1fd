//! Fuzzes problem descriptions end to end: arbitrary dims, scale, window, dtype and data go
//! through validation and, when valid and small, through every available CPU backend. Any panic
//! or abort is a bug; errors are fine.
#![no_main]

use arbitrary::Arbitrary;
use attnkit::{AttnArgs, DType, Device, Problem, Tensor, Window, backend, backend_names};
use libfuzzer_sys::fuzz_target;

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
    };
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
    let Ok(args) = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()) else { return };
    for name in backend_names() {
        let Ok(b) = backend(name) else { continue };
        if b.device() != Device::Cpu || b.availability().is_err() {
            continue;
        }
        let _ = b.forward(&args, true);
    }
});
