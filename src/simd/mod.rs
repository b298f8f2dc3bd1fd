//! Explicit SIMD for the tiled CPU kernels (`flash-cpu`, `local`).
//!
//! Layout: one `#[cfg(target_arch)]` module per instruction set ([`x86_avx512`], [`x86_avx2`],
//! [`aarch64_neon`]) plus the portable [`scalar`] module. Each implements the small vector
//! vocabulary [`Simd`] and wraps the one shared `#[inline(always)]` body in [`flash`] in a
//! `#[target_feature]` function, so the body is compiled once per ISA with that ISA's
//! instructions. [`Isa::selected`] picks a path once per process (cached in a `OnceLock`):
//! the best the CPU has, or the one forced by `ATTNKIT_SIMD=scalar|avx2|avx512|avx512bf16|neon`
//! (`avx512` on an AVX512_BF16 CPU keeps bf16 inputs on the exact f32 path).
//!
//! Safety model: an ISA's kernels can only be reached through a zero-sized token
//! (`Avx512`, `Avx2Fma`, `Neon`) whose constructor runs the CPU-feature check, so forcing an
//! ISA the CPU lacks yields a typed error ([`Isa::require`]) and never executes an illegal
//! instruction.

/// Padded row length of V and of the O accumulator: D rounded up to 16 floats (one AVX-512
/// vector), shared by the packing in [`flash`] and the score step in [`score_mod`].
pub fn padded_dim(d: usize) -> usize {
    d.div_ceil(16) * 16
}

pub mod bf16;
#[cfg(target_arch = "x86_64")]
pub mod bf16_block;
pub mod bf16_pairs;
pub mod bwd_tile;
pub mod decode;
pub mod flash;
pub mod kv_rows;
pub mod masked_pv;
pub mod operands;
pub mod scalar;
pub mod score_mod;

#[cfg(target_arch = "aarch64")]
pub mod aarch64_neon;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;

use crate::error::{AttnError, Result};
use std::fmt;
use std::sync::OnceLock;

/// The vector vocabulary the shared kernel body is written in. Every method is
/// `#[inline(always)]` in the implementations so it melts into the `#[target_feature]`
/// wrapper that instantiates the body.
///
/// Pointer methods are `unsafe`: the caller guarantees `W` readable (writable) `f32`s.
pub trait Simd: Copy + Send + Sync {
    /// One vector of `W` f32 lanes.
    type V: Copy;
    /// Lanes per vector.
    const W: usize;
    /// Vector registers the ISA has (16 for AVX2; kernels with fewer block less).
    const REGS: usize = 16;

    fn splat(self, x: f32) -> Self::V;
    /// # Safety
    /// `p..p+W` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p..p+W` must be writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// An estimate of `1/a` with at least 11 correct bits (the ISA's reciprocal instruction;
    /// exact on the portable path), for callers that refine it with a Newton step.
    fn recip_estimate(self, a: Self::V) -> Self::V;
    /// `a·b + c` (fused where the ISA has FMA).
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise max; when a lane of `b` is NaN the result is NaN (x86 `maxps` order), so NaN
    /// scores propagate into their own row instead of being silently dropped.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn reduce_max(self, v: Self::V) -> f32;
    fn reduce_sum(self, v: Self::V) -> f32;
    /// `[reduce_sum(v[0]), …, reduce_sum(v[3])]`, bit for bit; an ISA may override it with a
    /// transposing reduction that shares shuffles between the four sums.
    #[inline(always)]
    fn reduce_sum4(self, v: [Self::V; 4]) -> [f32; 4] {
        v.map(|x| self.reduce_sum(x))
    }
    /// Given `t = x + 1.5·2²³` for an integer-valued `x` in [-127, 127], returns 2ˣ built from
    /// the exponent bits (`x = -127` gives exactly 0). Integer lane arithmetic, hence per ISA.
    fn pow2_from_magic(self, t: Self::V) -> Self::V;
    /// `W` bf16 values (their bits) widened to f32 lanes (exact). The default goes through a
    /// stack array; an ISA overrides it with its widening instructions.
    ///
    /// # Safety
    /// `p..p+W` must be readable.
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> Self::V {
        let mut t = [0.0f32; MAX_LANES];
        for (i, x) in t.iter_mut().enumerate().take(Self::W) {
            // SAFETY: i < W, readable by the caller's guarantee.
            *x = f32::from_bits(u32::from(unsafe { *p.add(i) }) << 16);
        }
        // SAFETY: `t` holds MAX_LANES ≥ W floats.
        unsafe { self.load(t.as_ptr()) }
    }
    /// `W` int8 values converted to f32 lanes (exact). Default and overrides as
    /// [`Simd::load_bf16`].
    ///
    /// # Safety
    /// `p..p+W` must be readable.
    #[inline(always)]
    unsafe fn load_i8(self, p: *const i8) -> Self::V {
        let mut t = [0.0f32; MAX_LANES];
        for (i, x) in t.iter_mut().enumerate().take(Self::W) {
            // SAFETY: i < W, readable by the caller's guarantee.
            *x = f32::from(unsafe { *p.add(i) });
        }
        // SAFETY: `t` holds MAX_LANES ≥ W floats.
        unsafe { self.load(t.as_ptr()) }
    }
}

/// The widest vector of any [`Simd`] (AVX-512's 16 lanes).
pub const MAX_LANES: usize = 16;

/// Calls `module::$f(token, args)` for the ISA's module when the CPU has it (the token proves
/// it), else `scalar::$f(args)`. Used as a whole function body.
macro_rules! on_isa {
    ($isa:expr, $f:ident($($arg:expr),*)) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => {
                if let Some(t) = x86_avx512::Avx512::new() {
                    return x86_avx512::$f(t, $($arg),*);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                if let Some(t) = x86_avx2::Avx2Fma::new() {
                    return x86_avx2::$f(t, $($arg),*);
                }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                if let Some(t) = aarch64_neon::Neon::new() {
                    return aarch64_neon::$f(t, $($arg),*);
                }
            }
            _ => {}
        }
        scalar::$f($($arg),*)
    }};
}

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no intrinsics (4-lane arrays the compiler may vectorize).
    Scalar,
    /// x86-64 AVX2 + FMA (8 lanes).
    Avx2,
    /// x86-64 AVX-512F (16 lanes).
    Avx512,
    /// AVX-512F plus AVX512_BF16 (`vdpbf16ps`): the AVX-512 kernels, and bf16 inputs computed
    /// in bf16 with f32 accumulation ([`bf16`]). `ATTNKIT_SIMD=avx512` turns the bf16 kernels off.
    Avx512Bf16,
    /// aarch64 NEON (4 lanes).
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Neon];

    pub fn as_str(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Neon => "neon",
        }
    }

    /// Parses an `ATTNKIT_SIMD` value.
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the path (run-time detection; cheap, std caches it).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_avx2::Avx2Fma::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86_avx512::Avx512::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => bf16::Avx512Bf16::new().is_some(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64_neon::Neon::new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest path this CPU has.
    pub fn best() -> Isa {
        [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// `Ok(self)` when the CPU has it, otherwise a typed `Unavailable` error naming what it has.
    pub fn require(self, backend: &str) -> Result<Isa> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(AttnError::Unavailable {
                backend: backend.to_string(),
                reason: format!(
                    "SIMD path `{self}` is not supported by this CPU (available: {})",
                    Isa::available().iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
                ),
            })
        }
    }

    /// The process-wide choice, made once: `ATTNKIT_SIMD` if set, else [`Isa::best`]. An
    /// override that is unknown or that the CPU lacks is an error (reported through the
    /// backends' `availability`), never a silent fallback.
    pub fn selected() -> std::result::Result<Isa, String> {
        static CHOICE: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var("ATTNKIT_SIMD") {
                Err(_) => Ok(Isa::best()),
                Ok(s) if s.trim().is_empty() => Ok(Isa::best()),
                Ok(s) => match Isa::parse(&s) {
                    None => Err(format!("ATTNKIT_SIMD=`{s}` is not one of scalar, avx2, avx512, avx512bf16, neon")),
                    Some(isa) => isa.require("simd").map_err(|_| {
                        format!("ATTNKIT_SIMD={isa} but this CPU lacks it (available: {:?})", Isa::available())
                    }),
                },
            })
            .clone()
    }

    /// The kernel geometry of this path (rows per microkernel strip, keys per packed K panel).
    pub fn shape(self) -> flash::KernelShape {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => x86_avx512::SHAPE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_avx2::SHAPE,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64_neon::SHAPE,
            _ => scalar::SHAPE,
        }
    }

    /// Runs the shared block kernel on this path. An ISA the CPU lacks falls back to the
    /// scalar path here (callers resolve with [`Isa::require`] first, so that never happens
    /// silently); the packed layout is checked against the path's shape.
    pub(crate) fn run_block(self, job: &mut flash::BlockJob<'_>) {
        on_isa!(self, run_block(job))
    }

    /// Runs one of the backward's tile products ([`bwd_tile::tile_gemm`]). The AVX-512 paths
    /// run the AVX2 kernel (an AVX-512 CPU has AVX2 and FMA; no AVX-512 backward kernel is
    /// written yet), aarch64 and CPUs without AVX2 the portable one.
    pub(crate) fn tile_gemm(self, g: &mut bwd_tile::TileGemm<'_>) {
        #[cfg(target_arch = "x86_64")]
        if self != Isa::Scalar
            && let Some(t) = x86_avx2::Avx2Fma::new()
        {
            return x86_avx2::tile_gemm(t, g);
        }
        scalar::tile_gemm(g)
    }

    /// The backward's P and dS step ([`bwd_tile::exp_ds`]) on the path [`Isa::tile_gemm`] uses.
    pub(crate) fn exp_ds(self, s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32) {
        #[cfg(target_arch = "x86_64")]
        if self != Isa::Scalar
            && let Some(t) = x86_avx2::Avx2Fma::new()
        {
            return x86_avx2::exp_ds(t, s, dp, lse, delta);
        }
        scalar::exp_ds(s, dp, lse, delta)
    }

    /// `exp2` of every element of `xs` in place on this path (exposed for the accuracy test).
    pub fn exp2_slice(self, xs: &mut [f32]) {
        on_isa!(self, exp2_slice(xs))
    }
}

/// `xs[i] = e^(xs[i] − shift)` in place, on the process-wide SIMD path, through the same
/// [`flash::exp2`] the flash kernels use (max rel. error 7.9e-8 on FMA paths; see `flash.rs`).
/// For softmax-style callers: `shift` must be ≥ every element (arguments ≤ 0; larger ones are
/// not supported by the kernel's exp2). NaN stays NaN and −∞ gives 0. Used by `sdpa`,
/// `linformer` and `performer`, so every backend's exponentials are the same code.
pub fn exp_shifted(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = (*x - shift) * std::f32::consts::LOG2_E;
    }
    // A bad ATTNKIT_SIMD override is reported by the flash backends' `availability`; the
    // portable path is correct everywhere, so this helper never fails over it.
    Isa::selected().unwrap_or(Isa::Scalar).exp2_slice(xs);
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mixed magnitudes, so a different summation order would change the bits.
    fn lanes_for_sums(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 113) as f32 - 56.3) * 1.37e-3 * (1.0 + (i % 5) as f32 * 3.1e3)).collect()
    }

    /// `reduce_sum` keeps the documented tree order on the x86 paths (which once went through
    /// memory), and `reduce_sum4` equals four `reduce_sum`s bit for bit on every available ISA.
    #[test]
    fn horizontal_sums_keep_their_order_and_reduce_sum4_matches() {
        fn check<S: Simd>(s: S, tree: impl Fn(&[f32]) -> f32) -> usize {
            let vals = lanes_for_sums(S::W * 4 * 8);
            let mut n = 0;
            for block in vals.chunks_exact(S::W * 4) {
                // SAFETY: each chunk of `block` holds exactly W floats.
                let v: [S::V; 4] = std::array::from_fn(|k| unsafe { s.load(block[k * S::W..].as_ptr()) });
                let four = s.reduce_sum4(v);
                for k in 0..4 {
                    let lane = &block[k * S::W..(k + 1) * S::W];
                    assert_eq!(s.reduce_sum(v[k]).to_bits(), tree(lane).to_bits(), "{lane:?}");
                    assert_eq!(four[k].to_bits(), tree(lane).to_bits(), "{lane:?}");
                    n += 1;
                }
            }
            n
        }
        let mut checked = check(scalar::Portable, |a| (a[0] + a[1]) + (a[2] + a[3]));
        #[cfg(target_arch = "x86_64")]
        {
            let tree8 = |a: &[f32]| ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            if let Some(t) = x86_avx2::Avx2Fma::new() {
                checked += check(t, tree8);
            }
            if let Some(t) = x86_avx512::Avx512::new() {
                checked += check(t, |a| tree8(&(0..8).map(|i| a[i] + a[i + 8]).collect::<Vec<_>>()));
            }
        }
        // The portable path always runs (32 sums); each x86 path adds 32 more where present.
        assert_eq!(checked, 32 * (1 + [Isa::Avx2, Isa::Avx512].iter().filter(|i| i.is_available()).count()));
    }

    #[test]
    fn exp_shifted_matches_f64_exp_for_softmax_arguments() {
        // Arguments down to −87 (results stay normal f32). Error model: exp2's 7.9e-8 plus the
        // rounding of (x − shift)·log2e, a relative error of about |x|·u in the result.
        let args: Vec<f32> = (0..18_000).map(|i| -(i as f32) * 0.0048).collect();
        let mut xs: Vec<f32> = args.iter().map(|a| a + 0.5).collect();
        exp_shifted(&mut xs, 0.5);
        for (&a, &got) in args.iter().zip(&xs) {
            let want = ((a + 0.5) as f64 - 0.5).exp();
            let rel = ((got as f64) - want).abs() / want;
            let bound = 1e-7 + 2.0 * (a.abs() as f64 + 1.0) * f32::EPSILON as f64;
            assert!(rel <= bound, "exp({a}): relative error {rel:.3e} > {bound:.3e}");
        }
        let mut edge = [f32::NAN, f32::NEG_INFINITY, 0.0, -200.0];
        exp_shifted(&mut edge, 0.0);
        assert!(edge[0].is_nan());
        assert_eq!(&edge[1..], &[0.0, 1.0, 0.0]);
    }
}
