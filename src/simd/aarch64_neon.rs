//! aarch64 NEON path: 4 lanes, 32 q registers. Microkernels: QKᵀ 6 rows × 8 keys
//! (12 accumulators), P·V 6 rows × 16 columns (24 accumulators + 4 V vectors).
//! Compiled and type-checked for aarch64 only; not executed on the x86 development machine.

use super::Simd;
use super::flash::{self, BlockJob, KernelShape};
use std::arch::aarch64::*;

/// Kernel geometry of the NEON path.
pub const SHAPE: KernelShape = KernelShape { mr: 6, kp: 8 };

/// Proof that the running CPU has NEON: only [`Neon::new`] makes one, after detection.
#[derive(Clone, Copy, Debug)]
pub struct Neon {
    _detected: (),
}

impl Neon {
    pub fn new() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon { _detected: () })
    }
}

// SAFETY (every `unsafe` block in this impl): a `Neon` value exists only after NEON was
// detected, so the intrinsics are supported; pointer methods forward the caller's guarantee
// of 4 valid floats.
impl Simd for Neon {
    type V = float32x4_t;
    const W: usize = 4;
    const REGS: usize = 32;

    #[inline(always)]
    fn splat(self, x: f32) -> float32x4_t {
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> float32x4_t {
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: float32x4_t) {
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    fn recip_estimate(self, a: float32x4_t) -> float32x4_t {
        unsafe { vmulq_f32(vrecpeq_f32(a), vrecpsq_f32(a, vrecpeq_f32(a))) }
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vmaxq_f32(a, b) }
    }
    #[inline(always)]
    fn reduce_max(self, v: float32x4_t) -> f32 {
        unsafe { vmaxvq_f32(v) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: float32x4_t) -> f32 {
        unsafe { vaddvq_f32(v) }
    }
    #[inline(always)]
    fn pow2_from_magic(self, t: float32x4_t) -> float32x4_t {
        unsafe {
            let bits = vaddq_u32(vreinterpretq_u32_f32(t), vdupq_n_u32(127));
            vreinterpretq_f32_u32(vshlq_n_u32::<23>(bits))
        }
    }
}

#[target_feature(enable = "neon")]
fn block_neon(t: Neon, job: &mut BlockJob<'_>) {
    flash::process_block::<Neon, 6, 2, 4, true>(t, job)
}

#[target_feature(enable = "neon")]
fn exp2_neon(t: Neon, xs: &mut [f32]) {
    flash::exp2_slice(t, xs)
}

/// The shared block kernel compiled for NEON.
pub fn run_block(t: Neon, job: &mut BlockJob<'_>) {
    // SAFETY: the token proves the CPU has NEON.
    unsafe { block_neon(t, job) }
}

/// `exp2` in place, NEON.
pub fn exp2_slice(t: Neon, xs: &mut [f32]) {
    // SAFETY: the token proves the CPU has NEON.
    unsafe { exp2_neon(t, xs) }
}
