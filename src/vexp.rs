//! A branch-free f32 `exp` over slices, written so the compiler vectorizes it.
//!
//! `f32::exp` is a libm call per element (~4 ns on the CI machine), which was half of
//! Performer's time and a third of Linformer's. This is Cephes' `expf` reduction and polynomial
//! (|error| ≤ 2 ulp on the normal range, checked against f64 in the tests below) with the
//! branches turned into selects, so a plain loop over a slice becomes SIMD code for whatever ISA
//! the crate is compiled for; no `unsafe`, no per-ISA code.
//!
//! Edge cases match `f32::exp` where it matters here: NaN → NaN, −∞ and anything below
//! ln(2^−126) → 0 (subnormal results are flushed to zero, a relative change below 2^−126 of any
//! sum they join), +∞ and anything above ln(f32::MAX) → +∞.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so n·C1 is exact (Cody–Waite).
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;
/// Below this exp(x) is subnormal: flushed to 0.
const LO: f32 = -87.336_55;
/// Above this exp(x) overflows f32.
const HI: f32 = 88.722_83;

/// exp(x), vectorizable (see module docs).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(LO, HI); // NaN stays NaN.
    // Round-to-nearest via the 1.5·2^23 trick (vectorizes, unlike `round`): t's low mantissa
    // bits hold n as an integer, and t − 1.5·2^23 is n as a float.
    let t = xc * LOG2E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n in two halves so n = 128 (x near HI) does not overflow the exponent field.
    let n = t.to_bits() as i32 - 0x4B40_0000;
    let half = n >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
    let v = y * s1 * s2;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        v
    }
}

/// `xs[i] = exp(xs[i] − shift)` for every element.
#[inline]
pub fn exp_shifted(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = exp(*x - shift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_two_ulp_of_f64_exp_on_the_normal_range() {
        let mut worst = 0.0f64;
        let mut x = LO + 1e-3;
        while x < HI - 1e-3 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() as f64 * f32::EPSILON as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn edge_cases() {
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
        assert!((exp(88.7) as f64 / (88.7f32 as f64).exp() - 1.0).abs() < 1e-6);
        let mut v = [0.0f32, -1.0, 1.0];
        exp_shifted(&mut v, 1.0);
        assert_eq!(v, [exp(-1.0), exp(-2.0), exp(0.0)]);
    }
}
