//! Helpers shared by the approximate-backend and layer tests.
#![allow(dead_code)]

use attnkit::seeded;

/// Seeded N(0, std²) data.
pub fn randn(seed: u64, n: usize, std: f64) -> Vec<f32> {
    seeded::gaussian(seeded::derive_seed(seed, &[0x7e57]), n, std)
}

/// ‖a − b‖_F / ‖b‖_F.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// max |a − b| / max(1, max |b|): an error relative to the output's scale.
pub fn scaled_max_err(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1.0f64, |m, y| m.max(y.abs()));
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max) / scale
}

/// Compares LSEs, treating equal infinities as equal.
pub fn lse_max_err(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| if x as f64 == y { 0.0 } else { (x as f64 - y).abs() }).fold(0.0, f64::max)
}

/// Runs `f` in a rayon pool of `threads` threads.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool").install(f)
}
