//! x86-64 AVX-512F path: 16 lanes, 32 zmm registers. Microkernels: QKᵀ 6 rows × 32 keys
//! (12 accumulators), P·V 6 rows × 64 columns (24 accumulators + 4 V vectors).

use super::Simd;
use super::flash::{self, BlockJob, KernelShape};
use std::arch::x86_64::*;

/// Kernel geometry of the AVX-512 path.
pub const SHAPE: KernelShape = KernelShape { mr: 6, kp: 32 };

/// Proof that the running CPU has AVX-512F: only [`Avx512::new`] makes one, after detection.
#[derive(Clone, Copy, Debug)]
pub struct Avx512 {
    _detected: (),
}

impl Avx512 {
    pub fn new() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx512f").then_some(Avx512 { _detected: () })
    }
}

// SAFETY (every `unsafe` block in this impl): an `Avx512` value exists only after
// `is_x86_feature_detected!("avx512f")` returned true, so the intrinsics are supported; pointer
// methods forward the caller's guarantee of 16 valid floats.
impl Simd for Avx512 {
    type V = __m512;
    const W: usize = 16;
    const REGS: usize = 32;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m512 {
        // bf16 bits are the high half of the f32: zero-extend to 32 bits, shift up.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
        }
    }
    #[inline(always)]
    unsafe fn load_i8(self, p: *const i8) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn recip_estimate(self, a: __m512) -> __m512 {
        unsafe { _mm512_rcp14_ps(a) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m512) -> f32 {
        let mut a = [0.0f32; 16];
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
        a.into_iter().fold(f32::NEG_INFINITY, |m, x| if m > x { m } else { x })
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m512) -> f32 {
        // In registers, in the order of the scalar tree ((h0+h4)+(h1+h5))+((h2+h6)+(h3+h7)) with
        // h[i] = v[i] + v[i+8] (each add is commutative, so the bits do not depend on operand
        // order): going through memory cost ~30 instructions per call, and the decode kernel
        // makes one call per (row, key).
        // SAFETY: register-only AVX-512F/SSE3 operations; the caller's target features cover them.
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let h = _mm256_add_ps(lo, hi);
            let x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let t = _mm_add_ps(x, _mm_movehdup_ps(x));
            _mm_cvtss_f32(_mm_add_ss(t, _mm_movehl_ps(t, t)))
        }
    }
    #[inline(always)]
    fn reduce_sum4(self, v: [__m512; 4]) -> [f32; 4] {
        // The pairing of `reduce_sum` (lane i + lane i+8, then + lane i+4, then adjacent
        // pairs, then the two pair sums) for four vectors at once: 8 shuffles and 6 adds instead
        // of 4 × 8 instructions.
        // SAFETY: register-only AVX-512F operations; the caller's target features cover them.
        unsafe {
            let half = |a: __m512, b: __m512| {
                let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b); // a[0..8] | b[0..8]
                let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b); // a[8..16] | b[8..16]
                _mm512_add_ps(lo, hi)
            };
            let (ab, cd) = (half(v[0], v[1]), half(v[2], v[3]));
            // 128-bit lanes: [a0-3, a4-7, b0-3, b4-7] and [c.., d..] → a, b, c, d quarters.
            let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd);
            let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd);
            let x = _mm512_add_ps(lo, hi);
            let t = _mm512_add_ps(x, _mm512_movehdup_ps(x));
            let u = _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t));
            let sums = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), u);
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(sums));
            out
        }
    }
    #[inline(always)]
    fn pow2_from_magic(self, t: __m512) -> __m512 {
        unsafe {
            let bits = _mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits))
        }
    }
}

#[target_feature(enable = "avx512f")]
fn block_avx512(t: Avx512, job: &mut BlockJob<'_>) {
    flash::process_block::<Avx512, 6, 2, 4, true>(t, job)
}

#[target_feature(enable = "avx512f")]
fn exp2_avx512(t: Avx512, xs: &mut [f32]) {
    flash::exp2_slice(t, xs)
}

/// The shared block kernel compiled for AVX-512F.
pub fn run_block(t: Avx512, job: &mut BlockJob<'_>) {
    // SAFETY: the token proves the CPU has AVX-512F.
    unsafe { block_avx512(t, job) }
}

/// `exp2` in place, AVX-512F.
pub fn exp2_slice(t: Avx512, xs: &mut [f32]) {
    // SAFETY: the token proves the CPU has AVX-512F.
    unsafe { exp2_avx512(t, xs) }
}
