//! Score modifiers and masks (src/modifiers.rs): every exact CPU backend that supports them
//! (sdpa, flash-cpu, local within its band) against the f64 oracle on the shared shape table,
//! each modifier alone and combined, under the crate's tolerance rule, LSE included; the
//! oracle against independent formulations; and typed errors for bad inputs.

mod common;

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::backends::reference::attention_f64;
use attnkit::simd::Isa;
use attnkit::validate::{compare, exact_tolerance};
use attnkit::{Attention, AttnArgs, AttnError, DType, PairData, Problem, Tensor, Window, alibi_slopes, backend};
use common::{qkv, randn, shape_table};

/// One modifier setup: the problem plus its bias/mask data.
struct Setup {
    label: String,
    p: Problem,
    bias: Option<Tensor>,
    mask: Option<Vec<bool>>,
}

impl Setup {
    fn pair(&self) -> PairData<'_> {
        PairData { bias: self.bias.as_ref().map(|b| b.as_ref()), mask: self.mask.as_deref() }
    }
}

/// Seeded booleans with `P(true) = density`.
fn bools(len: usize, seed: u64, density: f32) -> Vec<bool> {
    attnkit::seeded::normal_values(len, seed).iter().map(|x| 0.5 * (1.0 + erf(*x / 2f32.sqrt())) < density).collect()
}

fn erf(x: f32) -> f32 {
    // Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7): only used to turn normals into uniforms.
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

/// The modifier variants applied to one table problem.
fn variants(base: &Problem, seed: u64) -> Vec<Setup> {
    let (b, h) = (base.batch, base.heads);
    let pairs = |bb: usize, hh: usize| bb * hh * base.seq_q * base.seq_k;
    let mk = |label: &str, p: Problem| Setup { label: label.into(), p, bias: None, mask: None };
    let mut v = vec![
        mk("alibi", base.clone().with_alibi(alibi_slopes(h))),
        mk(
            "alibi_per_batch",
            base.clone()
                .with_alibi(attnkit::seeded::normal_values(b * h, seed).iter().map(|x| x.abs() * 0.3).collect()),
        ),
        mk("softcap", base.clone().with_softcap(1.5)),
        mk("sinks", base.clone().with_sinks(attnkit::seeded::normal_values(h, seed + 1))),
        mk("seqused_k", base.clone().with_seqused_k((0..b).map(|i| (base.seq_k * (i + 2) / (b + 2)).max(1)).collect())),
    ];
    let mut bias = mk("bias_f32_1H", base.clone().with_bias(1, h));
    bias.bias = Some(randn(pairs(1, h), seed + 2, DType::F32));
    v.push(bias);
    let mut bias16 = mk("bias_bf16_B1", base.clone().with_bias(b, 1));
    bias16.bias = Some(randn(pairs(b, 1), seed + 3, DType::BF16));
    v.push(bias16);
    let mut mask = mk("mask_BH", base.clone().with_mask(b, h));
    mask.mask = Some(bools(pairs(b, h), seed + 4, 0.7));
    v.push(mask);
    let mut all = mk(
        "all",
        base.clone()
            .with_alibi(alibi_slopes(h))
            .with_softcap(3.0)
            .with_sinks(vec![0.5; h])
            .with_bias(1, 1)
            .with_mask(1, h),
    );
    all.bias = Some(randn(pairs(1, 1), seed + 5, DType::F16));
    all.mask = Some(bools(pairs(1, h), seed + 6, 0.5));
    v.push(all);
    v
}

/// Packed variable-length problems (batch 1), with and without causal/window and seqused_k.
fn varlen_setups() -> Vec<Setup> {
    let cu = |lens: &[usize]| {
        std::iter::once(0)
            .chain(lens.iter().scan(0, |a, l| {
                *a += l;
                Some(*a)
            }))
            .collect::<Vec<_>>()
    };
    let (lq, lk) = ([5usize, 0, 17, 40, 1], [5usize, 3, 30, 40, 2]);
    let (cq, ck) = (cu(&lq), cu(&lk));
    let base = Problem::new(1, 2, *cq.last().unwrap(), 64).with_seq_k(*ck.last().unwrap()).with_varlen(cq, ck);
    let mk = |label: &str, p: Problem| Setup { label: label.into(), p, bias: None, mask: None };
    let mut v = vec![
        mk("varlen", base.clone()),
        mk("varlen_causal", base.clone().with_causal(true)),
        mk("varlen_window", base.clone().with_window(Window::new(4, 2))),
        mk("varlen_seqused_causal", base.clone().with_causal(true).with_seqused_k(vec![3, 0, 30, 12, 2])),
        mk(
            "varlen_alibi_sinks_softcap",
            base.clone().with_causal(true).with_alibi(alibi_slopes(2)).with_sinks(vec![0.3, -1.0]).with_softcap(2.0),
        ),
    ];
    let gqa = Problem::new(1, 4, 63, 40).with_kv_heads(2).with_seq_k(77).with_varlen(vec![0, 20, 63], vec![0, 7, 77]);
    let mut m = mk("varlen_gqa_mask_window", gqa.with_window(Window::new(6, 0)).with_mask(1, 1));
    m.mask = Some(bools(63 * 77, 9, 0.6));
    v.push(m);
    v
}

/// Runs every supporting exact backend on `s` in `dtype`; returns how many (backend, setup)
/// pairs were checked.
fn check_setup(s: &Setup, dtype: DType, seed: u64) -> usize {
    let p = s.p.clone().with_dtype(dtype);
    let (q, k, v) = qkv(&p, seed);
    let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), s.pair()).unwrap();
    let (o64, l64) = attention_f64(&args);
    let tol = exact_tolerance(&args, &o64, dtype).bound;
    let mut checked = 0;
    for name in ["sdpa", "flash-cpu", "local"] {
        let b = backend(name).unwrap();
        if !b.supports(&p) || b.availability().is_err() {
            continue;
        }
        let got = b.forward(&args, true).unwrap();
        let stats = compare(&got.out, &o64);
        assert!(stats.within(tol), "{name} {} {dtype}: {stats:?} not within {tol:e} ({p})", s.label);
        for (i, (a, w)) in got.lse.unwrap().iter().zip(&l64).enumerate() {
            if w.is_infinite() {
                assert_eq!(*a as f64, *w, "{name} {}: row {i} is empty but LSE = {a}", s.label);
            } else {
                let e = (*a as f64 - w).abs();
                assert!(e <= 2e-5 * (1.0 + w.abs()), "{name} {} {dtype}: LSE row {i}: {a} vs {w}", s.label);
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn shape_table_times_each_modifier_matches_the_oracle() {
    let mut checked = 0;
    let table = shape_table();
    for (ci, case) in table.iter().enumerate() {
        for s in variants(&case.problem, ci as u64) {
            // The 1000×1000 case costs as much as the rest of the table: combined modifiers only.
            if case.name == "ragged1000" && s.label != "all" {
                continue;
            }
            checked += check_setup(&s, DType::F32, 100 + ci as u64);
        }
    }
    // sdpa and flash-cpu on every (case, variant) but 8 of ragged1000's; local on the windowed.
    assert!(checked >= 2 * (table.len() * 9 - 8), "only {checked} runs checked");
}

#[test]
fn half_precision_inputs_with_modifiers_match_the_oracle() {
    let mut checked = 0;
    for case in
        shape_table().iter().filter(|c| ["ragged17", "gqa_4_to_2", "window_16_16", "causal_q_lt_k"].contains(&c.name))
    {
        for dtype in [DType::F16, DType::BF16] {
            for s in variants(&case.problem, 7).into_iter().filter(|s| s.label == "all" || s.label == "seqused_k") {
                checked += check_setup(&s, dtype, 3);
            }
        }
    }
    assert!(checked >= 4 * 2 * 2 * 2, "only {checked} runs checked");
}

/// bf16 inputs with every modifier variant, packed varlen included, on every SIMD path this CPU has (the paths
/// `ATTNKIT_SIMD` selects, forced one by one): the AVX512_BF16 pair kernel where present, the
/// f32 kernels (bf16 widened while packing) on AVX-512F, AVX2 and the portable path.
#[test]
fn bf16_modifiers_on_every_simd_path_match_the_oracle() {
    let (mut checked, isas) = (0, Isa::available());
    let table = shape_table();
    let cases = table.iter().filter(|c| ["ragged17", "gqa_4_to_2", "causal_q_lt_k", "d7_odd"].contains(&c.name));
    let setups = cases.flat_map(|c| variants(&c.problem, 13).into_iter().map(move |s| (c.name, s)));
    for (name, s) in setups.chain(varlen_setups().into_iter().map(|s| ("packed", s))) {
        let p = s.p.clone().with_dtype(DType::BF16);
        let (q, k, v) = qkv(&p, 5);
        let args = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), s.pair()).unwrap();
        let (o64, _) = attention_f64(&args);
        let tol = exact_tolerance(&args, &o64, DType::BF16).bound;
        for &isa in &isas {
            let got = FlashCpu::with_isa(isa).unwrap().forward(&args, false).unwrap().out;
            let e = compare(&got, &o64);
            assert!(e.within(tol), "flash-cpu {isa} {name} {}: {e:?} not within {tol:e}", s.label);
            checked += 1;
        }
    }
    assert!(checked >= (4 * 9 + 6) * isas.len(), "only {checked} runs checked");
}

#[test]
fn packed_varlen_matches_the_oracle() {
    let mut checked = 0;
    for s in varlen_setups() {
        checked += check_setup(&s, DType::F32, 11);
    }
    assert!(checked >= 2 * 6, "only {checked} runs checked");
}

/// Max |a − b| over finite pairs, and whether the non-finite ones agree.
fn agree(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| if x.is_finite() { (x - y).abs() <= tol } else { x == y })
}

#[test]
fn oracle_matches_independent_formulations() {
    let p = Problem::new(2, 3, 37, 16).with_seq_k(45).with_causal(true);
    let (q, k, v) = qkv(&p, 5);
    let run = |p: &Problem, q: &Tensor, k: &Tensor, v: &Tensor, pair: PairData<'_>| {
        attention_f64(&AttnArgs::new_with(p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap())
    };

    // ALiBi == an explicit bias tensor −slope·|i + N_k − N_q − j| (bottom-right aligned).
    let slopes = alibi_slopes(3);
    let alibi = run(&p.clone().with_alibi(slopes.clone()), &q, &k, &v, PairData::default());
    let mut bias = vec![0.0f32; 3 * 37 * 45];
    for h in 0..3 {
        for i in 0..37 {
            for j in 0..45 {
                bias[(h * 37 + i) * 45 + j] = -slopes[h] * (i as f32 + 45.0 - 37.0 - j as f32).abs();
            }
        }
    }
    let explicit = run(&p.clone().with_bias(1, 3), &q, &k, &v, PairData { bias: Some((&bias).into()), mask: None });
    assert!(agree(&alibi.0, &explicit.0, 1e-12) && agree(&alibi.1, &explicit.1, 1e-12));

    // Sinks == one extra key whose score is the sink (q·k = sink/scale) and whose value is 0,
    // put first so causal alignment still lets every row see it.
    let sinks = vec![0.7f32, -0.4, 2.0];
    let with_sinks = run(&p.clone().with_sinks(sinks.clone()), &q, &k, &v, PairData::default());
    let pe = p.clone().with_seq_k(46).with_causal(false).with_mask(1, 1).with_bias(1, 3);
    let (qf, kf, vf) = (q.to_f32(), k.to_f32(), v.to_f32());
    let (mut k2, mut v2) = (vec![0.0f32; pe.kv_len()], vec![0.0f32; pe.kv_len()]);
    for bh in 0..6 {
        // The extra key has k = 0 and the sink enters as its bias.
        k2[(bh * 46 + 1) * 16..(bh + 1) * 46 * 16].copy_from_slice(&kf[bh * 45 * 16..(bh + 1) * 45 * 16]);
        v2[(bh * 46 + 1) * 16..(bh + 1) * 46 * 16].copy_from_slice(&vf[bh * 45 * 16..(bh + 1) * 45 * 16]);
    }
    let mut mask = vec![false; 37 * 46];
    let mut sbias = vec![0.0f32; 3 * 37 * 46];
    for i in 0..37 {
        let (lo, hi) = p.key_range(i);
        mask[i * 46] = true;
        (lo..hi).for_each(|j| mask[i * 46 + j + 1] = true);
        (0..3).for_each(|h| sbias[(h * 37 + i) * 46] = sinks[h]);
    }
    let (q2, k2, v2) = (Tensor::F32(qf.clone()), Tensor::F32(k2), Tensor::F32(v2));
    let extra = run(&pe, &q2, &k2, &v2, PairData { bias: Some((&sbias).into()), mask: Some(&mask) });
    assert!(agree(&with_sinks.0, &extra.0, 1e-12) && agree(&with_sinks.1, &extra.1, 1e-12));

    // Varlen == the packed problem with a block-diagonal (and per-sequence causal) boolean mask.
    let (cq, ck) = (vec![0usize, 10, 10, 30], vec![0usize, 4, 9, 25]);
    let pv = Problem::new(1, 2, 30, 16).with_seq_k(25).with_causal(true);
    let (q, k, v) = qkv(&pv, 8);
    let varlen = run(&pv.clone().with_varlen(cq.clone(), ck.clone()), &q, &k, &v, PairData::default());
    let mut bd = vec![false; 30 * 25];
    for s in 0..3 {
        let (nq, nk) = (cq[s + 1] - cq[s], ck[s + 1] - ck[s]);
        for i in 0..nq {
            for j in 0..nk {
                bd[(cq[s] + i) * 25 + ck[s] + j] = j as i64 <= i as i64 + nk as i64 - nq as i64;
            }
        }
    }
    let dense =
        run(&pv.clone().with_causal(false).with_mask(1, 1), &q, &k, &v, PairData { bias: None, mask: Some(&bd) });
    assert!(agree(&varlen.0, &dense.0, 1e-12) && agree(&varlen.1, &dense.1, 1e-12));
}

#[test]
fn a_nan_in_the_bias_stays_in_its_row_and_rows_without_keys_follow_the_sink_rule() {
    let p = Problem::new(1, 2, 40, 32).with_bias(1, 1).with_sinks(vec![0.25, -3.0]).with_mask(1, 1);
    let (q, k, v) = qkv(&p, 2);
    let mut bias = vec![0.0f32; 40 * 40];
    bias[7 * 40 + 3] = f32::NAN;
    bias[9 * 40 + 30] = f32::INFINITY;
    let mut mask = vec![true; 40 * 40];
    mask[12 * 40..13 * 40].fill(false); // row 12 has no key
    let args = AttnArgs::new_with(
        &p,
        q.as_ref(),
        k.as_ref(),
        v.as_ref(),
        PairData { bias: Some((&bias).into()), mask: Some(&mask) },
    )
    .unwrap();
    for name in ["sdpa", "flash-cpu"] {
        let out = backend(name).unwrap().forward(&args, true).unwrap();
        let lse = out.lse.unwrap();
        for h in 0..2 {
            for i in 0..40 {
                let row = &out.out[(h * 40 + i) * 32..(h * 40 + i + 1) * 32];
                let bad = i == 7 || i == 9;
                assert_eq!(row.iter().any(|x| !x.is_finite()), bad, "{name} head {h} row {i}: {row:?}");
            }
            let r12 = &out.out[(h * 40 + 12) * 32..(h * 40 + 13) * 32];
            assert!(r12.iter().all(|&x| x == 0.0), "{name}: empty row gives O = 0");
            assert_eq!(lse[h * 40 + 12], [0.25, -3.0][h], "{name}: empty row's LSE is the sink");
        }
    }
}

#[test]
fn bad_modifier_inputs_get_typed_errors_naming_the_value() {
    let p = Problem::new(2, 2, 4, 8);
    let (q, k, v) = qkv(&p, 1);
    let bias = vec![0.0f32; 2 * 4 * 4];
    let mask = vec![true; 3];
    let cases: Vec<(Problem, PairData<'_>, &str)> = vec![
        (
            p.clone().with_bias(1, 2),
            PairData::default(),
            "declares a bias of shape (1, 2, N_q, N_k) but none was passed",
        ),
        (
            p.clone(),
            PairData { bias: Some((&bias).into()), mask: None },
            "a bias was passed but the problem declares none",
        ),
        (
            p.clone().with_bias(2, 2),
            PairData { bias: Some((&bias).into()), mask: None },
            "bias has 32 elements, expected 64",
        ),
        (p.clone().with_mask(1, 1), PairData { bias: None, mask: Some(&mask) }, "mask has 3 elements, expected 16"),
        (p.clone().with_mask(3, 1), PairData::default(), "(3, 1, N_q, N_k) but must broadcast to (B=2, H=2)"),
        (p.clone().with_softcap(f32::NAN), PairData::default(), "softcap must be finite and > 0, got NaN"),
        (p.clone().with_sinks(vec![1.0]), PairData::default(), "sinks have 1 values"),
        (p.clone().with_alibi(vec![0.1; 5]), PairData::default(), "alibi slopes have 5 values"),
        (p.clone().with_seqused_k(vec![4, 9]), PairData::default(), "seqused_k[1] = 9 exceeds that entry's 4 keys"),
        (p.clone().with_varlen(vec![0, 4], vec![0, 4]), PairData::default(), "batch must be 1, got 2"),
    ];
    for (p, pair, needle) in cases {
        let e = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap_err();
        assert!(e.to_string().contains(needle), "`{e}` should contain `{needle}`");
        assert!(matches!(e, AttnError::Shape(_) | AttnError::InvalidArgument(_)), "{e:?}");
    }
    let one = Problem::new(1, 1, 4, 8);
    let cases = [
        (one.clone().with_varlen(vec![1, 4], vec![0, 4]), "cu_seqlens_q[0] must be 0, got 1"),
        (
            one.clone().with_varlen(vec![0, 3, 2, 4], vec![0, 1, 2, 4]),
            "cu_seqlens_q must not decrease: [1] = 3 > [2] = 2",
        ),
        (one.clone().with_varlen(vec![0, 4], vec![0, 5]), "cu_seqlens_k ends at 5 but the packed length is 4"),
        (one.clone().with_varlen(vec![0, 4], vec![0, 2, 4]), "must have the same length"),
    ];
    for (p, needle) in cases {
        let e = p.validate().unwrap_err();
        assert!(e.to_string().contains(needle), "`{e}` should contain `{needle}`");
    }
}

#[test]
fn backends_without_modifiers_refuse_each_with_a_reason() {
    let p = Problem::new(1, 2, 16, 32)
        .with_alibi(alibi_slopes(2))
        .with_softcap(5.0)
        .with_sinks(vec![0.0; 2])
        .with_seqused_k(vec![9]);
    // linformer and FAVOR+ performer take sinks through their own log-normalizer, and both
    // performer kernels and linformer take used key lengths (tests/linformer.rs,
    // tests/performer.rs); the ReLU performer and local-block refuse sinks.
    let relu = attnkit::BackendOptions { kernel: Some(attnkit::options::Kernel::Relu), ..Default::default() };
    let cases: [(&str, attnkit::BackendOptions, &[&str]); 4] = [
        ("linformer", Default::default(), &["alibi", "softcap"]),
        ("performer", Default::default(), &["alibi", "softcap"]),
        ("performer", relu, &["alibi", "softcap", "sinks"]),
        ("local-block", Default::default(), &["alibi", "softcap", "sinks", "seqused_k"]),
    ];
    for (name, opts, refused) in cases {
        let reasons = attnkit::backend_with(name, &opts).unwrap().not_supported_reasons(&p);
        for m in ["alibi", "softcap", "sinks", "seqused_k"] {
            let says = reasons.iter().any(|r| r.contains(m));
            assert_eq!(says, refused.contains(&m), "{name}: refuses {m}? {reasons:?}");
        }
    }
}

#[test]
fn flash_cuda_refuses_bias_and_mask_only() {
    // ALiBi, softcap, sinks, varlen and seqused_k run in the kernel's _mods entry points
    // (tests/cuda_emulated.rs); bias and boolean mask are refused with the reason.
    let fc = backend("flash-cuda").unwrap();
    let p = Problem::new(1, 2, 16, 32).with_alibi(alibi_slopes(2)).with_softcap(5.0).with_sinks(vec![0.0; 2]);
    assert!(fc.not_supported_reasons(&p).is_empty(), "{:?}", fc.not_supported_reasons(&p));
    for q in [p.clone().with_bias(1, 1), p.with_mask(1, 1)] {
        let r = fc.not_supported_reasons(&q);
        assert!(r.iter().any(|r| r.contains("bias and boolean mask")), "{r:?}");
    }
}
