//! The candle door (feature `candle`) on the shared shape table, every dtype:
//! - against candle's own matmul → softmax → matmul (in f32 from the same rounded inputs), within
//!   FlashAttention's tolerance rule (validate::exact_tolerance at the input dtype) widened by
//!   candle's own distance from the f64 oracle;
//! - bitwise equal to calling the same attnkit backend directly and rounding to the input dtype,
//!   for (B, H, N, D), (B, N, H, D) and strided views (transposed, narrowed), so the door adds
//!   no error of its own whatever the layout;
//! - bad inputs give errors, never panics.

mod common;

use attnkit::interop::{AttnOptions, Layout};
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{AttnArgs, DType, Problem};
use candle_core::{D, DType as CDType, Device, Tensor};

fn to_candle(t: &attnkit::Tensor, shape: (usize, usize, usize, usize)) -> Tensor {
    let dev = Device::Cpu;
    match t {
        attnkit::Tensor::F32(v) => Tensor::from_vec(v.clone(), shape, &dev),
        attnkit::Tensor::F16(v) => Tensor::from_vec(v.clone(), shape, &dev),
        attnkit::Tensor::BF16(v) => Tensor::from_vec(v.clone(), shape, &dev),
    }
    .unwrap()
}

fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(CDType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// candle's matmul → softmax → matmul in f32, with K/V heads repeated for GQA and the band mask
/// as −∞; rows with an empty band come out NaN there and are set to 0 (attnkit's definition).
fn candle_reference(p: &Problem, q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f32> {
    let g = p.group_size();
    let expand = |t: &Tensor| {
        let t = t.to_dtype(CDType::F32).unwrap().unsqueeze(2).unwrap();
        t.expand((p.batch, p.kv_heads, g, p.seq_k, p.head_dim))
            .unwrap()
            .reshape((p.batch, p.heads, p.seq_k, p.head_dim))
            .unwrap()
    };
    let (k, v) = (expand(k), expand(v));
    let q = q.to_dtype(CDType::F32).unwrap();
    let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * p.scale as f64).unwrap();
    let mut mask = vec![f32::NEG_INFINITY; p.seq_q * p.seq_k];
    for i in 0..p.seq_q {
        let (lo, hi) = p.key_range(i);
        mask[i * p.seq_k + lo..i * p.seq_k + hi].fill(0.0);
    }
    let mask = Tensor::from_vec(mask, (p.seq_q, p.seq_k), &Device::Cpu).unwrap();
    let s = s.broadcast_add(&mask).unwrap();
    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
    let prob = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    let mut out = to_f32_vec(&prob.matmul(&v).unwrap());
    for (row, chunk) in out.chunks_mut(p.head_dim).enumerate() {
        let (lo, hi) = p.key_range(row % p.seq_q);
        if lo >= hi {
            chunk.fill(0.0);
        }
    }
    out
}

fn options(p: &Problem) -> AttnOptions {
    AttnOptions::default().with_backend("flash-cpu").with_causal(p.causal).with_window(p.window)
}

#[test]
fn matches_candle_matmul_softmax_and_direct_calls_in_every_layout() {
    let mut checked = 0;
    for case in common::shape_table() {
        for dtype in DType::ALL {
            let p = case.problem.clone().with_dtype(dtype);
            let (q, k, v) = common::qkv(&p, 7);
            let (qs, ks) = ((p.batch, p.heads, p.seq_q, p.head_dim), (p.batch, p.kv_heads, p.seq_k, p.head_dim));
            let (cq, ck, cv) = (to_candle(&q, qs), to_candle(&k, ks), to_candle(&v, ks));
            let opts = options(&p);
            let name = format!("{} {dtype}", case.name);

            let got = attnkit::candle::attention(&cq, &ck, &cv, &opts).unwrap();
            assert_eq!(got.dims(), cq.dims(), "{name}");
            assert_eq!(got.dtype(), cq.dtype(), "{name}: output dtype follows the input");
            let got = to_f32_vec(&got);

            // Against candle's matmul-softmax-matmul.
            let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            let want = oracle(&args);
            let tol = exact_tolerance(&args, &want, dtype);
            let reference = candle_reference(&p, &cq, &ck, &cv);
            let candle_err = compare(&reference, &want).max_abs;
            let diff = reference.iter().zip(&got).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
            assert!(
                diff <= tol.bound + candle_err,
                "{name}: |attnkit − candle| = {diff:.3e} > {:.3e} + {candle_err:.3e}",
                tol.bound
            );

            // Bitwise the direct call, rounded once to the input dtype.
            let direct = attnkit::backend("flash-cpu").unwrap().forward(&args, false).unwrap().out;
            let direct = attnkit::Tensor::from_f32(&direct, dtype).to_f32();
            assert!(same_bits(&got, &direct), "{name}: (B,H,N,D) differs from the direct call");

            // (B, N, H, D) contiguous in, (B, N, H, D) out.
            let bnhd = |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap();
            let o =
                attnkit::candle::attention(&bnhd(&cq), &bnhd(&ck), &bnhd(&cv), &opts.clone().with_layout(Layout::Bnhd))
                    .unwrap();
            assert_eq!(o.dims(), bnhd(&cq).dims(), "{name}");
            assert!(same_bits(&to_f32_vec(&o.transpose(1, 2).unwrap()), &direct), "{name}: (B,N,H,D) differs");

            // Strided (B, H, N, D) views: a transpose of (B, N, H, D) storage, and a narrow of
            // a wider head dim (offset 1).
            let view = |t: &Tensor| bnhd(t).transpose(1, 2).unwrap();
            let o = attnkit::candle::attention(&view(&cq), &view(&ck), &view(&cv), &opts).unwrap();
            assert!(same_bits(&to_f32_vec(&o), &direct), "{name}: transposed view differs");
            let narrow = |t: &Tensor| Tensor::cat(&[t, t, t], 3).unwrap().narrow(3, p.head_dim, p.head_dim).unwrap();
            let o = attnkit::candle::attention(&narrow(&cq), &narrow(&ck), &narrow(&cv), &opts).unwrap();
            assert!(same_bits(&to_f32_vec(&o), &direct), "{name}: narrowed view differs");
            checked += 1;
        }
    }
    assert_eq!(checked, common::shape_table().len() * DType::ALL.len());
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Each bad input and a fragment its error must contain.
#[test]
fn bad_inputs_give_errors() {
    let dev = Device::Cpu;
    let t = |shape: &[usize], dtype: CDType| Tensor::zeros(shape, dtype, &dev).unwrap();
    let f = CDType::F32;
    let opts = AttnOptions::default();
    let cases: Vec<(&str, [Tensor; 3], AttnOptions, &str)> = vec![
        (
            "f64",
            [t(&[1, 2, 4, 8], CDType::F64), t(&[1, 2, 4, 8], CDType::F64), t(&[1, 2, 4, 8], CDType::F64)],
            opts.clone(),
            "f32, f16 or bf16",
        ),
        (
            "mixed dtypes",
            [t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], CDType::F16), t(&[1, 2, 4, 8], f)],
            opts.clone(),
            "share a dtype",
        ),
        ("rank 3", [t(&[2, 4, 8], f), t(&[2, 4, 8], f), t(&[2, 4, 8], f)], opts.clone(), "rank 4"),
        (
            "head dims",
            [t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 16], f), t(&[1, 2, 4, 16], f)],
            opts.clone(),
            "head dim differs",
        ),
        ("kv heads", [t(&[1, 3, 4, 8], f), t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], f)], opts.clone(), "multiple of H_kv"),
        ("k vs v", [t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], f), t(&[1, 2, 5, 8], f)], opts.clone(), "must match"),
        (
            "unknown backend",
            [t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], f)],
            opts.clone().with_backend("nope"),
            "unknown backend",
        ),
        (
            "bad scale",
            [t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], f), t(&[1, 2, 4, 8], f)],
            opts.clone().with_scale(-1.0),
            "scale",
        ),
    ];
    for (name, [q, k, v], o, want) in cases {
        let err = attnkit::candle::attention(&q, &k, &v, &o).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: `{err}` lacks `{want}`");
    }
}

/// candle's matmul → softmax → matmul as a differentiable tensor (no empty-band rows allowed).
fn candle_reference_tensor(p: &Problem, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let g = p.group_size();
    let expand = |t: &Tensor| {
        t.unsqueeze(2)
            .unwrap()
            .expand((p.batch, p.kv_heads, g, p.seq_k, p.head_dim))
            .unwrap()
            .reshape((p.batch, p.heads, p.seq_k, p.head_dim))
            .unwrap()
    };
    let (k, v) = (expand(k), expand(v));
    let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * p.scale as f64).unwrap();
    let mut mask = vec![f32::NEG_INFINITY; p.seq_q * p.seq_k];
    for i in 0..p.seq_q {
        let (lo, hi) = p.key_range(i);
        assert!(lo < hi, "the differentiable reference needs every row to see a key");
        mask[i * p.seq_k + lo..i * p.seq_k + hi].fill(0.0);
    }
    let mask = Tensor::from_vec(mask, (p.seq_q, p.seq_k), &Device::Cpu).unwrap();
    let s = s.broadcast_add(&mask).unwrap();
    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
    let prob = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    prob.matmul(&v.contiguous().unwrap()).unwrap()
}

/// The door is differentiable: candle's backprop through `attention` gives the gradients of
/// candle's own matmul-softmax autograd (f32, both layouts, GQA, causal, N_q ≠ N_k), and for
/// bf16 inputs gradients of the inputs' dtype and shape.
#[test]
fn gradients_match_candle_autograd_in_both_layouts() {
    use candle_core::Var;
    let mut checked = 0;
    for p in [
        Problem::new(2, 4, 37, 32).with_kv_heads(2).with_causal(true),
        Problem::new(1, 2, 20, 16).with_seq_k(45),
        Problem::new(1, 4, 64, 64).with_kv_heads(1).with_seq_k(80).with_causal(true),
    ] {
        let (q, k, v) = common::qkv(&p, 3);
        let shape = |h: usize, n: usize| (p.batch, h, n, p.head_dim);
        let w = to_candle(&common::randn(p.out_len(), 4, DType::F32), shape(p.heads, p.seq_q));
        let (qv, kv, vv) = (
            Var::from_tensor(&to_candle(&q, shape(p.heads, p.seq_q))).unwrap(),
            Var::from_tensor(&to_candle(&k, shape(p.kv_heads, p.seq_k))).unwrap(),
            Var::from_tensor(&to_candle(&v, shape(p.kv_heads, p.seq_k))).unwrap(),
        );
        let reference = candle_reference_tensor(&p, qv.as_tensor(), kv.as_tensor(), vv.as_tensor());
        let want = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            let swap = |t: &Tensor| if layout == Layout::Bnhd { t.transpose(1, 2).unwrap() } else { t.clone() };
            let (ql, kl, vl) = (swap(qv.as_tensor()), swap(kv.as_tensor()), swap(vv.as_tensor()));
            let out = attnkit::candle::attention(&ql, &kl, &vl, &options(&p).with_layout(layout)).unwrap();
            let got = (swap(&out) * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("dq", &qv), ("dk", &kv), ("dv", &vv)] {
                let (g, r) = (to_f32_vec(got.get(var).unwrap()), to_f32_vec(want.get(var).unwrap()));
                let scale = r.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                let err = g.iter().zip(&r).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 2e-5 * scale, "{p} {layout:?} {name}: max|attnkit − candle| {err:e} (scale {scale})");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
    // bf16 inputs: gradients come back in bf16, in the inputs' (B, N, H, D) shape.
    let p = Problem::new(1, 2, 16, 32).with_dtype(DType::BF16);
    let (q, k, v) = common::qkv(&p, 5);
    let s = (1, 16, 2, 32);
    let vars = [&q, &k, &v].map(|t| {
        Var::from_tensor(&to_candle(t, (1, 2, 16, 32)).transpose(1, 2).unwrap().contiguous().unwrap()).unwrap()
    });
    let opts = options(&p).with_layout(Layout::Bnhd);
    let out = attnkit::candle::attention(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), &opts).unwrap();
    let grads = out.to_dtype(CDType::F32).unwrap().sum_all().unwrap().backward().unwrap();
    for var in &vars {
        let g = grads.get(var).unwrap();
        assert_eq!((g.dtype(), g.dims()), (CDType::BF16, &[s.0, s.1, s.2, s.3][..]));
    }
}

/// Paged decode through candle: pages in candle tensors (shuffled block table, f32 and bf16,
/// (B, N, H, D) and (B, H, N, D) queries) give bitwise the output of attnkit's own `KvCache`
/// holding the same tokens under the same table (which tests/kvcache.rs holds to the f64
/// oracle); `kvcache_attention` on that cache too; bad tables and caches are errors.
#[test]
fn paged_decode_matches_the_kv_cache() {
    use attnkit::kvcache::{AppendOptions, KvCache, KvDType};
    use attnkit::seeded::normal_values;
    let (b, h, hkv, d, ps, mp, nq) = (2, 8, 2, 32, 16, 4, 3);
    let lens = [37usize, 50];
    let table: Vec<i32> = vec![6, 1, 4, 7, 0, 5, 2, 3];
    let num_pages = 9;
    for (kdt, cdt) in [(KvDType::F32, CDType::F32), (KvDType::BF16, CDType::BF16)] {
        let mut cache = KvCache::paged(b, hkv, d, ps, num_pages, mp, table.clone(), kdt).unwrap();
        let mut kp = vec![0.0f32; num_pages * ps * hkv * d];
        let mut vp = kp.clone();
        for (i, &n) in lens.iter().enumerate() {
            let (kn, vn) = (normal_values(hkv * n * d, 2 * i as u64), normal_values(hkv * n * d, 2 * i as u64 + 1));
            cache.append(&kn, &vn, n, &AppendOptions { cache_batch_idx: Some(&[i]), rotary: None }).unwrap();
            for (g, t) in (0..hkv).flat_map(|g| (0..n).map(move |t| (g, t))) {
                let row = ((table[i * mp + t / ps] as usize * ps + t % ps) * hkv + g) * d;
                kp[row..row + d].copy_from_slice(&kn[(g * n + t) * d..(g * n + t + 1) * d]);
                vp[row..row + d].copy_from_slice(&vn[(g * n + t) * d..(g * n + t + 1) * d]);
            }
        }
        let pages = |x: Vec<f32>| Tensor::from_vec(x, (num_pages, ps, hkv, d), &Device::Cpu).unwrap().to_dtype(cdt);
        let (kc, vc) = (pages(kp).unwrap(), pages(vp).unwrap());
        let bt = Tensor::from_vec(table.iter().map(|&x| x as i64).collect::<Vec<_>>(), (b, mp), &Device::Cpu).unwrap();
        let sl = Tensor::from_vec(lens.iter().map(|&x| x as u32).collect::<Vec<_>>(), b, &Device::Cpu).unwrap();
        // q rounded to the dtype first, so the cache's f32 query is the candle query exactly.
        let q_bhnd = Tensor::from_vec(normal_values(b * h * nq * d, 9), (b, h, nq, d), &Device::Cpu)
            .unwrap()
            .to_dtype(cdt)
            .unwrap();
        let p = Problem::new(b, h, nq, d).with_kv_heads(hkv).with_causal(true);
        let mut want = vec![0.0f32; p.out_len()];
        cache.attend(&p, &to_f32_vec(&q_bhnd), None, &mut want, None).unwrap();
        let want = to_f32_vec(&Tensor::from_vec(want, (b, h, nq, d), &Device::Cpu).unwrap().to_dtype(cdt).unwrap());
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            let opts = AttnOptions::default().with_causal(true).with_layout(layout);
            let q = if layout == Layout::Bnhd { q_bhnd.transpose(1, 2).unwrap() } else { q_bhnd.clone() };
            let back = |o: Tensor| {
                assert_eq!((o.dims(), o.dtype()), (q.dims(), cdt));
                to_f32_vec(&if layout == Layout::Bnhd { o.transpose(1, 2).unwrap() } else { o })
            };
            let got = back(attnkit::candle::paged_attention(&q, &kc, &vc, &bt, &sl, &opts).unwrap());
            assert!(same_bits(&got, &want), "{cdt:?} {layout:?}: paged_attention differs from KvCache::attend");
            let got = back(attnkit::candle::kvcache_attention(&q, &cache, &opts).unwrap());
            assert!(same_bits(&got, &want), "{cdt:?} {layout:?}: kvcache_attention differs from KvCache::attend");
        }
        let opts = AttnOptions::default().with_layout(Layout::Bhnd);
        let paged = |k: &Tensor, bt: &Tensor, sl: &Tensor| {
            attnkit::candle::paged_attention(&q_bhnd, k, &vc, bt, sl, &opts).unwrap_err().to_string()
        };
        let bad = Tensor::from_vec(vec![6i64, 9, 4, 7, 0, 5, 2, 3], (b, mp), &Device::Cpu).unwrap();
        assert!(paged(&kc, &bad, &sl).contains("block_table[0][1] = 9"), "{}", paged(&kc, &bad, &sl));
        let long = Tensor::from_vec(vec![65u32, 3], b, &Device::Cpu).unwrap();
        assert!(paged(&kc, &bt, &long).contains("out of range (capacity 64)"), "{}", paged(&kc, &bt, &long));
        let strided = kc.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
        assert!(paged(&strided, &bt, &sl).contains("must be contiguous"), "{}", paged(&strided, &bt, &sl));
        let other = kc.to_dtype(if cdt == CDType::F32 { CDType::F16 } else { CDType::F32 }).unwrap();
        assert!(paged(&other, &bt, &sl).contains("must share shape and dtype"));
    }
}
