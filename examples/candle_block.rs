//! A small candle self-attention block (QKV projection → attention → output projection) with its
//! attention swapped for attnkit: `cargo run --release --features candle --example candle_block`.
//!
//! The block keeps candle's usual (B, N, H, D) head split, so attnkit is called with
//! `Layout::Bnhd` and returns (B, N, H, D); the only change from the matmul-softmax version is
//! the one `attend` line. The example runs both versions on the same weights and prints how far
//! apart they are and how long each took.

use attnkit::interop::{AttnOptions, Layout};
use candle_core::{D, Device, Result, Tensor};
use std::time::Instant;

struct Block {
    wqkv: Tensor, // (C, 3C)
    wo: Tensor,   // (C, C)
    heads: usize,
}

impl Block {
    fn new(c: usize, heads: usize, dev: &Device) -> Result<Self> {
        let w = |rows: usize, cols: usize, seed: u64| {
            let v = attnkit::seeded::normal_values(rows * cols, seed);
            Tensor::from_vec(v, (rows, cols), dev)? / (rows as f64).sqrt()
        };
        Ok(Block { wqkv: w(c, 3 * c, 1)?, wo: w(c, c, 2)?, heads })
    }

    /// x (B, N, C) → (B, N, C), causal self-attention; `attnkit` picks the attention.
    fn forward(&self, x: &Tensor, attnkit: bool) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let d = c / self.heads;
        let qkv = x.broadcast_matmul(&self.wqkv)?.reshape((b, n, 3, self.heads, d))?;
        // (B, N, H, D) views into the projection; no copies yet.
        let (q, k, v) =
            (qkv.narrow(2, 0, 1)?.squeeze(2)?, qkv.narrow(2, 1, 1)?.squeeze(2)?, qkv.narrow(2, 2, 1)?.squeeze(2)?);
        let y = if attnkit {
            let opts = AttnOptions::default().with_causal(true).with_layout(Layout::Bnhd);
            attnkit::candle::attention(&q, &k, &v, &opts)?
        } else {
            matmul_softmax_causal(&q, &k, &v, d)?
        };
        y.reshape((b, n, c))?.broadcast_matmul(&self.wo)
    }
}

/// The textbook version, (B, N, H, D) in and out.
fn matmul_softmax_causal(q: &Tensor, k: &Tensor, v: &Tensor, d: usize) -> Result<Tensor> {
    let (q, k, v) =
        (q.transpose(1, 2)?.contiguous()?, k.transpose(1, 2)?.contiguous()?, v.transpose(1, 2)?.contiguous()?);
    let n = q.dim(2)?;
    let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (n, n), q.device())?;
    let s = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.transpose(1, 2)?.contiguous()
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let (b, n, c, heads) = (2, 512, 256, 4);
    let block = Block::new(c, heads, &dev)?;
    let x = Tensor::from_vec(attnkit::seeded::normal_values(b * n * c, 3), (b, n, c), &dev)?;
    let mut outs = Vec::new();
    for attnkit in [false, true] {
        block.forward(&x, attnkit)?; // warm-up
        let t = Instant::now();
        let y = block.forward(&x, attnkit)?;
        let name = if attnkit { "attnkit::candle::attention" } else { "matmul-softmax-matmul" };
        println!("{name:<28} {:>8.2} ms  out {:?}", t.elapsed().as_secs_f64() * 1e3, y.dims());
        outs.push(y);
    }
    let diff = (&outs[0] - &outs[1])?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    println!("max |difference| between the two blocks: {diff:.2e}");
    Ok(())
}
