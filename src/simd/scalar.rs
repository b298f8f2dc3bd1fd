//! Portable fallback: 4-lane `[f32; 4]` "vectors" in plain Rust (no intrinsics, no FMA: `a·b + c`
//! is two roundings). Used on CPUs without the x86/aarch64 paths and as the test baseline.

use super::Simd;
use super::bwd_tile::{self, TileGemm};
use super::flash::{self, BlockJob, KernelShape};

/// Kernel geometry of the portable path.
pub const SHAPE: KernelShape = KernelShape { mr: 4, kp: 8 };

#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

type V4 = [f32; 4];

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> V4 {
    [f(0), f(1), f(2), f(3)]
}

impl Simd for Portable {
    type V = V4;
    const W: usize = 4;

    #[inline(always)]
    fn splat(self, x: f32) -> V4 {
        [x; 4]
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> V4 {
        // SAFETY: the caller guarantees 4 readable floats at p.
        unsafe { (p as *const V4).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: V4) {
        // SAFETY: the caller guarantees 4 writable floats at p.
        unsafe { (p as *mut V4).write_unaligned(v) }
    }
    #[inline(always)]
    fn add(self, a: V4, b: V4) -> V4 {
        lanes(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sub(self, a: V4, b: V4) -> V4 {
        lanes(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn recip_estimate(self, a: V4) -> V4 {
        lanes(|i| 1.0 / a[i])
    }
    #[inline(always)]
    fn mul(self, a: V4, b: V4) -> V4 {
        lanes(|i| a[i] * b[i])
    }
    #[inline(always)]
    fn fma(self, a: V4, b: V4, c: V4) -> V4 {
        lanes(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn max(self, a: V4, b: V4) -> V4 {
        lanes(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn reduce_max(self, v: V4) -> f32 {
        let m = |a: f32, b: f32| if a > b { a } else { b };
        m(m(v[0], v[1]), m(v[2], v[3]))
    }
    #[inline(always)]
    fn reduce_sum(self, v: V4) -> f32 {
        (v[0] + v[1]) + (v[2] + v[3])
    }
    #[inline(always)]
    fn pow2_from_magic(self, t: V4) -> V4 {
        lanes(|i| f32::from_bits(t[i].to_bits().wrapping_add(127) << 23))
    }
}

/// The shared block kernel on the portable path.
pub fn run_block(job: &mut BlockJob<'_>) {
    flash::process_block::<Portable, 4, 2, 2, false>(Portable, job)
}

/// `exp2` in place on the portable path.
pub fn exp2_slice(xs: &mut [f32]) {
    flash::exp2_slice(Portable, xs)
}

/// The backward's tile GEMM on the portable path (4 rows × 4 vectors).
pub fn tile_gemm(g: &mut TileGemm<'_>) {
    bwd_tile::tile_gemm::<Portable, 4, 4>(Portable, g)
}

/// The backward's P and dS step on the portable path.
pub fn exp_ds(s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32) {
    bwd_tile::exp_ds(Portable, s, dp, lse, delta)
}
