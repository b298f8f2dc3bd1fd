//! The one score-modifier step every exact CPU kernel applies at the same point: after the raw
//! scores `q·k` of a tile are computed and before the band mask and the online softmax.
//!
//! Order (semantics in [`crate::modifiers`]): scale, softcap `c·tanh(s/c)`, ALiBi
//! `−slope·|diag − j|`, additive bias, boolean mask (−∞ where false). The tiled kernel
//! ([`super::flash::process_block`]) calls [`modify`] per row of a tile and the caller's
//! [`PairTerms`] for the data-sized terms; `sdpa` calls the same two on its materialized rows.
//! With modifiers the softmax runs on natural-unit scores (its exponent constant is `log2 e`),
//! without them the kernel keeps the plain path (scale folded into the exponent).
//!
//! tanh: the rational fit used by Eigen and MLAS (odd degree-13 over even degree-6 on
//! [−7.905, 7.905], clamped outside, where f32 tanh is ±1 to rounding); the test below bounds
//! its error against f64 on the portable path (no FMA) at 8 f32 ulp (6.7 measured).

use super::Simd;
use super::padded_dim;
use crate::tensor::TensorRef;

const TANH_CLAMP: f32 = 7.905_311;
const A: [f32; 7] =
    [-2.760_768_5e-16, 2.000_188e-13, -8.604_672e-11, 5.122_297e-8, 1.485_722_4e-5, 6.372_619_3e-4, 4.893_524_6e-3];
const B: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_7e-3, 4.893_525e-3];

/// tanh over one vector; NaN stays NaN ([`softcap`] with c = 1).
#[inline(always)]
pub fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    softcap(s, x, s.splat(1.0), s.splat(TANH_CLAMP))
}

/// Softcap `c·tanh(y/c)` over one vector of scaled scores `y`, computed as `y'·p(x²)/q(x²)` with
/// `y' = clamp(y, ±bound)` and `x = y'/c`: the same rational fit as [`tanh`] (`tanh x = x·p/q`),
/// but multiplied by the score rather than by `c·x`. `c·(y/c)` loses the score's low bits when
/// `y/c` is subnormal (a cap near f32::MAX; the fuzzer found c = 2e38), `y'·p/q` does not.
/// `bound = min(c·CLAMP, f32::MAX)` ([`softcap_bound`]); NaN stays NaN, ±∞ becomes ±c.
#[inline(always)]
pub fn softcap<S: Simd>(s: S, y: S::V, inv_cap: S::V, bound: S::V) -> S::V {
    // min(y, b) = −max(−b, −y); `max(a, b)` returns NaN when b is NaN, so NaN survives both.
    let neg_bound = s.sub(s.splat(0.0), bound);
    let lo = s.max(neg_bound, y);
    let y = s.sub(s.splat(0.0), s.max(neg_bound, s.sub(s.splat(0.0), lo)));
    let x = s.mul(y, inv_cap);
    let x2 = s.mul(x, x);
    let mut p = s.splat(A[0]);
    for &a in &A[1..] {
        p = s.fma(p, x2, s.splat(a));
    }
    let mut q = s.splat(B[0]);
    for &b in &B[1..] {
        q = s.fma(q, x2, s.splat(b));
    }
    // p·y / q with the ISA's reciprocal estimate and one Newton step (r ← r·(2 − q·r)): the
    // division was the costliest instruction of the softcap.
    let r = s.recip_estimate(q);
    let r = s.mul(r, s.fma(s.sub(s.splat(0.0), q), r, s.splat(2.0)));
    s.mul(s.mul(p, y), r)
}

/// The clamp of [`softcap`] in score units: `c·CLAMP`, kept finite.
pub fn softcap_bound(c: f32) -> f32 {
    (c * TANH_CLAMP).min(f32::MAX)
}

/// Per-row parameters of [`modify`]: ALiBi slope and the row's diagonal key minus the row
/// slice's first key (so key `j` of the slice is at distance `|diag − j|`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowMod {
    pub slope: f32,
    pub diag: f32,
}

/// The score-only modifiers of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreOnly {
    /// Multiplies the raw scores first (1 when they are already scaled).
    pub scale: f32,
    pub softcap: Option<f32>,
    pub alibi: bool,
}

const IOTA: [f32; 16] = [0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.];

/// Scale, softcap and ALiBi over `xs` (length a multiple of `W`), in place.
#[inline(always)]
pub fn modify<S: Simd>(s: S, m: &ScoreOnly, row: RowMod, xs: &mut [f32]) {
    let w = S::W;
    debug_assert!(xs.len().is_multiple_of(w) && w <= IOTA.len());
    let scale = s.splat(m.scale);
    let (bound, inv_cap) = m.softcap.map_or((1.0, 1.0), |c| (softcap_bound(c), 1.0 / c));
    let (bound, inv_cap) = (s.splat(bound), s.splat(inv_cap));
    let neg_slope = s.splat(-row.slope);
    // SAFETY: IOTA holds 16 ≥ W floats.
    let iota = unsafe { s.load(IOTA.as_ptr()) };
    for (c, ch) in xs.chunks_exact_mut(w).enumerate() {
        // SAFETY: chunks_exact_mut yields exactly W floats.
        unsafe {
            let mut x = s.load(ch.as_ptr());
            x = s.mul(x, scale);
            if m.softcap.is_some() {
                x = softcap(s, x, inv_cap, bound);
            }
            if m.alibi {
                // Distances are integers below 2^24, exact in f32.
                let t = s.sub(s.splat(row.diag - (c * w) as f32), iota);
                let dist = s.max(t, s.sub(s.splat(0.0), t));
                x = s.fma(neg_slope, dist, x);
            }
            s.store(ch.as_mut_ptr(), x);
        }
    }
}

/// [`modify`] over a slice of any length (the tail through a padded vector).
#[inline(always)]
pub fn modify_slice<S: Simd>(s: S, m: &ScoreOnly, row: RowMod, xs: &mut [f32]) {
    let w = S::W;
    let whole = xs.len() / w * w;
    let (body, tail) = xs.split_at_mut(whole);
    modify(s, m, row, body);
    if !tail.is_empty() {
        let mut tmp = [0.0f32; 16];
        tmp[..tail.len()].copy_from_slice(tail);
        modify(s, m, RowMod { diag: row.diag - whole as f32, ..row }, &mut tmp[..w]);
        let n = tail.len();
        tail.copy_from_slice(&tmp[..n]);
    }
}

/// The data-sized terms of one row slice: its bias row and boolean-mask row (each already
/// offset to the slice's first key and at least as long as the real keys of the slice).
#[derive(Clone, Copy, Debug, Default)]
pub struct PairTerms<'a> {
    pub bias: Option<(TensorRef<'a>, usize)>,
    pub mask: Option<&'a [bool]>,
}

impl PairTerms<'_> {
    /// Adds the bias and drops (−∞) masked pairs over the first `n` entries of `xs`; entries
    /// past `n` (pad keys) are left for the band mask. An f32 bias is added `W` lanes at a time.
    #[inline(always)]
    pub fn apply<S: Simd>(&self, s: S, xs: &mut [f32], n: usize) {
        let n = n.min(xs.len());
        if let Some((bias, start)) = self.bias {
            match bias {
                TensorRef::F32(b) => {
                    let b = &b[start..start + n];
                    let whole = n / S::W * S::W;
                    for (x, y) in xs[..whole].chunks_exact_mut(S::W).zip(b.chunks_exact(S::W)) {
                        // SAFETY: both chunks hold exactly W floats.
                        unsafe { s.store(x.as_mut_ptr(), s.add(s.load(x.as_ptr()), s.load(y.as_ptr()))) };
                    }
                    xs[whole..n].iter_mut().zip(&b[whole..]).for_each(|(x, b)| *x += b);
                }
                TensorRef::F16(b) => xs[..n].iter_mut().zip(&b[start..start + n]).for_each(|(x, b)| *x += b.to_f32()),
                TensorRef::BF16(b) => xs[..n].iter_mut().zip(&b[start..start + n]).for_each(|(x, b)| *x += b.to_f32()),
            }
        }
        if let Some(m) = self.mask {
            for (x, &keep) in xs[..n].iter_mut().zip(m) {
                if !keep {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// How much of a strip × panel a boolean mask allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cover {
    /// No pair: skip the panel.
    Empty,
    /// Every pair: no per-pair mask needed.
    Full,
    /// Some pairs.
    Partial,
}

/// Score modifiers of one query block (see [`super::score_mod`]).
pub struct BlockMods<'a> {
    /// Scale, softcap and ALiBi; `None` when only a mask is set (raw scores then stay in the
    /// plain path's units, the scale folded into the exponent, and −∞ is −∞ in any unit).
    pub score: Option<ScoreOnly>,
    /// Per block row, ALiBi slope and diagonal in packed key coordinates.
    pub rows: &'a [RowMod],
    /// The bias and (when the flag is set) boolean-mask rows of block row `r` from packed key
    /// `key0`, with how many keys from there are real; the kernel applies them
    /// ([`PairTerms::apply`]).
    pub pair: Option<&'a PairFn<'a>>,
    /// Mask coverage of the strip starting at block row `r0` over packed keys `[key0, key1)`.
    pub panels: Option<&'a CoverFn<'a>>,
}

/// See [`BlockMods::pair`].
pub type PairFn<'a> = dyn Fn(usize, usize, bool) -> Option<(PairTerms<'a>, usize)> + Sync + 'a;
/// See [`BlockMods::panels`].
pub type CoverFn<'a> = dyn Fn(usize, usize, usize) -> Cover + Sync + 'a;

/// [`super::flash::finish_rows`] with an attention sink: the logit `sink` (natural units) joins each row's
/// denominator with no value. `m` is in base-2 units (`log2 e` times the natural scores), as
/// the online-softmax step keeps it. A row with no allowed key gets zeros and LSE = sink.
pub fn finish_rows_with_sink(
    acc: &[f32],
    m: &[f32],
    l: &[f32],
    d: usize,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    sink: Option<f32>,
) {
    let dp = padded_dim(d);
    let rows = out.len() / d;
    let mut lse = lse;
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        // (factor on acc, ln of the denominator in natural units)
        let (inv, ln_den) = match sink {
            _ if l[r] == 0.0 => (0.0, sink.unwrap_or(f32::NEG_INFINITY)),
            None => (1.0 / l[r], m[r] * std::f32::consts::LN_2 + l[r].ln()),
            Some(sg) => {
                // Rescale to M = max(m, sink) so neither term overflows.
                let s2 = sg * std::f32::consts::LOG2_E;
                let big = if m[r] > s2 { m[r] } else { s2 };
                let lr = l[r] * (m[r] - big).exp2() + (s2 - big).exp2();
                ((m[r] - big).exp2() / lr, big * std::f32::consts::LN_2 + lr.ln())
            }
        };
        if l[r] == 0.0 {
            o.fill(0.0);
        } else if sink.is_none() {
            for (x, a) in o.iter_mut().zip(&acc[r * dp..r * dp + d]) {
                *x = a / l[r];
            }
        } else {
            for (x, a) in o.iter_mut().zip(&acc[r * dp..r * dp + d]) {
                *x = a * inv;
            }
        }
        if let Some(lse) = lse.as_deref_mut()
            && r < rows
        {
            lse[r] = ln_den;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::scalar::Portable;

    #[test]
    fn tanh_is_within_a_few_ulp_of_f64() {
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            // SAFETY: the arrays hold 4 floats, the portable vector width.
            let got = unsafe {
                let mut out = [0.0f32; 4];
                Portable.store(out.as_mut_ptr(), tanh(Portable, Portable.splat(x)));
                out[0]
            };
            let want = (x as f64).tanh();
            let ulp = (want.abs().max(f32::MIN_POSITIVE as f64) as f32).to_bits();
            let ulp = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
            worst = worst.max((got as f64 - want).abs() / ulp);
        }
        assert!(worst <= 8.0, "tanh max error {worst} ulp");
        let mut edge = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0];
        modify_slice(
            Portable,
            &ScoreOnly { scale: 1.0, softcap: Some(1.0), alibi: false },
            RowMod::default(),
            &mut edge,
        );
        assert!(edge[0].is_nan());
        assert_eq!(&edge[1..], &[1.0, -1.0, 0.0]);
    }

    /// c·tanh(y/c) within 8 f32 ulp of f64 for caps from 1e-3 to f32::MAX, tiny scores
    /// included: the fuzzer found c = 2e38 losing the score's low bits through a subnormal y/c.
    #[test]
    fn softcap_keeps_relative_precision_for_any_cap() {
        let mut worst = 0.0f64;
        let mut checked = 0;
        for c in [1e-3f32, 1.0, 30.0, 1e10, 1e30, 2.033_719e38, f32::MAX] {
            for e in -40..=40 {
                for m in [1.0f32, 1.37, -1.91] {
                    let y = m * 2f32.powi(e);
                    let mut xs = [y, 0.0, 0.0, 0.0];
                    modify_slice(
                        Portable,
                        &ScoreOnly { scale: 1.0, softcap: Some(c), alibi: false },
                        RowMod::default(),
                        &mut xs,
                    );
                    let want = c as f64 * (y as f64 / c as f64).tanh();
                    let ulp = (want.abs().max(f32::MIN_POSITIVE as f64) as f32).to_bits();
                    let ulp = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
                    worst = worst.max((xs[0] as f64 - want).abs() / ulp);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 7 * 81 * 3);
        assert!(worst <= 8.0, "softcap max error {worst} ulp");
    }

    #[test]
    fn alibi_distance_counts_from_the_diagonal() {
        let mut xs = vec![0.0f32; 7];
        let m = ScoreOnly { scale: 1.0, softcap: None, alibi: true };
        modify_slice(Portable, &m, RowMod { slope: 0.5, diag: 3.0 }, &mut xs);
        assert_eq!(xs, vec![-1.5, -1.0, -0.5, 0.0, -0.5, -1.0, -1.5]);
    }
}
