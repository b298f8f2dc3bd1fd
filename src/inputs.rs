//! Seeded input families for `check` (and, through [`generate`], `bench`, `report` and the
//! examples): where approximate attention can and cannot work.
//!
//! - [`InputFamily::Normal`]: Q, K, V i.i.d. N(0, 1), exactly [`crate::seeded::normal_qkv`].
//!   Attention has no structure here: every row attends almost uniformly to a random handful of
//!   keys, so no low-rank or kernel method beats the mean of V by much.
//! - [`InputFamily::Structured`]: position-structured, smooth attention. Q and K are rotary-like
//!   sinusoids of the position plus noise, V a random walk along the sequence (details on
//!   the variant). The score depends (up to noise) on the offset i − j only, peaks at the diagonal
//!   and is smooth on the scale of N_k/16, so segment means of keys (Nyström landmarks, pooled
//!   Linformer) summarize it well; `sharpness` is the peak logit and sets how narrow the
//!   attention band is.
//! - [`InputFamily::LocalGlobal`]: most weight on a few keys around the diagonal plus
//!   [`SINKS`] "sink" keys at the start that every query attends to (as in trained decoders):
//!   the regime of local/sliding-window attention, where low-rank methods lose.
//!
//! Queries sit at position i + (N_k − N_q), bottom-right aligned like the causal mask, so the
//! diagonal of a cross problem is where the causal mask puts it. Every (batch, head) slice draws
//! its own noise and phases from a seed derived from (seed, family, role, slice), so the inputs
//! do not depend on the thread count. Values are generated in f32 and rounded to the problem's
//! dtype once. Logit sizes are set through the problem's `scale`, so they are as stated for any
//! scale and head dimension.

use crate::error::AttnError;
use crate::problem::Problem;
use crate::seeded;
use crate::tensor::Tensor;
use rand_distr::{Distribution, StandardNormal, Uniform};
use rayon::prelude::*;
use std::f64::consts::PI;
use std::fmt;

/// Default peak logit of the structured family.
pub const DEFAULT_SHARPNESS: f32 = 8.0;
/// The structured family's shortest wavelength is N_k / `STRUCTURED_BAND` positions.
pub const STRUCTURED_BAND: f64 = 16.0;
/// Noise on Q and K of the structured family, relative to the sinusoids' amplitude.
pub const STRUCTURED_NOISE: f64 = 0.25;
/// Sink keys of the local-global family (keys 0..SINKS).
pub const SINKS: usize = 4;
/// Peak logit of the local-global family's diagonal.
pub const LOCAL_LOGIT: f64 = 12.0;
/// Logit bonus of a sink key.
pub const SINK_LOGIT: f64 = 9.0;
/// The local-global family's wavelengths run from 4 to this many positions.
pub const LOCAL_MAX_WAVELENGTH: f64 = 64.0;

/// Which seeded inputs to attend over. `FromStr`: `normal`, `structured`, `structured:S`
/// (sharpness S > 0), `local-global`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputFamily {
    /// Q, K, V i.i.d. standard normal.
    Normal,
    /// q_i, k_j = rotary pairs a·(cos θ_c t, sin θ_c t) with wavelengths 2π/θ_c geometric from
    /// N_k down to N_k/[`STRUCTURED_BAND`], plus N(0, ([`STRUCTURED_NOISE`]·a)²) noise, with
    /// `a` such that scale·q_i·k_j ≈ sharpness · mean_c cos(θ_c (i − j)); V a random walk,
    /// v_j = Σ_{t ≤ j} ε_t / √N_k with ε_t ~ N(0, I).
    Structured { sharpness: f32 },
    /// Rotary pairs with wavelengths 4 … [`LOCAL_MAX_WAVELENGTH`] positions and a peak logit
    /// of [`LOCAL_LOGIT`] (far keys get ~N(0, (LOCAL_LOGIT/√(2P))²) logits over P pairs), plus
    /// one coordinate that adds [`SINK_LOGIT`] to the score of keys 0..[`SINKS`]; V ~ N(0, I).
    LocalGlobal,
}

impl InputFamily {
    /// The three families at their default settings, in the order tables list them.
    pub const ALL: [InputFamily; 3] =
        [InputFamily::Normal, InputFamily::Structured { sharpness: DEFAULT_SHARPNESS }, InputFamily::LocalGlobal];

    /// One line for tables and report captions.
    pub fn description(&self) -> String {
        match self {
            InputFamily::Normal => "Q, K, V i.i.d. N(0,1): no structure".into(),
            InputFamily::Structured { sharpness } => format!(
                "rotary-like sinusoids of the position (peak logit {sharpness}) plus noise, V a random walk: \
                 smooth attention"
            ),
            InputFamily::LocalGlobal => {
                format!("weight near the diagonal plus {SINKS} sink keys at the start, V ~ N(0,1)")
            }
        }
    }
}

impl fmt::Display for InputFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputFamily::Normal => f.write_str("normal"),
            InputFamily::Structured { sharpness } if *sharpness == DEFAULT_SHARPNESS => f.write_str("structured"),
            InputFamily::Structured { sharpness } => write!(f, "structured:{sharpness}"),
            InputFamily::LocalGlobal => f.write_str("local-global"),
        }
    }
}

impl std::str::FromStr for InputFamily {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self, AttnError> {
        let t = s.trim().to_ascii_lowercase();
        let bad = |why: &str| AttnError::invalid(format!("input family `{s}`: {why}"));
        match t.split_once(':') {
            None if t == "normal" => Ok(InputFamily::Normal),
            None if t == "structured" => Ok(InputFamily::Structured { sharpness: DEFAULT_SHARPNESS }),
            None if t == "local-global" => Ok(InputFamily::LocalGlobal),
            Some(("structured", v)) => match v.parse::<f32>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(InputFamily::Structured { sharpness: x }),
                _ => Err(bad("the sharpness after `structured:` must be a finite number > 0")),
            },
            _ => Err(bad("expected normal, structured, structured:S or local-global")),
        }
    }
}

/// Q, K, V of `family` for `p`, rounded to `p.dtype`, from `seed`.
pub fn generate(family: InputFamily, p: &Problem, seed: u64) -> (Tensor, Tensor, Tensor) {
    let (q, k, v) = match family {
        InputFamily::Normal => return seeded::normal_qkv(p, seed),
        InputFamily::Structured { sharpness } => structured(p, seed, sharpness as f64),
        InputFamily::LocalGlobal => local_global(p, seed),
    };
    (Tensor::from_f32(&q, p.dtype), Tensor::from_f32(&k, p.dtype), Tensor::from_f32(&v, p.dtype))
}

/// Role tags in derived seeds.
const FAMILY_TAG: u64 = 0x494e_5055;
const ROLE_Q: u64 = 0;
const ROLE_K: u64 = 1;
const ROLE_V: u64 = 2;

/// The rotary part of one (batch, head) slice: rows at positions `offset + r`, pairs (2c, 2c+1)
/// = amp·(cos, sin)(θ_c·t + φ_c) for the given θ, plus N(0, noise²) on every coordinate.
/// `phases` is shared by Q and K of a head so that q·k depends on the offset only.
struct Rotary<'a> {
    theta: &'a [f64],
    phases: &'a [f64],
    amp: f64,
    noise: f64,
}

impl Rotary<'_> {
    fn fill(&self, out: &mut [f32], d: usize, offset: i64, seed: u64) {
        let mut rng = seeded::rng(seed);
        for (r, row) in out.chunks_mut(d).enumerate() {
            let t = (offset + r as i64) as f64;
            for (c, (&th, &ph)) in self.theta.iter().zip(self.phases).enumerate() {
                let a = th * t + ph;
                row[2 * c] = (self.amp * a.cos()) as f32;
                row[2 * c + 1] = (self.amp * a.sin()) as f32;
            }
            for x in row.iter_mut() {
                let z: f64 = StandardNormal.sample(&mut rng);
                *x += (self.noise * z) as f32;
            }
        }
    }
}

/// Geometric wavelengths from `longest` down to `shortest` over `pairs` pairs, as angular
/// frequencies.
fn frequencies(pairs: usize, longest: f64, shortest: f64) -> Vec<f64> {
    (0..pairs)
        .map(|c| {
            let f = if pairs > 1 { c as f64 / (pairs - 1) as f64 } else { 0.0 };
            2.0 * PI / (longest * (shortest / longest).powf(f))
        })
        .collect()
}

/// Per-head phases, shared by Q and K of the head's KV group.
fn phases(seed: u64, kv_slice: usize, pairs: usize) -> Vec<f64> {
    let mut rng = seeded::rng(seeded::derive_seed(seed, &[FAMILY_TAG, 3, kv_slice as u64]));
    let u = Uniform::new(0.0, 2.0 * PI).expect("0 < 2π is a valid range");
    (0..pairs).map(|_| u.sample(&mut rng)).collect()
}

/// Fills Q (all query heads) and K (all KV heads) slice by slice, in parallel; `fill(slice,
/// kv_slice, position offset, seed)` writes one (batch, head) slice.
fn fill_qk(p: &Problem, seed: u64, fill: impl Fn(&mut [f32], usize, i64, u64) + Sync) -> (Vec<f32>, Vec<f32>) {
    let d = p.head_dim;
    let mut q = vec![0.0f32; p.q_len()];
    let mut k = vec![0.0f32; p.kv_len()];
    // Row i sits at key position i + offset: its diagonal (Problem::key_range), shift included.
    let q_offset = p.seq_k as i64 - p.seq_q as i64 + p.mods.diag_shift;
    q.par_chunks_mut(p.seq_q * d).enumerate().for_each(|(s, slice)| {
        let (b, h) = (s / p.heads, s % p.heads);
        let kv_slice = b * p.kv_heads + p.kv_head_of(h);
        fill(slice, kv_slice, q_offset, seeded::derive_seed(seed, &[FAMILY_TAG, ROLE_Q, s as u64]));
    });
    k.par_chunks_mut(p.seq_k * d).enumerate().for_each(|(s, slice)| {
        fill(slice, s, 0, seeded::derive_seed(seed, &[FAMILY_TAG, ROLE_K, s as u64]));
    });
    (q, k)
}

fn structured(p: &Problem, seed: u64, sharpness: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, nk) = (p.head_dim, p.seq_k);
    let pairs = d / 2;
    let theta = frequencies(pairs, nk as f64, nk as f64 / STRUCTURED_BAND);
    // scale · amp² · pairs = sharpness puts the diagonal's logit at `sharpness`.
    let amp = if pairs > 0 { (sharpness / (p.scale as f64 * pairs as f64)).sqrt() } else { 0.0 };
    let (q, k) = fill_qk(p, seed, |out, kv_slice, offset, s| {
        let ph = phases(seed, kv_slice, pairs);
        Rotary { theta: &theta, phases: &ph, amp, noise: STRUCTURED_NOISE * amp }.fill(out, d, offset, s);
    });
    let mut v = vec![0.0f32; p.kv_len()];
    let step = 1.0 / (nk as f64).sqrt();
    v.par_chunks_mut(nk * d).enumerate().for_each(|(s, slice)| {
        let mut rng = seeded::rng(seeded::derive_seed(seed, &[FAMILY_TAG, ROLE_V, s as u64]));
        let mut walk = vec![0.0f64; d];
        for row in slice.chunks_mut(d) {
            for (w, x) in walk.iter_mut().zip(row.iter_mut()) {
                let z: f64 = StandardNormal.sample(&mut rng);
                *w += step * z;
                *x = *w as f32;
            }
        }
    });
    (q, k, v)
}

fn local_global(p: &Problem, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = p.head_dim;
    // The last coordinate carries the sink bonus; the rotary pairs use the ones before it.
    let pairs = d.saturating_sub(1) / 2;
    let theta = frequencies(pairs, LOCAL_MAX_WAVELENGTH, 4.0);
    let s = p.scale as f64;
    let amp = if pairs > 0 { (LOCAL_LOGIT / (s * pairs as f64)).sqrt() } else { 0.0 };
    let sink = (SINK_LOGIT / s).sqrt() as f32;
    let (mut q, mut k) = fill_qk(p, seed, |out, kv_slice, offset, sd| {
        let ph = phases(seed, kv_slice, pairs);
        Rotary { theta: &theta, phases: &ph, amp, noise: 0.05 * amp }.fill(out, d, offset, sd);
    });
    // The sink coordinate replaces whatever noise was there: every query has `sink`, keys
    // 0..SINKS have `sink`, all other keys 0, so the bonus is exactly SINK_LOGIT.
    q.chunks_mut(d).for_each(|row| row[d - 1] = sink);
    k.chunks_mut(p.seq_k * d).for_each(|slice| {
        for (j, row) in slice.chunks_mut(d).enumerate() {
            row[d - 1] = if j < SINKS { sink } else { 0.0 };
        }
    });
    let v = seeded::normal_values(p.kv_len(), seeded::derive_seed(seed, &[FAMILY_TAG, ROLE_V]));
    (q, k, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_parse_print_and_refuse_bad_names() {
        for f in InputFamily::ALL.into_iter().chain([InputFamily::Structured { sharpness: 2.5 }]) {
            assert_eq!(f.to_string().parse::<InputFamily>().unwrap(), f);
        }
        for bad in ["uniform", "structured:0", "structured:-1", "structured:nan", "normal:3"] {
            let e = bad.parse::<InputFamily>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn every_family_is_seeded_sized_and_finite_for_odd_shapes() {
        let p = Problem::new(2, 4, 9, 7).with_kv_heads(2).with_seq_k(13);
        for f in InputFamily::ALL {
            let (q, k, v) = generate(f, &p, 3);
            let (q2, _, v2) = generate(f, &p, 3);
            let (q3, _, _) = generate(f, &p, 4);
            assert_eq!(
                (q.as_ref().len(), k.as_ref().len(), v.as_ref().len()),
                (p.q_len(), p.kv_len(), p.kv_len()),
                "{f}"
            );
            assert_eq!((q.to_f32(), v.to_f32()), (q2.to_f32(), v2.to_f32()), "{f}");
            assert_ne!(q.to_f32(), q3.to_f32(), "{f}");
            assert!([&q, &k, &v].iter().all(|t| t.to_f32().iter().all(|x| x.is_finite())), "{f}");
        }
        // D = 1: no rotary pair fits; still finite.
        let p1 = Problem::new(1, 1, 5, 1);
        for f in InputFamily::ALL {
            assert!(generate(f, &p1, 0).0.to_f32().iter().all(|x| x.is_finite()), "{f}");
        }
    }

    /// The families have the structure they claim: structured scores peak at the diagonal at
    /// about `sharpness`; local-global adds SINK_LOGIT to keys 0..SINKS only.
    #[test]
    fn scores_have_the_documented_shape() {
        let p = Problem::new(1, 1, 512, 64);
        let score = |q: &[f32], k: &[f32], i: usize, j: usize| {
            (0..64).map(|c| q[i * 64 + c] as f64 * k[j * 64 + c] as f64).sum::<f64>() * p.scale as f64
        };
        let (q, k, _) = generate(InputFamily::Structured { sharpness: 6.0 }, &p, 1);
        let (q, k) = (q.to_f32(), k.to_f32());
        let diag: f64 = (0..512).map(|i| score(&q, &k, i, i)).sum::<f64>() / 512.0;
        let far: f64 = (0..256).map(|i| score(&q, &k, i, i + 256)).sum::<f64>() / 256.0;
        assert!((diag - 6.0).abs() < 0.5 && far < 2.0, "diagonal {diag}, half a sequence away {far}");
        let (q, k, _) = generate(InputFamily::LocalGlobal, &p, 1);
        let (q, k) = (q.to_f32(), k.to_f32());
        let sink_bonus = q[63] as f64 * k[63] as f64 * p.scale as f64;
        assert!((sink_bonus - SINK_LOGIT).abs() < 1e-3, "{sink_bonus}");
        assert!(k[SINKS * 64 + 63] == 0.0 && k[(SINKS - 1) * 64 + 63] != 0.0);
        let diag: f64 = (SINKS..512).map(|i| score(&q, &k, i, i)).sum::<f64>() / (512 - SINKS) as f64;
        assert!((diag - LOCAL_LOGIT).abs() < 1.0, "local diagonal {diag}");
    }
}
