//! Training through attnkit in candle: a one-layer causal self-attention model (QKV and output
//! projections around `attnkit::candle::attention`) learns to imitate a fixed "teacher" layer of
//! the same shape with other random weights, with candle-nn's AdamW. The loss falls because the
//! gradients flow through attnkit's backward (flash-cpu's FlashAttention-2 backward).
//!
//! `cargo run --release --features candle-bench --example candle_train [STEPS]`
//! (candle-bench adds candle-nn, whose optimizer this uses).

use attnkit::interop::{AttnOptions, Layout};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

const B: usize = 4;
const N: usize = 64;
const C: usize = 32;
const H: usize = 4;

/// x (B, N, C) → (B, N, C): causal multi-head self-attention with attnkit in (B, N, H, D).
fn layer(x: &Tensor, w: &[Tensor; 4], opts: &AttnOptions) -> Result<Tensor> {
    let split = |t: Tensor| t.reshape((B, N, H, C / H));
    let q = split(x.broadcast_matmul(&w[0])?)?;
    let k = split(x.broadcast_matmul(&w[1])?)?;
    let v = split(x.broadcast_matmul(&w[2])?)?;
    let o = attnkit::candle::attention(&q, &k, &v, opts)?.reshape((B, N, C))?;
    o.broadcast_matmul(&w[3])
}

fn weights(seed: u64, dev: &Device) -> Result<[Tensor; 4]> {
    let w = |s: u64| Tensor::from_vec(attnkit::seeded::normal_values(C * C, s), (C, C), dev)? / (C as f64).sqrt();
    Ok([w(seed)?, w(seed + 1)?, w(seed + 2)?, w(seed + 3)?])
}

fn main() -> Result<()> {
    let steps: usize = std::env::args().nth(1).map_or(200, |s| s.parse().expect("STEPS is a number"));
    let dev = Device::Cpu;
    let opts = AttnOptions::default().with_backend("flash-cpu").with_causal(true).with_layout(Layout::Bnhd);
    let teacher = weights(100, &dev)?;
    let student: Vec<Var> = weights(200, &dev)?.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let mut opt = AdamW::new(student.clone(), ParamsAdamW { lr: 3e-3, ..Default::default() })?;
    let mut first = None;
    let mut last = 0.0;
    for step in 0..steps {
        let x = Tensor::from_vec(attnkit::seeded::normal_values(B * N * C, 1000 + step as u64), (B, N, C), &dev)?;
        let target = layer(&x, &teacher, &opts)?.detach();
        let w = [0, 1, 2, 3].map(|i| student[i].as_tensor().clone());
        let loss = (layer(&x, &w, &opts)? - target)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        last = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        first.get_or_insert(last);
        if step % 20 == 0 || step + 1 == steps {
            println!("step {step:4}: loss {last:.5}");
        }
    }
    let first = first.unwrap_or(last);
    println!("loss {first:.5} → {last:.5} ({:.1}× lower) over {steps} AdamW steps", first / last);
    if last >= first {
        return Err(candle_core::Error::Msg("the loss did not fall".into()));
    }
    Ok(())
}
