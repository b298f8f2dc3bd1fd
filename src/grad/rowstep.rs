//! The backward's one elementwise step, shared by every CPU backward that works on score tiles
//! ([`super::flash`], [`super::materialized`]): from one row's raw scaled scores and dP over a
//! run of keys, the probabilities P and the score gradient dS, with the modifiers applied in
//! the forward's order (softcap, ALiBi, bias, then the band and the boolean mask).
//!
//! Masked pairs are *selected* to P = 0 and dS = 0, never multiplied by zero, so a NaN in a
//! key or value row the query cannot see stays out of its gradients (the NaN/Inf policy).

use crate::attention::AttnArgs;
use crate::problem::Problem;
use crate::simd::Isa;

/// |tanh t| below which `c·tanh(x/c)` rounds to `x` in f32 (the cubic term is < 2^-24·x/3).
const SMALL_TANH: f32 = 1.0 / 4096.0;

/// One query row's fixed inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row {
    pub b: usize,
    pub h: usize,
    pub i: usize,
    /// Saved forward LSE of the row.
    pub lse: f32,
    /// `D_i = Σ dO_i·O_i`.
    pub delta: f32,
    /// Allowed keys `[lo, hi)` in absolute indices.
    pub range: (usize, usize),
}

/// Which modifiers the step applies (decided once per call).
pub(crate) struct StepMods<'a> {
    args: &'a AttnArgs<'a>,
    /// The SIMD path of the exponentials.
    isa: Isa,
    plain: bool,
}

impl<'a> StepMods<'a> {
    pub fn new(args: &'a AttnArgs<'a>, isa: Isa) -> Self {
        StepMods { args, isa, plain: !args.problem().mods.changes_scores() }
    }
    fn problem(&self) -> &'a Problem {
        self.args.problem()
    }
}

/// `s[c]` holds the raw scaled score of key `j0 + c` and `dp[c]` its dO·v; on return `s[c]`
/// holds P and `dp[c]` dS (times the softcap derivative unless `pre_chain`, which the bias
/// gradient wants: the bias is added after the cap). `chain` is scratch of the same length.
pub(crate) fn row_step(
    m: &StepMods<'_>,
    row: &Row,
    j0: usize,
    s: &mut [f32],
    dp: &mut [f32],
    chain: &mut [f32],
    pre_chain: bool,
) {
    let n = s.len();
    let lo = row.range.0.clamp(j0, j0 + n) - j0;
    let hi = row.range.1.clamp(j0, j0 + n) - j0;
    if lo >= hi || row.lse == f32::NEG_INFINITY {
        s.fill(0.0);
        dp.fill(0.0);
        return;
    }
    s[..lo].fill(0.0);
    s[hi..].fill(0.0);
    dp[..lo].fill(0.0);
    dp[hi..].fill(0.0);
    let (seg, dseg) = (&mut s[lo..hi], &mut dp[lo..hi]);
    let mut masked_any = false;
    let p = m.problem();
    if !m.plain {
        let (b, h, i) = (row.b, row.h, row.i);
        let cap = p.mods.softcap;
        let chain = &mut chain[lo..hi];
        if let Some(c) = cap {
            for (x, ch) in seg.iter_mut().zip(chain.iter_mut()) {
                let t = (*x / c).tanh();
                // Below 2^-12, c·tanh(x/c) is x to f32 rounding; c·t would lose x's low bits
                // where x/c is subnormal (a cap near f32::MAX).
                if t.abs() >= SMALL_TANH {
                    *x = c * t;
                }
                *ch = 1.0 - t * t;
            }
        }
        if p.mods.alibi_slopes.is_some() {
            let slope = p.alibi_slope(b, i, h);
            let diag = p.row_seq(b, i).diag();
            for (c, x) in seg.iter_mut().enumerate() {
                *x -= slope * (diag - (j0 + lo + c) as i64).abs() as f32;
            }
        }
        if let (Some(bias), Some(shape)) = (m.args.bias(), p.mods.bias) {
            let off = shape.row_offset(p, b, h, i) + j0 + lo;
            for (c, x) in seg.iter_mut().enumerate() {
                *x += bias.get_f32(off + c);
            }
        }
        if let (Some(mask), Some(shape)) = (m.args.mask(), p.mods.mask) {
            let off = shape.row_offset(p, b, h, i) + j0 + lo;
            for (c, x) in seg.iter_mut().enumerate() {
                if !mask[off + c] {
                    *x = f32::NEG_INFINITY;
                    masked_any = true;
                }
            }
        }
    }
    // P = 2^((s − LSE)·log₂e) and dS = P·(dP − D) in one SIMD sweep.
    m.isa.exp_ds(seg, dseg, row.lse, row.delta);
    if masked_any && let (Some(mask), Some(shape)) = (m.args.mask(), p.mods.mask) {
        let off = shape.row_offset(p, row.b, row.h, row.i) + j0 + lo;
        for (c, (x, g)) in seg.iter_mut().zip(dseg.iter_mut()).enumerate() {
            if !mask[off + c] {
                *x = 0.0;
                *g = 0.0;
            }
        }
    }
    if !m.plain && !pre_chain && p.mods.softcap.is_some() {
        for (g, ch) in dseg.iter_mut().zip(&chain[lo..hi]) {
            *g *= ch;
        }
    }
}

/// Whether pair (row, key `j`) is allowed: in the row's band and kept by the boolean mask.
pub(crate) fn allowed(m: &StepMods<'_>, row: &Row, j: usize) -> bool {
    if j < row.range.0 || j >= row.range.1 {
        return false;
    }
    let p = m.problem();
    match (m.args.mask(), p.mods.mask) {
        (Some(mask), Some(shape)) => mask[shape.row_offset(p, row.b, row.h, row.i) + j],
        _ => true,
    }
}
