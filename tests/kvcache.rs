//! The KV cache: attention over contiguous and paged caches against the f64 oracle on the
//! gathered (dense) equivalent, append-then-attend against attention on the concatenated
//! tensors, rotary against an explicit f64 rotation, the int8 error bound, determinism across
//! thread counts, and every refusal.
//!
//! Tolerance: `attnkit::validate::exact_tolerance` (the FlashAttention rule: twice the error of
//! a naive f32 implementation plus a rounding floor) on the dense f32 equivalent the cache holds
//! (bf16/int8 values are exact in f32, so the cache's own rounding is not counted here; the
//! int8 tests bound it separately).

use attnkit::kvcache::quant::{QBLOCK, SEARCH_FLOOR};
use attnkit::kvcache::{AppendOptions, KvCache, KvCacheError, KvDType, KvLayout, Rotary, RotaryLayout};
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{AttnArgs, AttnError, DType, Problem, Window, seeded::normal_values};

/// A cache of `lens[b]` tokens per sequence (random K/V, seed `seed`), appended per sequence.
/// Paged caches get a shuffled block table with a spare page.
fn filled(layout: KvLayout, dtype: KvDType, hkv: usize, d: usize, lens: &[usize], cap: usize, seed: u64) -> KvCache {
    let b = lens.len();
    let mut c = match layout {
        KvLayout::Contiguous => KvCache::contiguous(b, hkv, d, cap, dtype).unwrap(),
        KvLayout::Paged { page_size } => {
            let mp = cap.div_ceil(page_size);
            let np = b * mp + 1;
            // A fixed shuffle: pages in reverse-interleaved order, page 0 left spare.
            let mut table: Vec<i32> = (1..=(b * mp) as i32).collect();
            table.reverse();
            let (even, odd): (Vec<i32>, Vec<i32>) = table.iter().partition(|&&x| x % 2 == 0);
            let table = [odd, even].concat();
            KvCache::paged(b, hkv, d, page_size, np, mp, table, dtype).unwrap()
        }
    };
    for (i, &n) in lens.iter().enumerate() {
        let k = normal_values(hkv * n * d, seed + 2 * i as u64);
        let v = normal_values(hkv * n * d, seed + 2 * i as u64 + 1);
        c.append(&k, &v, n, &AppendOptions { cache_batch_idx: Some(&[i]), rotary: None }).unwrap();
    }
    c
}

/// Oracle output `(B, H, N_q, D)` in f64 for `q` over the dense contents of `c`, and the bound.
fn dense_oracle(c: &KvCache, p: &Problem, q: &[f32]) -> (Vec<f64>, f64) {
    let (h, nq, d) = (p.heads, p.seq_q, p.head_dim);
    let (mut want, mut bound) = (Vec::new(), 0.0f64);
    for b in 0..p.batch {
        let qb = &q[b * h * nq * d..(b + 1) * h * nq * d];
        let (k, v) = c.to_dense(b).unwrap();
        let len = k.len() / (c.kv_heads() * d);
        if len == 0 {
            want.extend(std::iter::repeat_n(0.0, h * nq * d));
            continue;
        }
        let pb = Problem { batch: 1, seq_k: len, ..p.clone() };
        let args = AttnArgs::new(&pb, qb, k.as_slice(), v.as_slice()).unwrap();
        let o = oracle(&args);
        bound = bound.max(exact_tolerance(&args, &o, DType::F32).bound);
        want.extend(o);
    }
    (want, bound)
}

fn run(c: &KvCache, p: &Problem, q: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; p.out_len()];
    c.attend(p, q, None, &mut out, None).unwrap();
    out
}

struct Case {
    name: &'static str,
    h: usize,
    hkv: usize,
    nq: usize,
    lens: &'static [usize],
    causal: bool,
    window: Window,
    sinks: bool,
    softcap: bool,
    alibi: bool,
}

const fn case(name: &'static str, h: usize, hkv: usize, nq: usize, lens: &'static [usize]) -> Case {
    Case { name, h, hkv, nq, lens, causal: true, window: Window::UNBOUNDED, sinks: false, softcap: false, alibi: false }
}

fn cases() -> Vec<Case> {
    vec![
        case("decode gqa, lengths 0/1/full/odd", 8, 2, 1, &[0, 1, 300, 517]),
        case("decode mqa", 4, 1, 1, &[333, 70]),
        case("nq4 mha", 2, 2, 4, &[260, 5]),
        case("nq16 gqa", 4, 2, 16, &[517, 100]),
        case("nq512 chunked prefill", 4, 2, 512, &[517, 600]),
        Case { window: Window::new(40, 0), sinks: true, ..case("window+sinks", 8, 2, 4, &[517, 33]) },
        Case { causal: false, window: Window::new(100, 3), ..case("window two-sided", 4, 2, 16, &[600, 250]) },
        Case { softcap: true, alibi: true, ..case("softcap+alibi", 4, 2, 4, &[517, 90]) },
        // N_q·group > 16: the tiled prefill kernel, with each modifier and lengths 0 and < N_q.
        Case { window: Window::new(40, 0), sinks: true, ..case("prefill window+sinks", 8, 2, 64, &[517, 0]) },
        Case { softcap: true, alibi: true, ..case("prefill softcap+alibi", 4, 2, 64, &[300, 40]) },
        Case { causal: false, window: Window::new(100, 3), ..case("prefill two-sided mqa", 4, 1, 33, &[600, 250]) },
    ]
}

#[test]
fn paged_contiguous_and_oracle_agree() {
    let (d, cap) = (64, 600);
    for cs in cases() {
        let p = problem(&cs, d);
        let q = normal_values(p.q_len(), 7);
        for dtype in KvDType::ALL {
            let base = filled(KvLayout::Contiguous, dtype, cs.hkv, d, cs.lens, cap, 11);
            let want_out = run(&base, &p, &q);
            let (want, bound) = dense_oracle(&base, &p, &q);
            let e = compare(&want_out, &want);
            assert!(e.within(bound), "{} {dtype} contiguous: {e:?} bound {bound}", cs.name);
            for page_size in [16, 64, 256] {
                let c = filled(KvLayout::Paged { page_size }, dtype, cs.hkv, d, cs.lens, cap, 11);
                // The same values in the same blocks: bitwise equal to contiguous.
                assert!(run(&c, &p, &q) == want_out, "{} {dtype} paged:{page_size} differs from contiguous", cs.name);
            }
        }
    }
}

/// The problem of a case at head dim `d`.
fn problem(cs: &Case, d: usize) -> Problem {
    let mut p =
        Problem::new(cs.lens.len(), cs.h, cs.nq, d).with_kv_heads(cs.hkv).with_causal(cs.causal).with_window(cs.window);
    if cs.sinks {
        p = p.with_sinks((0..cs.h).map(|i| i as f32 * 0.5 - 1.0).collect());
    }
    if cs.softcap {
        p = p.with_softcap(5.0);
    }
    if cs.alibi {
        p = p.with_alibi(attnkit::alibi_slopes(cs.h));
    }
    p
}

/// bf16 and int8 pages are read in place, widened or dequantized in registers: bitwise the
/// attention over an f32 cache holding the values they decode to (`to_dense`), in the same
/// layout. D = 72 leaves a partial int8 block and a tail past the last full vector.
#[test]
fn bf16_and_int8_pages_equal_f32_pages_of_their_values_bitwise() {
    let mut checked = 0;
    for d in [64, 72] {
        for cs in cases() {
            let p = problem(&cs, d);
            let q = normal_values(p.q_len(), 7);
            for dtype in [KvDType::BF16, KvDType::Int8] {
                for layout in [KvLayout::Contiguous, KvLayout::Paged { page_size: 16 }] {
                    let c = filled(layout, dtype, cs.hkv, d, cs.lens, 600, 11);
                    let mut f = filled(layout, KvDType::F32, cs.hkv, d, &vec![0; cs.lens.len()], 600, 0);
                    for b in 0..cs.lens.len() {
                        let (k, v) = c.to_dense(b).unwrap();
                        let opts = AppendOptions { cache_batch_idx: Some(&[b]), rotary: None };
                        f.append(&k, &v, cs.lens[b], &opts).unwrap();
                    }
                    assert!(run(&c, &p, &q) == run(&f, &p, &q), "{} d={d} {dtype} {layout:?}", cs.name);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * cases().len() * 4);
}

#[test]
fn append_then_attend_equals_attention_on_concatenated_tensors() {
    let (hkv, h, d, old, n) = (2, 4, 32, 45, 7);
    for layout in [KvLayout::Contiguous, KvLayout::Paged { page_size: 16 }] {
        let mut c = filled(layout, KvDType::F32, hkv, d, &[old, old + 3], 64, 3);
        let before: Vec<_> = (0..2).map(|b| c.to_dense(b).unwrap()).collect();
        let p = Problem::new(2, h, n, d).with_kv_heads(hkv).with_causal(true);
        let (q, kn, vn) =
            (normal_values(p.q_len(), 1), normal_values(2 * hkv * n * d, 2), normal_values(2 * hkv * n * d, 4));
        let mut out = vec![0.0f32; p.out_len()];
        c.append_attend(&p, &q, &kn, &vn, &AppendOptions::default(), &mut out, None).unwrap();
        assert_eq!(c.seqlens(), &[old + n, old + 3 + n]);
        for b in 0..2 {
            let len = before[b].0.len() / (hkv * d);
            let cat = |old: &[f32], new: &[f32]| -> Vec<f32> {
                (0..hkv)
                    .flat_map(|g| {
                        old[g * len * d..(g + 1) * len * d]
                            .iter()
                            .chain(&new[(b * hkv + g) * n * d..(b * hkv + g + 1) * n * d])
                    })
                    .copied()
                    .collect()
            };
            let (k, v) = (cat(&before[b].0, &kn), cat(&before[b].1, &vn));
            let pb = Problem { batch: 1, seq_k: len + n, ..p.clone() };
            let qb = &q[b * h * n * d..(b + 1) * h * n * d];
            let args = AttnArgs::new(&pb, qb, k.as_slice(), v.as_slice()).unwrap();
            let want = oracle(&args);
            let bound = exact_tolerance(&args, &want, DType::F32).bound;
            let e = compare(&out[b * h * n * d..(b + 1) * h * n * d], &want);
            assert!(e.within(bound), "{layout} batch {b}: {e:?} bound {bound}");
        }
    }
}

/// Rotates `x` (rows of `d`) by positions `pos(row)` in f64 with the f32 tables.
fn rotate_f64(x: &[f32], d: usize, r: &Rotary<'_>, pos: impl Fn(usize) -> usize) -> Vec<f64> {
    let half = r.rotary_dim / 2;
    let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (row, ch) in y.chunks_mut(d).enumerate() {
        let p = pos(row);
        for i in 0..half {
            let (a, b) = match r.layout {
                RotaryLayout::Interleaved => (2 * i, 2 * i + 1),
                RotaryLayout::HalfSplit => (i, i + half),
            };
            let (c, s) = (r.cos[p * half + i] as f64, r.sin[p * half + i] as f64);
            let (x0, x1) = (ch[a], ch[b]);
            ch[a] = x0 * c - x1 * s;
            ch[b] = x0 * s + x1 * c;
        }
    }
    y
}

#[test]
fn rotary_matches_explicit_f64_rotation_in_both_layouts() {
    let (hkv, h, d, old, n, rd) = (2, 4, 32, 20, 5, 24);
    let (cos, sin) = Rotary::tables(64, rd, 10000.0);
    for layout in [RotaryLayout::Interleaved, RotaryLayout::HalfSplit] {
        let rot = Rotary { cos: &cos, sin: &sin, rotary_dim: rd, layout };
        let mut c = KvCache::paged(1, hkv, d, 16, 4, 4, vec![3, 1, 0, 2], KvDType::F32).unwrap();
        // Leftpad 3: positions count from the first valid slot.
        c.set_lengths(&[old], Some(&[3])).unwrap();
        let p = Problem::new(1, h, n, d).with_kv_heads(hkv).with_causal(true);
        let (q, kn, vn) = (normal_values(p.q_len(), 5), normal_values(hkv * n * d, 6), normal_values(hkv * n * d, 8));
        let mut out = vec![0.0f32; p.out_len()];
        let opts = AppendOptions { cache_batch_idx: None, rotary: Some(rot) };
        c.append_attend(&p, &q, &kn, &vn, &opts, &mut out, None).unwrap();
        let (k, _) = c.to_dense(0).unwrap();
        let len = old - 3 + n;
        let want_k = rotate_f64(&kn, d, &rot, |row| old - 3 + row % n);
        for g in 0..hkv {
            let got = &k[(g * len + len - n) * d..(g * len + len) * d];
            let e = compare(got, &want_k[g * n * d..(g + 1) * n * d]);
            assert!(e.within(1e-5), "{layout:?} K: {e:?}");
        }
        // Q rotated at the same positions: attention equals the oracle on explicitly rotated Q.
        let qr: Vec<f32> = rotate_f64(&q, d, &rot, |row| old - 3 + row % n).iter().map(|&x| x as f32).collect();
        let (want, bound) = dense_oracle(&c, &p, &qr);
        let e = compare(&out, &want);
        assert!(e.within(bound + 1e-5), "{layout:?} attention: {e:?} bound {bound}");
    }
}

#[test]
fn int8_stays_within_its_bound() {
    let (hkv, d, n) = (2, 80, 50);
    let mut k = normal_values(hkv * n * d, 9);
    k[5 * d + 3] = 40.0; // an outlier channel coarsens its own block only
    let v = normal_values(hkv * n * d, 10);
    let mut c = KvCache::contiguous(1, hkv, d, n, KvDType::Int8).unwrap();
    c.append(&k, &v, n, &AppendOptions::default()).unwrap();
    let (kq, vq) = c.to_dense(0).unwrap();
    for (x, y) in [(&k, &kq), (&v, &vq)] {
        for (row_x, row_y) in x.chunks(d).zip(y.chunks(d)) {
            for (bx, by) in row_x.chunks(QBLOCK).zip(row_y.chunks(QBLOCK)) {
                let amax = bx.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in bx.iter().zip(by) {
                    let bound = amax / (2.0 * SEARCH_FLOOR) * (1.0 + 1e-5);
                    assert!((a - b).abs() <= bound, "{a} vs {b} (block max {amax})");
                }
            }
        }
    }
}

#[test]
fn bitwise_deterministic_across_thread_counts() {
    // N_q = 4 runs the decode kernel (16 query rows per KV head), N_q = 100 the tiled prefill.
    for nq in [4, 100] {
        let p = Problem::new(2, 8, nq, 64).with_kv_heads(2).with_causal(true);
        let q = normal_values(p.q_len(), 3);
        for dtype in KvDType::ALL {
            let c = filled(KvLayout::Paged { page_size: 16 }, dtype, 2, 64, &[9000, 5000], 9000, 1);
            let outs: Vec<Vec<f32>> = [1, 2, 3]
                .iter()
                .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| run(&c, &p, &q)))
                .collect();
            assert!(outs[0] == outs[1] && outs[1] == outs[2], "N_q={nq} {dtype}");
        }
    }
}

fn kv_err(r: attnkit::Result<impl Sized>) -> KvCacheError {
    match r {
        Err(AttnError::KvCache(e)) => e,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

/// A named refused call and what its error must match.
type Refusal = (&'static str, attnkit::Result<()>, fn(&KvCacheError) -> bool);

#[test]
fn every_refusal_is_typed_and_writes_nothing() {
    use KvCacheError as E;
    let (hkv, d) = (2, 16);
    let z = |n: usize| vec![0.5f32; hkv * n * d];
    assert!(matches!(
        kv_err(KvCache::paged(1, hkv, d, 8, 2, 1, vec![0], KvDType::F32)),
        E::PageSizeTooSmall { page_size: 8, .. }
    ));
    assert!(matches!(
        kv_err(KvCache::paged(1, hkv, d, 16, 2, 2, vec![0, 2], KvDType::F32)),
        E::BadPageIndex { batch: 0, slot: 1, page: 2, .. }
    ));
    assert!(matches!(
        kv_err(KvCache::paged(1, hkv, d, 16, 2, 2, vec![0, -1], KvDType::F32)),
        E::BadPageIndex { page: -1, .. }
    ));
    assert!(matches!(
        kv_err(KvCache::paged(2, hkv, d, 16, 2, 2, vec![0, 1], KvDType::F32)),
        E::ShapeMismatch { what: "block_table", .. }
    ));
    assert!(matches!(kv_err("paged:8".parse::<KvLayout>()), E::PageSizeTooSmall { page_size: 8, .. }));
    let mut c = KvCache::paged(2, hkv, d, 16, 4, 2, vec![0, 1, 2, 3], KvDType::Int8).unwrap();
    c.append(&[z(20), z(20)].concat(), &[z(20), z(20)].concat(), 20, &AppendOptions::default()).unwrap();
    let snapshot = (c.seqlens().to_vec(), c.to_dense(0).unwrap(), c.to_dense(1).unwrap());
    let (cos, sin) = Rotary::tables(25, 8, 10000.0);
    let rot = |rotary_dim| Some(Rotary { cos: &cos, sin: &sin, rotary_dim, layout: RotaryLayout::HalfSplit });
    let one = AppendOptions { cache_batch_idx: Some(&[1]), rotary: None };
    let refusals: Vec<Refusal> = vec![
        ("full", c.clone().append(&z(13), &z(13), 13, &one), |e| {
            matches!(e, E::CacheFull { batch: 1, seqlen: 20, new_tokens: 13, capacity: 32 })
        }),
        ("k len", c.clone().append(&z(3), &z(2), 2, &one), |e| matches!(e, E::ShapeMismatch { what: "k_new", .. })),
        ("v len", c.clone().append(&z(2), &z(3), 2, &one), |e| matches!(e, E::ShapeMismatch { what: "v_new", .. })),
        (
            "batch idx",
            c.clone().append(&z(1), &z(1), 1, &AppendOptions { cache_batch_idx: Some(&[2]), rotary: None }),
            |e| matches!(e, E::BadBatchIndex { row: 0, index: 2, batch: 2 }),
        ),
        (
            "dup idx",
            c.clone().append(&z(2), &z(2), 1, &AppendOptions { cache_batch_idx: Some(&[1, 1]), rotary: None }),
            |e| matches!(e, E::DuplicateBatchIndex { index: 1 }),
        ),
        ("rotary odd", c.clone().append(&z(1), &z(1), 1, &AppendOptions { rotary: rot(7), ..one }), |e| {
            matches!(e, E::RotaryDim { rotary_dim: 7, .. })
        }),
        ("rotary short", c.clone().append(&z(6), &z(6), 6, &AppendOptions { rotary: rot(8), ..one }), |e| {
            matches!(e, E::RotaryTooShort { needed: 25, positions: 25 })
        }),
        ("length", c.clone().set_lengths(&[33, 0], None), |e| {
            matches!(e, E::LengthOutOfRange { batch: 0, len: 33, capacity: 32 })
        }),
        ("leftpad", c.clone().set_lengths(&[3, 0], Some(&[4, 0])), |e| {
            matches!(e, E::LeftpadBeyondLength { batch: 0, leftpad: 4, seqlen: 3 })
        }),
        ("table", c.clone().set_block_table(vec![0, 1, 2, 4]), |e| {
            matches!(e, E::BadPageIndex { batch: 1, slot: 1, page: 4, .. })
        }),
    ];
    for (name, r, ok) in refusals {
        let e = kv_err(r);
        assert!(ok(&e), "{name}: {e}");
    }
    // The failed calls above ran on clones; run the first again on `c` itself: nothing moves.
    assert!(c.append(&z(13), &z(13), 13, &one).is_err());
    let p = Problem::new(1, 4, 3, d).with_kv_heads(hkv);
    let mut out = vec![0.0f32; p.out_len()];
    let q = vec![0.0f32; p.q_len()];
    let bad_q = c.append_attend(&p, &q[1..], &z(3), &z(3), &one, &mut out, None);
    assert!(matches!(kv_err(bad_q), E::ShapeMismatch { what: "q", .. }));
    let wrong_heads = Problem::new(1, 4, 3, d).with_kv_heads(1);
    assert!(matches!(c.append_attend(&wrong_heads, &q, &z(3), &z(3), &one, &mut out, None), Err(AttnError::Shape(_))));
    let masked = p.clone().with_seqused_k(vec![3]);
    assert!(matches!(c.attend(&masked, &q, Some(&[0]), &mut out, None), Err(AttnError::Unsupported { .. })));
    assert_eq!((c.seqlens().to_vec(), c.to_dense(0).unwrap(), c.to_dense(1).unwrap()), snapshot);
}

/// The decode output error (largest |difference| over the whole output) of the int8 cache
/// against the f32 result, beside the bf16 cache's, on the `normal` and `structured` families:
/// the bound is int8 ≤ 3× bf16. Cases: D = 64 and 128; GQA 8/2, MQA 4/1 and MHA 4/4;
/// 2048 keys; three seeds each. Largest ratio measured with this table: see
/// [`attnkit::kvcache::quant`] (the margin to 3× is printed per case with `--nocapture`).
#[test]
fn int8_error_against_bf16_on_normal_and_structured_inputs() {
    use attnkit::inputs::{DEFAULT_SHARPNESS, InputFamily, generate};
    let n = 2048;
    let families = [InputFamily::Normal, InputFamily::Structured { sharpness: DEFAULT_SHARPNESS }];
    let mut worst = 0.0f64;
    for (h, hkv, d) in [(8, 2, 128), (8, 2, 64), (4, 1, 128), (4, 4, 64)] {
        let p = Problem::new(1, h, 1, d).with_kv_heads(hkv).with_seq_k(n);
        for family in families {
            for seed in [5, 6, 7] {
                let (q, k, v) = generate(family, &p, seed);
                let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
                let want = oracle(&AttnArgs::new(&p, q.as_slice(), k.as_slice(), v.as_slice()).unwrap());
                let err = |dtype| {
                    let mut c = KvCache::contiguous(1, hkv, d, n, dtype).unwrap();
                    c.append(&k, &v, n, &AppendOptions::default()).unwrap();
                    let e = compare(&run(&c, &Problem { seq_k: 1, ..p.clone() }, &q), &want);
                    assert_eq!(e.non_finite, 0);
                    e.max_abs
                };
                let (e16, e8) = (err(KvDType::BF16), err(KvDType::Int8));
                let ratio = e8 / e16;
                worst = worst.max(ratio);
                println!("H={h}/{hkv} D={d} {family} seed {seed}: bf16 {e16:.3e}, int8 {e8:.3e}, ratio {ratio:.2}");
                assert!(ratio <= 3.0, "H={h}/{hkv} D={d} {family} seed {seed}: int8 {e8:.3e} > 3 × bf16 {e16:.3e}");
            }
        }
    }
    println!("largest int8/bf16 error ratio: {worst:.2}");
}
