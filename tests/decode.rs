//! The decode strategy (`tiled::decode`) against the f64 oracle: N_q ∈ {1, 2, 7, 16}, N_k up to
//! 100 000, GQA 1/4/8, causal, windows, empty rows, per-batch key lengths, f32/f16/bf16, the
//! AVX512_BF16 kernel forced on and off, and bitwise determinism at 1, 2 and 8 threads.
//! Tolerance: `validate::exact_tolerance` at the input dtype (FlashAttention's rule).

mod common;

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::simd::Isa;
use attnkit::tiled::decode::{self, key_lengths_range};
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{Attention, AttnArgs, DType, Problem, Tensor, Window};
use common::qkv;

/// (b, h, h_kv, n_q, n_k, d, causal, window)
type Shape = (usize, usize, usize, usize, usize, usize, bool, Window);

fn shapes() -> Vec<Shape> {
    let un = Window::UNBOUNDED;
    vec![
        (1, 8, 1, 1, 100_000, 16, true, un),                   // GQA 8, long cache
        (2, 4, 1, 2, 5_000, 40, false, Window::new(300, 0)),   // GQA 4, window, D tail
        (1, 8, 2, 7, 3_000, 64, true, un),                     // GQA 4, N_q 7
        (1, 2, 2, 16, 2_000, 32, false, un),                   // MHA, N_q 16
        (1, 8, 1, 16, 1_000, 128, true, Window::new(100, -1)), // 128 rows in one group
        (1, 2, 1, 16, 10, 8, true, un),                        // N_q > N_k: empty rows
        (2, 3, 3, 1, 777, 7, false, Window::new(-1, 0)),       // odd D
    ]
}

fn problem(s: &Shape, dtype: DType) -> Problem {
    let &(b, h, hkv, nq, nk, d, causal, window) = s;
    Problem::new(b, h, nq, d)
        .with_kv_heads(hkv)
        .with_seq_k(nk)
        .with_causal(causal)
        .with_window(window)
        .with_dtype(dtype)
}

fn run_decode(isa: Isa, args: &AttnArgs<'_>, lens: Option<&[usize]>) -> Vec<f32> {
    let p = args.problem();
    let mut out = vec![0.0f32; p.out_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    match lens {
        None => decode::run("decode", isa, &|_, i| p.key_range(i), args, &mut out, Some(&mut lse)),
        Some(l) => decode::run("decode", isa, &*key_lengths_range(p, l).unwrap(), args, &mut out, Some(&mut lse)),
    }
    .unwrap();
    out
}

/// Worst error/bound ratio of `got` against the oracle of `args`; panics when over the bound.
fn check(got: &[f32], args: &AttnArgs<'_>, what: &str) -> f64 {
    let want = oracle(args);
    let tol = exact_tolerance(args, &want, args.problem().dtype);
    let e = compare(got, &want);
    assert!(e.within(tol.bound), "{what}: {e:?} over bound {:.3e} for {}", tol.bound, args.problem());
    e.max_abs / tol.bound
}

#[test]
fn decode_matches_the_oracle_over_shapes_and_dtypes() {
    let mut checked = 0;
    for (si, s) in shapes().iter().enumerate() {
        let dtypes: &[DType] = if s.4 > 10_000 { &[DType::F32] } else { &DType::ALL };
        for &dtype in dtypes {
            let p = problem(s, dtype);
            let (q, k, v) = qkv(&p, 7 + si as u64);
            let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            check(&run_decode(Isa::best(), &args, None), &args, "best ISA");
            checked += 1;
        }
    }
    // The portable path, once, on a shape with tails everywhere.
    let p = problem(&shapes()[1], DType::F32);
    let (q, k, v) = qkv(&p, 3);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    check(&run_decode(Isa::Scalar, &args, None), &args, "scalar");
    assert_eq!(checked, 6 * 3 + 1);
}

/// Per-batch key lengths: each batch is checked against the oracle of its own prefix of the cache.
#[test]
fn ragged_key_lengths_match_per_batch_oracles() {
    let (nk, d, h, hkv, nq) = (3000, 32, 4, 1, 2);
    let lens = [3000, 1, 0, 1234];
    for (causal, window) in [(true, Window::UNBOUNDED), (false, Window::new(100, 0)), (false, Window::UNBOUNDED)] {
        let p = Problem::new(lens.len(), h, nq, d)
            .with_kv_heads(hkv)
            .with_seq_k(nk)
            .with_causal(causal)
            .with_window(window);
        let (q, k, v) = qkv(&p, 11);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let got = run_decode(Isa::best(), &args, Some(&lens));
        let (qf, kf, vf) = (q.to_f32(), k.to_f32(), v.to_f32());
        for (b, &len) in lens.iter().enumerate() {
            let per_q = h * nq * d;
            let mine = &got[b * per_q..(b + 1) * per_q];
            if len == 0 {
                assert!(mine.iter().all(|&x| x == 0.0), "an empty cache gives O = 0");
                continue;
            }
            let pb = Problem { batch: 1, seq_k: len, ..p.clone() };
            let prefix = |t: &[f32]| -> Vec<f32> {
                (0..hkv).flat_map(|g| t[((b * hkv + g) * nk) * d..((b * hkv + g) * nk + len) * d].to_vec()).collect()
            };
            let (kb, vb) = (prefix(&kf), prefix(&vf));
            let qb = &qf[b * per_q..(b + 1) * per_q];
            let a = AttnArgs::new(&pb, qb, &kb, &vb).unwrap();
            check(mine, &a, "ragged");
        }
    }
    let p = Problem::new(2, 1, 1, 8).with_seq_k(10);
    assert!(key_lengths_range(&p, &[1]).is_err());
    let e = key_lengths_range(&p, &[3, 11]).err().unwrap();
    assert!(e.to_string().contains("11"), "{e}");
}

#[test]
fn decode_is_bitwise_deterministic_across_thread_counts() {
    let mut checked = 0;
    for dtype in [DType::F32, DType::BF16] {
        let p = Problem::new(1, 8, 1, 64).with_kv_heads(2).with_seq_k(20_000).with_causal(true).with_dtype(dtype);
        let (q, k, v) = qkv(&p, 5);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let pool = |t: usize| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
        let first = pool(1).install(|| FlashCpu::new().forward(&args, true).unwrap());
        for threads in [2, 8] {
            let again = pool(threads).install(|| FlashCpu::new().forward(&args, true).unwrap());
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&first.out), bits(&again.out), "{dtype} at {threads} threads");
            assert_eq!(bits(first.lse.as_ref().unwrap()), bits(again.lse.as_ref().unwrap()));
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

/// flash-cpu picks decode for few rows per KV head and still meets the rule (and its LSE).
#[test]
fn flash_cpu_uses_decode_for_small_row_counts() {
    let p = Problem::new(1, 4, 1, 64).with_kv_heads(1).with_seq_k(4096).with_causal(true);
    assert!(attnkit::tiled::decode_applies(&p));
    // N_q · group: 2·8 = 16 rows decode, 3·8 = 24 rows or 17·1 do not.
    assert!(attnkit::tiled::decode_applies(&Problem::new(1, 8, 2, 64).with_kv_heads(1)));
    assert!(!attnkit::tiled::decode_applies(&Problem::new(1, 8, 3, 64).with_kv_heads(1)));
    assert!(!attnkit::tiled::decode_applies(&Problem::new(1, 4, 17, 64)));
    let (q, k, v) = qkv(&p, 1);
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let o = FlashCpu::new().forward(&args, true).unwrap();
    check(&o.out, &args, "flash-cpu decode");
    let (_, lse_ref) = attnkit::backends::reference::attention_f64(&args);
    let worst = o.lse.unwrap().iter().zip(&lse_ref).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "LSE off by {worst}");
}

/// The AVX512_BF16 kernel forced on (`avx512bf16`) and off (`avx512`): both inside the bf16 rule,
/// and different from each other (so the bf16 kernel really ran). Prints the worst error/bound.
#[test]
fn bf16_kernel_forced_on_and_off() {
    if !Isa::Avx512Bf16.is_available() {
        // Without AVX512_BF16 the forced path must be refused and bf16 inputs take the f32 path.
        assert!(FlashCpu::with_isa(Isa::Avx512Bf16).is_err());
        println!("no AVX512_BF16 on this CPU: only the refusal was checked");
        return;
    }
    let mut worst: f64 = 0.0;
    for (si, s) in shapes().iter().enumerate().filter(|(_, s)| s.4 <= 10_000) {
        let p = problem(s, DType::BF16);
        let (q, k, v) = qkv(&p, 21 + si as u64);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let on = run_decode(Isa::Avx512Bf16, &args, None);
        let off = run_decode(Isa::Avx512, &args, None);
        worst = worst.max(check(&on, &args, "bf16 kernel"));
        check(&off, &args, "f32 path on bf16 inputs");
        if s.4 >= s.3 {
            assert_ne!(on, off, "the bf16 kernel rounds P to bf16, so it must differ from the f32 path");
        }
        // f16 inputs keep the exact f32 path whatever the ISA.
        let p16 = p.clone().with_dtype(DType::F16);
        let t = |x: &Tensor| Tensor::from_f32(&x.to_f32(), DType::F16);
        let (q16, k16, v16) = (t(&q), t(&k), t(&v));
        let a16 = AttnArgs::new(&p16, q16.as_ref(), k16.as_ref(), v16.as_ref()).unwrap();
        assert_eq!(run_decode(Isa::Avx512Bf16, &a16, None), run_decode(Isa::Avx512, &a16, None));
    }
    println!("bf16 decode kernel: worst error / bound = {worst:.3}");
    assert!(worst > 0.0);
}

/// The decode path through the public backend with `Problem::with_seqused_k` (issue 11's key
/// lengths, aligned per batch entry), and a modifier the decode kernel lacks (ALiBi), which must
/// route the problem to whole-head waves instead; both against the f64 oracle.
#[test]
fn decode_takes_seqused_k_from_the_problem_and_leaves_other_modifiers_to_the_waves() {
    let base = Problem::new(3, 8, 1, 64).with_kv_heads(2).with_seq_k(4_000).with_causal(true);
    let lens = base.clone().with_seqused_k(vec![4_000, 1_234, 0]);
    assert!(decode::decode_applies(&lens), "seqused_k alone keeps the decode path");
    let (q, k, v) = qkv(&lens, 5);
    let args = AttnArgs::new(&lens, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let got = FlashCpu::new().forward(&args, false).unwrap().out;
    check(&got, &args, "flash-cpu decode with seqused_k");
    let via_closure = run_decode(Isa::best(), &args, Some(&[4_000, 1_234, 0]));
    assert_eq!(got, via_closure, "Problem::key_range_at and key_lengths_range agree");

    let alibi = base.with_alibi(attnkit::alibi_slopes(8));
    assert!(!decode::decode_applies(&alibi), "ALiBi has no decode kernel step");
    let args = AttnArgs::new(&alibi, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    check(&FlashCpu::new().forward(&args, false).unwrap().out, &args, "flash-cpu with ALiBi on a decode shape");
}
