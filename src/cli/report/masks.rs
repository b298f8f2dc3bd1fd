//! The report's *Masks and varlen speed* section: what each score modifier costs
//! `flash-cpu`, as time ratios measured alternately in the same run, each against its target:
//! - N = 4096, D = 64, H = 8, non-causal: plain vs ALiBi, softcap 30, sinks, all three (≤ 1.15×),
//!   and an f32 additive bias (1, 1, N, N) (no target);
//! - packed varlen, causal, 8 sequences of 2048 (512 with `quick`), H = 4: vs the same 8 run
//!   separately (≤ 1.2×) and vs one causal run of the total length;
//! - a block-sparse boolean mask with 10% of 64×64 blocks allowed vs dense, N = 8192 (2048 with
//!   `quick`), H = 2, non-causal (≥ 5× faster).

use super::section::{Case, Scale, SectionRow, alternate, round_ratio, verdict};
use crate::cli::fmt_secs;
use attnkit::attention::PairOwned;
use attnkit::bench::plan::SEED;
use attnkit::bench::{LazyCeiling, LazyInputs, Policy};
use attnkit::inputs::InputFamily;
use attnkit::seeded::{block_sparse_mask, normal_values};
use attnkit::{AttnError, DType, Problem, Tensor, alibi_slopes};
use std::fmt::Write as _;

/// Modifier comparisons: N, D, H.
pub const MODS: (usize, usize, usize) = (4096, 64, 8);
/// Varlen: sequences and heads (length: [`varlen_len`]).
pub const VARLEN: (usize, usize) = (8, 4);
/// Sparse mask: block, density, heads.
pub const SPARSE: (usize, f64, usize) = (64, 0.1, 2);

pub fn mods_n(sc: &Scale) -> usize {
    sc.n(MODS.0, MODS.0)
}
pub fn varlen_len(sc: &Scale) -> usize {
    sc.n(2048, 512)
}
pub fn sparse_n(sc: &Scale) -> usize {
    sc.n(8192, 2048)
}

/// One comparison group: its cases (case 0 is what the others are divided by) and targets.
struct Group {
    name: &'static str,
    cases: Vec<Case>,
    /// Per case after the first: (target, at_most), or None.
    targets: Vec<Option<(f64, bool)>>,
}

/// The modifier group: plain, then each modifier alone, all three, and the bias.
fn modifier_group(sc: &Scale) -> Group {
    let (n, d, h) = (mods_n(sc), MODS.1, MODS.2);
    let base = Problem::new(1, h, n, d);
    let sinks = vec![1.0f32; h];
    let bias = PairOwned { bias: Some(Tensor::from_f32(&normal_values(n * n, SEED ^ 0xb1a5), DType::F32)), mask: None };
    let none = PairOwned::default;
    let cases = vec![
        Case::single("plain", base.clone(), none()),
        Case::single("ALiBi", base.clone().with_alibi(alibi_slopes(h)), none()),
        Case::single("softcap 30", base.clone().with_softcap(30.0), none()),
        Case::single("sinks", base.clone().with_sinks(sinks.clone()), none()),
        Case::single(
            "ALiBi + softcap + sinks",
            base.clone().with_alibi(alibi_slopes(h)).with_softcap(30.0).with_sinks(sinks),
            none(),
        ),
        Case::single("f32 bias (1,1,N,N)", base.with_bias(1, 1), bias),
    ];
    let t = Some((1.15, true));
    Group { name: "modifiers", cases, targets: vec![t, t, t, t, None] }
}

/// Packed varlen vs the same sequences run one by one vs one causal run of the total length.
fn varlen_group(sc: &Scale) -> Group {
    let ((s, h), len, d) = (VARLEN, varlen_len(sc), MODS.1);
    let total = s * len;
    let cu: Vec<usize> = (0..=s).map(|i| i * len).collect();
    let packed = Problem::new(1, h, total, d).with_causal(true).with_varlen(cu.clone(), cu);
    let one = Problem::new(1, h, len, d).with_causal(true);
    let separate = Case {
        label: format!("{s} × {len} run separately"),
        parts: (0..s).map(|_| (one.clone(), LazyInputs::new(&one, InputFamily::Normal, SEED))).collect(),
    };
    let cases = vec![
        separate,
        Case::single(format!("packed varlen {s} × {len}"), packed, PairOwned::default()),
        Case::single(
            format!("one causal run of N = {total}"),
            Problem::new(1, h, total, d).with_causal(true),
            PairOwned::default(),
        ),
    ];
    Group { name: "varlen", cases, targets: vec![Some((1.2, true)), None] }
}

/// Dense vs a block-sparse boolean mask (ratio: dense time ÷ sparse time, so ≥ 5 is the target).
fn sparse_group(sc: &Scale) -> Group {
    let (block, density, h) = SPARSE;
    let n = sparse_n(sc);
    let dense = Problem::new(1, h, n, MODS.1);
    let mask = PairOwned { bias: None, mask: Some(block_sparse_mask(n, n, block, density, SEED)) };
    let cases = vec![
        Case::single(
            format!("block-sparse mask, {:.0}% of {block}×{block} blocks", 100.0 * density),
            dense.clone().with_mask(1, 1),
            mask,
        ),
        Case::single(format!("dense N = {n}"), dense, PairOwned::default()),
    ];
    Group { name: "sparse", cases, targets: vec![Some((5.0, false))] }
}

/// What the section measured: rows, and one reading line per compared case.
pub struct Masks {
    pub rows: Vec<SectionRow>,
    pub lines: Vec<String>,
    /// Wall time of the whole section.
    pub elapsed_s: f64,
}

pub fn run(sc: &Scale, ceiling: &LazyCeiling) -> Result<Masks, AttnError> {
    let started = std::time::Instant::now();
    let policy = Policy { reps: 1, max_measure_s: 10.0, max_predicted_s: 120.0 };
    let rounds = if sc.quick { 2 } else { 3 };
    let (mut rows, mut lines) = (Vec::new(), Vec::new());
    for g in [modifier_group(sc), varlen_group(sc), sparse_group(sc)] {
        let timed = alternate(&g.cases, rounds, ceiling, &policy)?;
        let base_times = timed[0].1.clone();
        let base = g.cases[0].label.clone();
        for (i, (case, (rec, times))) in g.cases.iter().zip(timed).enumerate() {
            let mut row = SectionRow::new("masks", case.label.clone(), rec).alternated();
            if i > 0 {
                row.ratio = round_ratio(&times, &base_times);
                row.ratio_to = base.clone();
                lines.push(reading_line(g.name, &row, g.targets[i - 1]));
            }
            rows.push(row);
        }
    }
    Ok(Masks { rows, lines, elapsed_s: started.elapsed().as_secs_f64() })
}

/// `ALiBi: 1.07× the time of plain — measured 1.07× (target ≤ 1.15×): pass`. For the sparse
/// group the ratio is inverted (the target is a speed-up of the sparse case, row 0, over dense).
pub fn reading_line(group: &str, row: &SectionRow, target: Option<(f64, bool)>) -> String {
    let t = row.rec.median_s.map_or("not measured".into(), fmt_secs);
    match (group, target) {
        ("sparse", Some((x, at_most))) => {
            format!(
                "`{}` takes {} the time of `{}` ({t}), the mask's speed-up: {}",
                row.label,
                ratio_text(row.ratio),
                row.ratio_to,
                verdict(row.ratio, x, at_most)
            )
        }
        (_, Some((x, at_most))) => format!(
            "`{}` takes {} the time of `{}` ({t}): {}",
            row.label,
            ratio_text(row.ratio),
            row.ratio_to,
            verdict(row.ratio, x, at_most)
        ),
        (_, None) => {
            format!("`{}` takes {} the time of `{}` ({t}); no target", row.label, ratio_text(row.ratio), row.ratio_to)
        }
    }
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or("an unmeasured multiple of".into(), |r| format!("{r:.2}×"))
}

pub fn markdown(m: &Masks, sc: &Scale) -> String {
    let mut s = String::new();
    let (n, d, h) = (mods_n(sc), MODS.1, MODS.2);
    let ((seqs, vh), len) = (VARLEN, varlen_len(sc));
    let (block, density, sh) = SPARSE;
    let _ = writeln!(s, "## Masks and varlen speed (`flash-cpu`)\n");
    let _ = writeln!(
        s,
        "Each group's cases run in turn, round after round in the same run (one warm-up and one timed call per case \
         per round); a ratio is the median over rounds of the case's time ÷ the first case's time in the same round. \
         Modifiers: N = {n}, D = {d}, H = {h}, non-causal, sinks = 1.0 per head, standard ALiBi slopes. Varlen: {seqs} causal \
         sequences of {len}, H = {vh}. Sparse: N = {}, H = {sh}, {:.0}% of {block}×{block} blocks allowed (seeded), non-causal; \
         its ratio is dense ÷ sparse. GFLOP/s counts every pair the band allows (`Problem::flops`): \
         the boolean mask's dropped blocks are not subtracted, so the sparse row's rate is an effective one. \
         *rounds* = rounds measured. The section took {}.\n",
        sparse_n(sc),
        100.0 * density,
        fmt_secs(m.elapsed_s)
    );
    for l in &m.lines {
        let _ = writeln!(s, "- {l}");
    }
    let _ = writeln!(s, "\n| case | N_q | H | median over rounds | GFLOP/s | ratio | ratio to | status |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in &m.rows {
        let c = &r.rec;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            c.seq,
            c.heads,
            c.median_s.map_or("–".into(), fmt_secs),
            c.gflops.map_or("–".into(), |g| format!("{g:.1}")),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            if r.ratio_to.is_empty() { "–" } else { &r.ratio_to },
            r.status()
        );
    }
    let _ = writeln!(s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnkit::bench::BenchRecord;

    #[test]
    fn groups_have_one_target_per_compared_case_and_valid_problems() {
        let quick = Scale { quick: true, cap: None };
        for g in [modifier_group(&quick), varlen_group(&quick), sparse_group(&quick)] {
            assert_eq!(g.targets.len(), g.cases.len() - 1, "{}", g.name);
            for c in &g.cases {
                for (p, _) in &c.parts {
                    p.validate().unwrap_or_else(|e| panic!("{}: {e}", c.label));
                }
            }
        }
        let v = varlen_group(&Scale { quick: false, cap: None });
        assert_eq!(v.cases[0].parts.len(), VARLEN.0);
        assert_eq!(v.cases[1].parts[0].0.seq_q, VARLEN.0 * 2048);
        let pairs = |c: &Case| c.parts.iter().map(|(p, _)| p.allowed_pairs()).sum::<u64>();
        assert_eq!(pairs(&v.cases[0]), pairs(&v.cases[1]), "packed and separate do the same work");
    }

    #[test]
    fn reading_lines_state_ratio_target_and_outcome() {
        let p = Problem::new(1, 8, 4096, 64);
        let mut r = SectionRow::new("masks", "ALiBi", BenchRecord::new("flash-cpu", "", &p, None, 1));
        r.ratio = Some(1.3);
        r.ratio_to = "plain".into();
        let l = reading_line("modifiers", &r, Some((1.15, true)));
        assert_eq!(
            l,
            "`ALiBi` takes 1.30× the time of `plain` (not measured): measured 1.30× (target ≤ 1.15×): not met"
        );
        r.ratio = Some(6.0);
        let l = reading_line("sparse", &r, Some((5.0, false)));
        assert!(l.ends_with("the mask's speed-up: measured 6.00× (target ≥ 5×): pass"), "{l}");
        r.ratio = None;
        assert!(reading_line("modifiers", &r, None).ends_with("; no target"));
    }
}
