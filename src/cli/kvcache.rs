//! `--kv-layout`, `--kv-dtype`, `--new-tokens` of `bench` and `check`: attention over a
//! [`KvCache`] instead of the backends.
//!
//! The cache of each batch entry holds `--seq-kv` seeded tokens (the input family's K/V) plus
//! the `--new-tokens` N_q new ones, appended; the N_q new queries attend to all of them, causal
//! and windows bottom-right aligned (chunked prefill; N_q = 1 is a decode step). `check`
//! compares with the f64 oracle on the cache's dense contents (exact tolerance) and reports the
//! error against the f32 inputs beside it (the cache's own rounding); `bench` times the
//! attention (median of `--reps`), GB/s of the cache bytes read and the fraction of the
//! streaming-read ceiling measured in the same run.

use super::ShapeArgs;
use super::modifiers::ModifierArgs;
use attnkit::bench::median;
use attnkit::ceiling::{BANDWIDTH_BUFFER_BYTES, bandwidth_ceiling};
use attnkit::inputs::InputFamily;
use attnkit::kvcache::{AppendOptions, KvCache, KvDType, KvLayout};
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{AttnArgs, AttnError, DType, Problem};
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct KvArgs {
    /// Attend over a KV cache of --seq-kv tokens in this layout: `contiguous` or `paged:PAGE`
    /// (PAGE ≥ 16). Any --kv-* flag or --new-tokens runs the cache instead of the backends.
    #[arg(long, value_parser = super::parse_named::<KvLayout>)]
    pub kv_layout: Option<KvLayout>,
    /// Element type of the cache: f32, bf16 or int8 (default f32).
    #[arg(long, value_parser = super::parse_named::<KvDType>)]
    pub kv_dtype: Option<KvDType>,
    /// New tokens N_q appended to the cache and attending to it (default 1: one decode step).
    #[arg(long)]
    pub new_tokens: Option<usize>,
}

impl KvArgs {
    pub fn active(&self) -> bool {
        self.kv_layout.is_some() || self.kv_dtype.is_some() || self.new_tokens.is_some()
    }
}

/// A filled cache, the problem of its new queries and the queries, plus the f32 inputs.
struct Prepared {
    cache: KvCache,
    p: Problem,
    q: Vec<f32>,
    full: (Problem, Vec<f32>, Vec<f32>),
}

fn prepare(
    kv: &KvArgs,
    shape: &ShapeArgs,
    mods: &ModifierArgs,
    family: InputFamily,
    seq_kv: usize,
) -> Result<Prepared, AttnError> {
    if shape.dtype != DType::F32 {
        return Err(AttnError::invalid(format!(
            "--dtype {} applies to the backends; with a KV cache queries are f32 and the cache's type is --kv-dtype",
            shape.dtype
        )));
    }
    let n = kv.new_tokens.unwrap_or(1);
    if n == 0 {
        return Err(AttnError::invalid("--new-tokens must be ≥ 1, got 0"));
    }
    let total = seq_kv.checked_add(n).ok_or_else(|| AttnError::invalid("--seq-kv + --new-tokens overflows"))?;
    let (full, _) = mods.apply(shape.problem(8, n, total)?, shape.seed)?;
    let (q, k, v) = attnkit::inputs::generate(family, &full, shape.seed);
    let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
    let (b, hkv, d) = (full.batch, full.kv_heads, full.head_dim);
    let dtype = kv.kv_dtype.unwrap_or(KvDType::F32);
    let mut cache = match kv.kv_layout.unwrap_or(KvLayout::Contiguous) {
        KvLayout::Contiguous => KvCache::contiguous(b, hkv, d, total, dtype)?,
        KvLayout::Paged { page_size } => {
            let mp = total.div_ceil(page_size);
            let pages = b * mp;
            // Scattered pages (a fixed stride through the pool), as a long-running server has.
            let table = (0..pages).map(|i| ((i * 7919) % pages) as i32).collect();
            KvCache::paged(b, hkv, d, page_size, pages, mp, table, dtype)?
        }
    };
    cache.append(&k, &v, total, &AppendOptions::default())?;
    let p = Problem { seq_k: total, ..full.clone() };
    Ok(Prepared { cache, p, q, full: (full, k, v) })
}

fn describe(c: &KvCache, p: &Problem) -> String {
    format!("kv cache {} {} of {} keys, {}", c.layout(), c.dtype(), c.seqlens()[0], p)
}

pub fn check(
    kv: &KvArgs,
    shape: &ShapeArgs,
    mods: &ModifierArgs,
    family: InputFamily,
    seq_kv: usize,
) -> Result<ExitCode, AttnError> {
    let pr = prepare(kv, shape, mods, family, seq_kv)?;
    let (c, p) = (&pr.cache, &pr.p);
    let mut out = vec![0.0f32; p.out_len()];
    c.attend(p, &pr.q, None, &mut out, None)?;
    let (mut kd, mut vd) = (Vec::new(), Vec::new());
    for b in 0..p.batch {
        let (k, v) = c.to_dense(b)?;
        kd.extend(k);
        vd.extend(v);
    }
    let dense = AttnArgs::new(p, pr.q.as_slice(), kd.as_slice(), vd.as_slice())?;
    let want = oracle(&dense);
    let tol = exact_tolerance(&dense, &want, DType::F32);
    let e = compare(&out, &want);
    let (fp, fk, fv) = &pr.full;
    let inputs_err = compare(&out, &oracle(&AttnArgs::new(fp, pr.q.as_slice(), fk.as_slice(), fv.as_slice())?));
    outln!("{}  seed={}  inputs={family}", describe(c, p), shape.seed)?;
    let pass = e.within(tol.bound);
    outln!(
        "vs oracle on the cache's contents: max_abs {:.3e} (tolerance {:.3e}) {}; vs f32 inputs: max_abs {:.3e}",
        e.max_abs,
        tol.bound,
        if pass { "ok" } else { "FAIL" },
        inputs_err.max_abs
    )?;
    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn bench(
    kv: &KvArgs,
    shape: &ShapeArgs,
    mods: &ModifierArgs,
    family: InputFamily,
    seq_kv: &[usize],
    reps: usize,
    json: bool,
) -> Result<ExitCode, AttnError> {
    let ceiling = bandwidth_ceiling(BANDWIDTH_BUFFER_BYTES, 3)?;
    for &nk in seq_kv {
        let pr = prepare(kv, shape, mods, family, nk)?;
        let (c, p) = (&pr.cache, &pr.p);
        let mut out = vec![0.0f32; p.out_len()];
        let mut times = Vec::with_capacity(reps);
        for rep in 0..=reps {
            let t = Instant::now();
            c.attend(p, &pr.q, None, &mut out, None)?;
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let t = median(&times);
        let bytes = (2 * p.batch * p.seq_k * p.kv_heads * c.dtype().row_bytes(p.head_dim) + 2 * p.q_len() * 4) as f64;
        let (gbs, frac) = (bytes / t / 1e9, bytes / t / 1e9 / ceiling.gb_per_s);
        if json {
            outln!(
                "{{\"kv_layout\":\"{}\",\"kv_dtype\":\"{}\",\"problem\":\"{p}\",\"threads\":{},\"ms\":{:.3},\"gb_s\":{gbs:.2},\"frac_bw\":{frac:.3},\"ceiling_gb_s\":{:.2}}}",
                c.layout(),
                c.dtype(),
                rayon::current_num_threads(),
                t * 1e3,
                ceiling.gb_per_s
            )?;
        } else {
            outln!(
                "{}  {:.3} ms  {gbs:.2} GB/s  {:.0}% of the {:.2} GB/s streaming-read ceiling",
                describe(c, p),
                t * 1e3,
                frac * 100.0,
                ceiling.gb_per_s
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
