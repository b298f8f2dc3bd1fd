//! The ndarray door (feature `ndarray`) on the shared shape table (f32, the only dtype it takes):
//! O and LSE bitwise equal to calling the same backend directly, for standard-layout views,
//! (B, N, H, D) views, and views with permuted and negative strides; O within FlashAttention's
//! tolerance of the f64 oracle; bad shapes give the library's errors.

mod common;

use attnkit::interop::{AttnOptions, Layout};
use attnkit::ndarray::attention;
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{AttnArgs, DType};
use ndarray::{Array4, ArrayView4, Axis, s};

fn same_bits<'a>(a: impl IntoIterator<Item = &'a f32>, b: &[f32]) -> bool {
    let a: Vec<f32> = a.into_iter().copied().collect();
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn matches_direct_calls_for_any_strides() {
    let mut checked = 0;
    for case in common::shape_table() {
        let p = case.problem.clone().with_dtype(DType::F32);
        let (q, k, v) = common::qkv(&p, 11);
        let arr = |t: &attnkit::Tensor, h: usize, n: usize| {
            Array4::from_shape_vec((p.batch, h, n, p.head_dim), t.to_f32()).unwrap()
        };
        let (qa, ka, va) = (arr(&q, p.heads, p.seq_q), arr(&k, p.kv_heads, p.seq_k), arr(&v, p.kv_heads, p.seq_k));
        let opts = AttnOptions::default().with_backend("flash-cpu").with_causal(p.causal).with_window(p.window);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let direct = attnkit::backend("flash-cpu").unwrap().forward(&args, true).unwrap();
        let (dout, dlse) = (direct.out, direct.lse.unwrap());
        let name = case.name;

        let got = attention(qa.view(), ka.view(), va.view(), &opts, true).unwrap();
        assert!(same_bits(&got.out, &dout), "{name}: standard layout");
        assert!(same_bits(got.lse.as_ref().unwrap(), &dlse), "{name}: lse");
        let want = oracle(&args);
        let err = compare(got.out.as_slice().unwrap(), &want).max_abs;
        assert!(err <= exact_tolerance(&args, &want, DType::F32).bound, "{name}: error {err:.3e}");

        // (B, N, H, D) storage passed as a (B, N, H, D) view; output comes back (B, N, H, D).
        let bnhd = |a: &Array4<f32>| a.view().permuted_axes([0, 2, 1, 3]).as_standard_layout().into_owned();
        let (qb, kb, vb) = (bnhd(&qa), bnhd(&ka), bnhd(&va));
        let o = attention(qb.view(), kb.view(), vb.view(), &opts.clone().with_layout(Layout::Bnhd), false).unwrap();
        assert!(same_bits(o.out.view().permuted_axes([0, 2, 1, 3]).iter(), &dout), "{name}: (B,N,H,D)");

        // The same storage seen as a (B, H, N, D) view with permuted strides.
        fn t(a: &Array4<f32>) -> ArrayView4<'_, f32> {
            a.view().permuted_axes([0, 2, 1, 3])
        }
        let o = attention(t(&qb), t(&kb), t(&vb), &opts, false).unwrap();
        assert!(same_bits(&o.out, &dout), "{name}: permuted strides");

        // Negative strides: storage reversed along N, viewed back in order.
        let rev = |a: &Array4<f32>| {
            let mut r = a.clone();
            r.invert_axis(Axis(2));
            r.as_standard_layout().into_owned()
        };
        let (qr, kr, vr) = (rev(&qa), rev(&ka), rev(&va));
        fn back(a: &Array4<f32>) -> ArrayView4<'_, f32> {
            a.slice(s![.., .., ..;-1, ..])
        }
        let o = attention(back(&qr), back(&kr), back(&vr), &opts, false).unwrap();
        assert!(same_bits(&o.out, &dout), "{name}: negative strides");
        checked += 1;
    }
    assert_eq!(checked, common::shape_table().len());
}

/// Each bad shape and a fragment its error must contain.
#[test]
fn bad_shapes_give_errors() {
    let z = |b, h, n, d| Array4::<f32>::zeros((b, h, n, d));
    let cases = [
        ("batch", z(1, 2, 4, 8), z(2, 2, 4, 8), z(2, 2, 4, 8), "batch differs"),
        ("head dim", z(1, 2, 4, 8), z(1, 2, 4, 4), z(1, 2, 4, 4), "head dim differs"),
        ("kv heads", z(1, 3, 4, 8), z(1, 2, 4, 8), z(1, 2, 4, 8), "multiple of H_kv"),
        ("k vs v", z(1, 2, 4, 8), z(1, 2, 4, 8), z(1, 2, 3, 8), "must match"),
        ("empty", z(1, 2, 0, 8), z(1, 2, 4, 8), z(1, 2, 4, 8), "seq_q must be ≥ 1"),
    ];
    for (name, q, k, v, want) in cases {
        let err = attention(q.view(), k.view(), v.view(), &AttnOptions::default(), false).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: `{err}` lacks `{want}`");
    }
}
