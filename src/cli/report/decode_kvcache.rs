//! The report's KV-cache decode rows, beside the decode targets: one decode step (N_q = 1,
//! H = 32 over 8 KV heads, D = 128, causal, B = 1) over an `attnkit::kvcache::KvCache` of
//! N_k = 32768 keys (capped by `--max-n`), for a contiguous f32 cache, paged f32 caches of page
//! size 16 and 256 (pages scattered through the pool, as on a long-running server), and
//! contiguous bf16 and int8 caches. The five run in turn, round after round in the same run;
//! each row's time is the median over rounds (each round's time the median of its reps), each
//! ratio the median of same-round ratios to the contiguous f32 cache. GB/s counts the bytes a
//! cache actually reads (K and V rows in its type, int8 scales included, plus Q read and O
//! written in f32) over the streaming-read ceiling of the same run. The targets are
//! stated from those rows: paged ≤ 1.05× the contiguous time, int8 ≥ 1.7× faster than bf16
//! (bf16's ratio ÷ int8's), every row ≥ 70% of the ceiling.
//!
//! Cost: the caches hold 2 × 256 MiB (f32 ×3) + 128 MiB (bf16) + 72 MiB (int8) at N_k = 32768;
//! filling them (append, quantization) and 5 rounds × 5 caches × 3 reps of a ≈ 50 ms step take
//! a few seconds on 2 cores.

use super::decode_common::Decode;
use super::section::{Scale, SectionRow, round_ratio, timed_record, verdict};
use crate::cli::fmt_secs;
use attnkit::bench::median;
use attnkit::ceiling::{DecodeRate, LazyBandwidth};
use attnkit::kvcache::{AppendOptions, KvCache, KvDType, KvLayout};
use attnkit::{AttnError, Problem, seeded::normal_values};
use std::fmt::Write as _;
use std::time::Instant;

/// The rows' section name.
pub const SECTION: &str = "decode-kvcache";
/// The caches, the first the reference of the ratios.
pub const VARIANTS: [(KvLayout, KvDType); 5] = [
    (KvLayout::Contiguous, KvDType::F32),
    (KvLayout::Paged { page_size: 16 }, KvDType::F32),
    (KvLayout::Paged { page_size: 256 }, KvDType::F32),
    (KvLayout::Contiguous, KvDType::BF16),
    (KvLayout::Contiguous, KvDType::Int8),
];
const ROUNDS: usize = 5;
const REPS: usize = 3;

/// The decode step over `nk` cached keys.
pub fn problem(nk: usize) -> Problem {
    super::decode_target::target_problem(nk, attnkit::DType::F32)
}

/// A row's label: `kv cache paged:16 f32`.
pub fn label(layout: KvLayout, dtype: KvDType) -> String {
    format!("kv cache {layout} {dtype}")
}

/// Bytes one step reads and writes: K and V rows in the cache's type, Q and O in f32.
pub fn bytes(p: &Problem, dtype: KvDType) -> u64 {
    (2 * p.batch * p.seq_k * p.kv_heads * dtype.row_bytes(p.head_dim) + 2 * p.q_len() * 4) as u64
}

/// A cache holding `p.seq_k` random keys (appended 4096 tokens at a time).
fn filled(layout: KvLayout, dtype: KvDType, p: &Problem) -> Result<KvCache, AttnError> {
    let (nk, hkv, d) = (p.seq_k, p.kv_heads, p.head_dim);
    let mut c = match layout {
        KvLayout::Contiguous => KvCache::contiguous(1, hkv, d, nk, dtype)?,
        KvLayout::Paged { page_size } => {
            let mp = nk.div_ceil(page_size);
            // Page i of the sequence is page (i·7919) mod mp of the pool: scattered.
            let table = (0..mp).map(|i| ((i * 7919) % mp) as i32).collect();
            KvCache::paged(1, hkv, d, page_size, mp, mp, table, dtype)?
        }
    };
    for s in (0..nk).step_by(4096) {
        let n = 4096.min(nk - s);
        let (k, v) = (normal_values(hkv * n * d, 2 * s as u64), normal_values(hkv * n * d, 2 * s as u64 + 1));
        c.append(&k, &v, n, &AppendOptions::default())?;
    }
    Ok(c)
}

/// Measures the five rows (see the module docs).
pub fn run(sc: &Scale, bw: &LazyBandwidth) -> Result<Vec<SectionRow>, AttnError> {
    let p = problem(sc.n(1 << 15, 1 << 15));
    let caches = VARIANTS.iter().map(|&(l, t)| filled(l, t, &p)).collect::<Result<Vec<_>, _>>()?;
    let q = normal_values(p.q_len(), 1);
    let mut out = vec![0.0f32; p.out_len()];
    let mut times = vec![Vec::new(); caches.len()];
    for c in &caches {
        c.attend(&p, &q, None, &mut out, None)?; // warm-up: page faults, thread pool
    }
    for _ in 0..if sc.quick { 2 } else { ROUNDS } {
        for (c, ts) in caches.iter().zip(&mut times) {
            let mut reps = Vec::with_capacity(REPS);
            for _ in 0..REPS {
                let t = Instant::now();
                c.attend(&p, &q, None, &mut out, None)?;
                reps.push(t.elapsed().as_secs_f64());
            }
            ts.push(median(&reps));
        }
    }
    let ceiling = bw.get()?.gb_per_s;
    Ok(VARIANTS.iter().zip(&times).map(|(&(l, t), ts)| row(&p, l, t, ts, &times[0], ceiling)).collect())
}

/// One row from its per-round times and the reference's.
fn row(p: &Problem, layout: KvLayout, dtype: KvDType, ts: &[f64], base: &[f64], ceiling: f64) -> SectionRow {
    let t = median(ts);
    let mut rec = timed_record(p, t);
    let b = bytes(p, dtype);
    let gb = b as f64 / t / 1e9;
    rec.decode = Some(DecodeRate { bytes: b, gb_per_s: gb, fraction_of_ceiling: gb / ceiling });
    (rec.bandwidth_gb_per_s, rec.reps, rec.threads) = (Some(ceiling), ts.len(), rayon::current_num_threads());
    let mut r = SectionRow::new(SECTION, label(layout, dtype), rec).alternated();
    r.ratio = round_ratio(ts, base);
    r.ratio_to = label(VARIANTS[0].0, VARIANTS[0].1);
    r
}

/// The subsection: the targets, then the rows (empty when no row was measured).
pub fn markdown(d: &Decode) -> String {
    let rows: Vec<&SectionRow> = d.rows.iter().filter(|r| r.section == SECTION).collect();
    let find = |l, t| rows.iter().find(|r| r.label == label(l, t)).copied();
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### KV-cache decode: paged ≤ 1.05× contiguous, int8 ≥ 1.7× bf16, ≥ 70% of the read ceiling (N_q = 1, N_k = {}, D = 128, H = 32 over 8 KV heads, causal)\n",
        first.rec.seq_kv
    );
    let _ = writeln!(
        s,
        "`KvCache::attend` on each cache in turn, {} rounds in the same run; each row's time is the median over rounds, each ratio the median of same-round ratios to the contiguous f32 cache; GB/s counts the bytes each cache reads (int8 scales included).\n",
        first.rec.reps
    );
    for ps in [16, 256] {
        let r = find(KvLayout::Paged { page_size: ps }, KvDType::F32).and_then(|r| r.ratio);
        let _ = writeln!(s, "- paged:{ps} time ÷ contiguous: {}", verdict(r, 1.05, true));
    }
    let ratio = |t| find(KvLayout::Contiguous, t).and_then(|r| r.ratio);
    let int8 = ratio(KvDType::BF16).zip(ratio(KvDType::Int8)).map(|(b, i)| b / i);
    let _ = writeln!(s, "- int8 speed-up over bf16 (bf16's ratio ÷ int8's): {}", verdict(int8, 1.7, false));
    let low: Vec<String> = rows
        .iter()
        .filter_map(|r| Some((r, r.rec.decode?.fraction_of_ceiling)))
        .filter(|(_, f)| *f < 0.7)
        .map(|(r, f)| format!("{} {:.0}%", r.label, 100.0 * f))
        .collect();
    let _ = writeln!(
        s,
        "- every cache ≥ 70% of the ceiling: {}\n",
        if low.is_empty() { "pass".to_string() } else { format!("not met ({})", low.join(", ")) }
    );
    let _ = writeln!(s, "| case | median over rounds | GB/s | % of ceiling | time ÷ contiguous f32 | status |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in &rows {
        let c = &r.rec;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.label,
            c.median_s.map_or("–".into(), fmt_secs),
            c.decode.map_or("–".into(), |x| format!("{:.2}", x.gb_per_s)),
            c.decode.map_or("–".into(), |x| format!("{:.0}%", 100.0 * x.fraction_of_ceiling)),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            r.status(),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows from given per-round times: the targets pass or fail on those figures, the table
    /// shows every cache, and no rows means no subsection.
    #[test]
    fn renders_targets_and_rows_from_the_measured_times() {
        let p = problem(1 << 15);
        let ceiling = 20.0;
        // Contiguous f32 at 80% of the ceiling; the others' times relative to it.
        let t0 = bytes(&p, KvDType::F32) as f64 / (0.8 * ceiling * 1e9);
        let rel = [1.0, 1.02, 1.10, 0.56, 0.30];
        let base = [t0; 3];
        let rows: Vec<SectionRow> =
            VARIANTS.iter().zip(rel).map(|(&(l, t), x)| row(&p, l, t, &[t0 * x; 3], &base, ceiling)).collect();
        let d = Decode { rows, bandwidth: None, dot: None, torch_note: None, elapsed_s: 0.0 };
        let md = markdown(&d);
        assert!(md.contains("N_k = 32768"), "{md}");
        assert!(md.contains("paged:16 time ÷ contiguous: measured 1.02× (target ≤ 1.05×): pass"), "{md}");
        assert!(md.contains("paged:256 time ÷ contiguous: measured 1.10× (target ≤ 1.05×): not met"), "{md}");
        assert!(md.contains("int8 speed-up over bf16 (bf16's ratio ÷ int8's): measured 1.87× (target ≥ 1.7×): pass"));
        // paged:256 reads 80% / 1.10 = 73%; bf16 reads half the bytes in 0.56 of the time: 71%;
        // int8 reads 144/512 of f32's bytes in 0.30 of the time: 75%. All pass.
        assert!(md.contains("every cache ≥ 70% of the ceiling: pass"), "{md}");
        assert!(md.contains("| kv cache contiguous f32 |") && md.contains("| 80% | 1.00 |"), "{md}");
        assert!(md.contains("| kv cache contiguous int8 |") && md.contains("| 0.30 |"), "{md}");
        let slow: Vec<SectionRow> =
            VARIANTS.iter().map(|&(l, t)| row(&p, l, t, &[2.0 * t0; 3], &base, ceiling)).collect();
        let md = markdown(&Decode { rows: slow, ..d });
        assert!(md.contains("not met (kv cache contiguous f32 40%"), "{md}");
        assert!(md.contains("measured 1.00× (target ≥ 1.7×): not met"), "{md}");
        let empty = Decode { rows: vec![], bandwidth: None, dot: None, torch_note: None, elapsed_s: 0.0 };
        assert_eq!(markdown(&empty), "");
    }
}
