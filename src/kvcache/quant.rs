//! int8 KV rows (symmetric, one f32 scale per block of [`QBLOCK`] elements) and the widening
//! of bf16 rows, both to f32.
//!
//! Quantization of a block `x` (32 elements of one (token, KV head) row): `s = max|x| / 127`,
//! `q = round(x / s)` (ties away from zero), stored `q ∈ [−127, 127]` and `s`; dequantized
//! `x̂ = q·s`. Hence `|x − x̂| ≤ s/2 = max|x|/254` per element (plus f32 rounding of the
//! product), the bound the tests check. A block that is all zero stores `s = 0`; a block
//! holding a NaN or ±∞ stores `s = NaN`, so its 32 elements read back as NaN (int8 has no NaN:
//! a non-finite input poisons its block rather than vanishing).
//!
//! Why blocks of 32 and not one scale per (token, head): the error bound is relative to the
//! block's largest magnitude, and real K caches have outlier channels; a scale per 32 keeps an
//! outlier's coarsening inside its block (llama.cpp's q8_0 choice). The cost is 4 bytes per 32
//! elements (144 bytes per row of D = 128, against 132 with one scale and 256 for bf16).
//! The scale is f32, not f16, so the scale adds no rounding of its own.
//!
//! Against bf16: bf16 keeps 8 significant bits of every element, int8 8 bits of the block's
//! largest, so int8's error is the larger for every element but the block maximum. On N(0, 1)
//! rows the decode output error of the int8 cache measured 4.05× the bf16 cache's (1.70× on
//! the `structured` family; `tests/kvcache.rs` guards ≤ 5×): the 3× the issue asks for would
//! need smaller blocks or an asymmetric/non-uniform code.
//!
//! The widening/dequantization loops are plain slices loops instantiated under
//! `#[target_feature(enable = "avx512f,avx512bw")]` or `"avx2,fma"`, whichever the CPU has
//! (the compiler vectorizes them to `vpmovsxbd`/`vcvtdq2ps`/`vmulps` and `vpmovzxwd`/`vpslld`),
//! portable otherwise.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Elements per int8 scale.
pub const QBLOCK: usize = 32;

/// Quantizes one row (`x.len()` = D) into `q` (D) and `scale` (D / 32 rounded up).
pub fn quantize_row(x: &[f32], q: &mut [i8], scale: &mut [f32]) {
    for ((xb, qb), s) in x.chunks(QBLOCK).zip(q.chunks_mut(QBLOCK)).zip(scale.iter_mut()) {
        if !xb.iter().all(|v| v.is_finite()) {
            *s = f32::NAN;
            qb.fill(0);
            continue;
        }
        let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        if amax == 0.0 {
            *s = 0.0;
            qb.fill(0);
            continue;
        }
        *s = amax / 127.0;
        let inv = 127.0 / amax;
        for (y, &v) in qb.iter_mut().zip(xb) {
            *y = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

#[inline(always)]
fn dequantize_portable(q: &[i8], scale: &[f32], dst: &mut [f32]) {
    for ((qb, &s), db) in q.chunks(QBLOCK).zip(scale).zip(dst.chunks_mut(QBLOCK)) {
        for (y, &v) in db.iter_mut().zip(qb) {
            *y = v as f32 * s;
        }
    }
}

#[inline(always)]
fn widen_portable(x: &[bf16], dst: &mut [f32]) {
    for (y, v) in dst.iter_mut().zip(x) {
        *y = f32::from_bits((v.to_bits() as u32) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn dequantize_avx512(q: &[i8], scale: &[f32], dst: &mut [f32]) {
    dequantize_portable(q, scale, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_avx512(x: &[bf16], dst: &mut [f32]) {
    widen_portable(x, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dequantize_avx2(q: &[i8], scale: &[f32], dst: &mut [f32]) {
    dequantize_portable(q, scale, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn widen_avx2(x: &[bf16], dst: &mut [f32]) {
    widen_portable(x, dst)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
}

/// `dst = q·scale` per block (lengths: D, D / 32 rounded up, D).
pub fn dequantize_row(q: &[i8], scale: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked just above).
        return unsafe { dequantize_avx512(q, scale, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { dequantize_avx2(q, scale, dst) };
    }
    dequantize_portable(q, scale, dst)
}

/// `dst = x` widened (bf16 to f32 is exact).
pub fn widen_bf16(x: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked just above).
        return unsafe { widen_avx512(x, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { widen_avx2(x, dst) };
    }
    widen_portable(x, dst)
}

/// `dst = x` widened (f16 to f32 is exact; `half` uses F16C where the CPU has it).
pub fn widen_f16(x: &[f16], dst: &mut [f32]) {
    x.convert_to_f32_slice(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_within_half_a_step_and_nan_poisons_its_block() {
        let x: Vec<f32> = (0..70).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
        let (mut q, mut s, mut y) = (vec![0i8; 70], vec![0.0f32; 3], vec![0.0f32; 70]);
        quantize_row(&x, &mut q, &mut s);
        dequantize_row(&q, &s, &mut y);
        for (blk, (xb, yb)) in x.chunks(QBLOCK).zip(y.chunks(QBLOCK)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= amax / 254.0 * (1.0 + 1e-5), "block {blk}: {a} vs {b}");
            }
        }
        let mut x2 = x.clone();
        x2[40] = f32::NAN;
        quantize_row(&x2, &mut q, &mut s);
        dequantize_row(&q, &s, &mut y);
        assert!(y[32..64].iter().all(|v| v.is_nan()) && y[..32].iter().chain(&y[64..]).all(|v| v.is_finite()));
        quantize_row(&[0.0; 32], &mut q[..32], &mut s[..1]);
        assert_eq!(s[0], 0.0);
    }
}
