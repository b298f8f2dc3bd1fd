//! Seeded random data: the one input generator every benchmark, report, CLI command and test
//! uses ([`normal_qkv`], [`normal_values`]), and the random matrices of the approximate backends
//! and the attention layer.
//!
//! Every random parameter in attnkit (Linformer's E/F, Performer's ω, the layer's weights) is a
//! pure function of a user seed and a few integers naming the parameter (N_k, head, role...):
//! [`derive_seed`] mixes them with SplitMix64 and [`rng`] seeds a Xoshiro256++ generator, whose
//! output rand documents as stable across platforms and releases. No parameter depends on the
//! thread count or on which call happened to generate it first.

use crate::problem::Problem;
use crate::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::{StdRng, Xoshiro256PlusPlus};
use rand_distr::{Distribution, StandardNormal};

/// `len` i.i.d. standard-normal values from `seed`.
pub fn normal_values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// Q, K, V with i.i.d. standard-normal entries rounded to the problem's dtype, drawn in that
/// order from one stream seeded with `seed` (the inputs of `bench`, `check`, `report`, the
/// benches and the tests).
pub fn normal_qkv(p: &Problem, seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |n: usize| -> Tensor {
        let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Tensor::from_f32(&v, p.dtype)
    };
    let q = draw(p.q_len());
    let k = draw(p.kv_len());
    let v = draw(p.kv_len());
    (q, k, v)
}

/// SplitMix64's finalizer: a bijection on u64 that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the parameter named by `parts` under the user seed `seed`.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed), |acc, &p| mix(acc ^ mix(p)))
}

/// The generator for one derived seed.
pub fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// `n` independent N(0, std²) samples, drawn in f64 and rounded once.
pub fn gaussian(seed: u64, n: usize, std: f64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut r);
            (z * std) as f32
        })
        .collect()
}

/// A block-sparse boolean mask (N_q × N_k, true = attend): each `block × block` tile is
/// allowed with probability `density`, independently and reproducibly for `seed` (the
/// synthetic masks of `bench`/`check --mask-density` and the mask benchmarks).
pub fn block_sparse_mask(nq: usize, nk: usize, block: usize, density: f64, seed: u64) -> Vec<bool> {
    let block = block.max(1);
    let nkb = nk.div_ceil(block);
    let allowed = |rb: usize, cb: usize| {
        let u = (derive_seed(seed, &[0x6d61_736b, (rb * nkb + cb) as u64]) >> 11) as f64 / (1u64 << 53) as f64;
        u < density
    };
    let mut m = vec![false; nq * nk];
    for (i, row) in m.chunks_mut(nk.max(1)).enumerate() {
        for (cb, chunk) in row.chunks_mut(block).enumerate() {
            chunk.fill(allowed(i / block, cb));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn inputs_are_seeded_and_sized() {
        let p = crate::Problem::new(1, 2, 8, 4).with_kv_heads(1).with_seq_k(5);
        let (q, k, v) = super::normal_qkv(&p, 7);
        let (q2, _, _) = super::normal_qkv(&p, 7);
        let (q3, _, _) = super::normal_qkv(&p, 8);
        assert_eq!((q.to_f32().len(), k.to_f32().len(), v.to_f32().len()), (64, 20, 20));
        assert_eq!(q.to_f32(), q2.to_f32());
        assert_ne!(q.to_f32(), q3.to_f32());
    }

    use super::*;

    #[test]
    fn seeds_differ_by_every_part_and_repeat() {
        let a = derive_seed(7, &[1, 2]);
        assert_eq!(a, derive_seed(7, &[1, 2]));
        assert_ne!(a, derive_seed(7, &[2, 1]));
        assert_ne!(a, derive_seed(8, &[1, 2]));
        assert_ne!(a, derive_seed(7, &[1, 2, 0]));
        assert_eq!(gaussian(a, 5, 1.0), gaussian(a, 5, 1.0));
    }

    #[test]
    fn gaussian_has_the_requested_spread() {
        let x = gaussian(3, 20_000, 0.5);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "std {}", var.sqrt());
    }
}
