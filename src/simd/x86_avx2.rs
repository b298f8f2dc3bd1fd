//! x86-64 AVX2 + FMA path: 8 lanes, 16 ymm registers. Microkernels: QKᵀ 6 rows × 16 keys
//! (12 accumulators), P·V 6 rows × 16 columns (12 accumulators + 2 V vectors + 1 broadcast).

use super::Simd;
use super::bwd_tile::{self, TileGemm};
use super::flash::{self, BlockJob, KernelShape};
use std::arch::x86_64::*;

/// Kernel geometry of the AVX2 path.
pub const SHAPE: KernelShape = KernelShape { mr: 6, kp: 16 };

/// Proof that the running CPU has AVX2 and FMA: only [`Avx2Fma::new`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma {
    _detected: (),
}

impl Avx2Fma {
    pub fn new() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
            .then_some(Avx2Fma { _detected: () })
    }
}

// SAFETY (every `unsafe` block in this impl): an `Avx2Fma` value exists only after AVX2 and FMA
// were detected, so the intrinsics are supported; pointer methods forward the caller's
// guarantee of 8 valid floats.
impl Simd for Avx2Fma {
    type V = __m256;
    const W: usize = 8;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m256 {
        // bf16 bits are the high half of the f32: zero-extend to 32 bits, shift up.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const i8) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn recip_estimate(self, a: __m256) -> __m256 {
        unsafe { _mm256_rcp_ps(a) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m256) -> f32 {
        let mut a = [0.0f32; 8];
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        a.into_iter().fold(f32::NEG_INFINITY, |m, x| if m > x { m } else { x })
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m256) -> f32 {
        // In registers, in the order ((a0+a4)+(a1+a5))+((a2+a6)+(a3+a7)) (see the AVX-512 path).
        // SAFETY: register-only AVX/SSE3 operations; the caller's target features cover them.
        unsafe {
            let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let t = _mm_add_ps(x, _mm_movehdup_ps(x));
            _mm_cvtss_f32(_mm_add_ss(t, _mm_movehl_ps(t, t)))
        }
    }
    #[inline(always)]
    fn pow2_from_magic(self, t: __m256) -> __m256 {
        unsafe {
            let bits = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits))
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn block_avx2(t: Avx2Fma, job: &mut BlockJob<'_>) {
    flash::process_block::<Avx2Fma, 6, 2, 2, false>(t, job)
}

#[target_feature(enable = "avx2,fma")]
fn exp2_avx2(t: Avx2Fma, xs: &mut [f32]) {
    flash::exp2_slice(t, xs)
}

/// The shared block kernel compiled for AVX2 + FMA.
pub fn run_block(t: Avx2Fma, job: &mut BlockJob<'_>) {
    // SAFETY: the token proves the CPU has AVX2 and FMA.
    unsafe { block_avx2(t, job) }
}

/// `exp2` in place, AVX2 + FMA.
pub fn exp2_slice(t: Avx2Fma, xs: &mut [f32]) {
    // SAFETY: the token proves the CPU has AVX2 and FMA.
    unsafe { exp2_avx2(t, xs) }
}

#[target_feature(enable = "avx2,fma")]
fn tile_gemm_avx2(t: Avx2Fma, g: &mut TileGemm<'_>) {
    bwd_tile::tile_gemm::<Avx2Fma, 6, 2>(t, g)
}

#[target_feature(enable = "avx2,fma")]
fn exp_ds_avx2(t: Avx2Fma, s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32) {
    bwd_tile::exp_ds(t, s, dp, lse, delta)
}

/// The backward's tile GEMM, AVX2 + FMA: 6 rows × 16 columns (12 accumulators), as the forward.
pub fn tile_gemm(t: Avx2Fma, g: &mut TileGemm<'_>) {
    // SAFETY: the token proves the CPU has AVX2 and FMA.
    unsafe { tile_gemm_avx2(t, g) }
}

/// The backward's P and dS step, AVX2 + FMA.
pub fn exp_ds(t: Avx2Fma, s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32) {
    // SAFETY: the token proves the CPU has AVX2 and FMA.
    unsafe { exp_ds_avx2(t, s, dp, lse, delta) }
}
