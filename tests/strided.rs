//! Row layouts (`attnkit::row_layout`): Q, K, V passed in FlashAttention's (B, N, H, D), or
//! with padded rows (a slice of a packed QKV buffer), give bitwise the same O and LSE as the
//! same data in contiguous (B, H, N, D), on every CPU backend: the tiled ones read the strided
//! rows in place (prefill waves, band segments, decode, with score modifiers), the others through the one gather at
//! their entry. The unused gaps of the strided buffers hold NaN, so a read of any element that
//! is not a row of the tensor would poison a result and fail the bitwise comparison.
//! Bad layouts are refused up front with `AttnError::Strides` naming the tensor.

mod common;

use attnkit::{
    AttnArgs, AttnError, DType, Device, Layouts, PairData, Problem, RowLayout, Tensor, TensorRef, Window, alibi_slopes,
    backend, backend_names,
};
use common::qkv;

/// `t` (contiguous (B, heads, N, D)) written into a NaN-filled buffer of `len` elements at the
/// rows `l` addresses.
fn embed(t: &Tensor, [b, h, n, d]: [usize; 4], l: RowLayout, len: usize) -> Tensor {
    let src = t.to_f32();
    let mut buf = vec![f32::NAN; len];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..n {
                let from = ((bi * h + hi) * n + i) * d;
                let at = l.at(bi, hi, i);
                buf[at..at + d].copy_from_slice(&src[from..from + d]);
            }
        }
    }
    // Exact: every value came from `t`'s dtype, and NaN stays NaN.
    Tensor::from_f32(&buf, t.as_ref().dtype())
}

/// FlashAttention's (B, N, H, D), or (B, N, H, D) rows padded by `pad` elements with `extra`
/// elements between batch entries (what a view into a packed buffer looks like).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bnhd,
    Padded { pad: usize, extra: usize },
}

fn layout(kind: Kind, [_, h, n, d]: [usize; 4]) -> RowLayout {
    let (pad, extra) = match kind {
        Kind::Bnhd => (0, 0),
        Kind::Padded { pad, extra } => (pad, extra),
    };
    let row = h * d + pad;
    RowLayout { batch: n * row + extra, head: d, row }
}

fn shape(p: &Problem, q: bool) -> [usize; 4] {
    if q { [p.batch, p.heads, p.seq_q, p.head_dim] } else { [p.batch, p.kv_heads, p.seq_k, p.head_dim] }
}

/// The strided copies of Q, K, V and their layouts.
fn strided(p: &Problem, (q, k, v): (&Tensor, &Tensor, &Tensor), kind: Kind) -> ([Tensor; 3], Layouts) {
    let (qs, ks) = (shape(p, true), shape(p, false));
    let (ql, kl) = (layout(kind, qs), layout(kind, ks));
    let len = |l: RowLayout, s: [usize; 4]| s[0] * l.batch + 3;
    let t = [embed(q, qs, ql, len(ql, qs)), embed(k, ks, kl, len(kl, ks)), embed(v, ks, kl, len(kl, ks))];
    (t, Layouts { q: Some(ql), k: Some(kl), v: Some(kl) })
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The problems: prefill (whole-head waves), narrow windows (segments for `local`), decode
/// (N_q·group ≤ 16: in-place K/V reads), MHA/GQA/MQA, causal and windows, ragged lengths.
fn problems() -> Vec<(&'static str, Problem)> {
    vec![
        ("prefill_mha", Problem::new(2, 2, 150, 64)),
        ("prefill_gqa_causal", Problem::new(1, 4, 97, 32).with_kv_heads(2).with_seq_k(130).with_causal(true)),
        ("window", Problem::new(2, 2, 200, 40).with_window(Window::new(17, 5))),
        ("decode_gqa", Problem::new(2, 8, 1, 64).with_kv_heads(2).with_seq_k(700)),
        ("decode_mqa_causal", Problem::new(1, 4, 3, 64).with_kv_heads(1).with_seq_k(300).with_causal(true)),
        ("decode_seqused", Problem::new(3, 2, 1, 32).with_seq_k(260).with_seqused_k(vec![260, 5, 0])),
        // Interleaved KV heads (all heads of a task run block by block), N_k not a multiple of
        // the 32-key block, several chunks, per-batch lengths; and MHA.
        (
            "decode_gqa_seqused",
            Problem::new(2, 8, 2, 48).with_kv_heads(4).with_seq_k(1000).with_seqused_k(vec![1000, 37]),
        ),
        ("decode_mha", Problem::new(2, 4, 1, 64).with_seq_k(333)),
        (
            "softcap_alibi_sinks",
            Problem::new(1, 2, 70, 32).with_softcap(2.0).with_alibi(alibi_slopes(2)).with_sinks(vec![0.3, -1.0]),
        ),
    ]
}

#[test]
fn strided_forward_is_bitwise_equal_to_contiguous() {
    let kinds = [Kind::Bnhd, Kind::Padded { pad: 5, extra: 11 }];
    let (mut checked, mut names) = (0, std::collections::BTreeSet::new());
    for (pname, p0) in problems() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let p = p0.clone().with_dtype(dtype);
            let (q, k, v) = qkv(&p, 7);
            let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
            for name in backend_names() {
                let b = backend(name).unwrap();
                if b.device() != Device::Cpu || b.availability().is_err() || !b.supports(&p) {
                    continue;
                }
                let want = b.forward(&args, true).unwrap();
                for kind in kinds {
                    let ([qs, ks, vs], lay) = strided(&p, (&q, &k, &v), kind);
                    let sargs =
                        AttnArgs::new_strided(&p, qs.as_ref(), ks.as_ref(), vs.as_ref(), PairData::default(), lay)
                            .unwrap();
                    let got = b.forward(&sargs, true).unwrap();
                    let what = format!("{name} on {pname} {dtype} {kind:?}");
                    assert_eq!(bits(&got.out), bits(&want.out), "O differs: {what}");
                    assert_eq!(bits(got.lse.as_ref().unwrap()), bits(want.lse.as_ref().unwrap()), "LSE: {what}");
                    checked += 1;
                }
                names.insert(name);
            }
        }
    }
    println!("{checked} strided runs bitwise equal; backends {names:?}");
    for must in ["flash-cpu", "local", "auto", "reference", "sdpa"] {
        assert!(names.contains(must), "{must} never ran (ran: {names:?})");
    }
}

/// The backward gathers strided inputs once: same gradients as the contiguous call.
#[test]
fn strided_backward_matches_contiguous() {
    let p = Problem::new(2, 4, 40, 32).with_kv_heads(2).with_seq_k(50).with_causal(true);
    let (q, k, v) = qkv(&p, 3);
    let b = backend("flash-cpu").unwrap();
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let fwd = b.forward(&args, true).unwrap();
    let lse = fwd.lse.unwrap();
    let d_out = common::randn(p.out_len(), 9, DType::F32).to_f32();
    let want = b.backward(&args, &fwd.out, &lse, &d_out, false).unwrap();
    let ([qs, ks, vs], lay) = strided(&p, (&q, &k, &v), Kind::Bnhd);
    let sargs = AttnArgs::new_strided(&p, qs.as_ref(), ks.as_ref(), vs.as_ref(), PairData::default(), lay).unwrap();
    let got = b.backward(&sargs, &fwd.out, &lse, &d_out, false).unwrap();
    for (n, g, w) in [("dq", &got.dq, &want.dq), ("dk", &got.dk, &want.dk), ("dv", &got.dv, &want.dv)] {
        assert_eq!(bits(g), bits(w), "{n}");
    }
}

#[test]
fn bad_strides_are_refused_naming_the_tensor() {
    let p = Problem::new(2, 2, 8, 4).with_seq_k(6);
    let (q, k, v) = qkv(&p, 1);
    let bnhd = Layouts::bnhd(&p);
    let big = vec![0.0f32; 10_000];
    // (what, q, k, v, layouts, the tensor the error must name)
    type Case<'a> = (&'a str, TensorRef<'a>, TensorRef<'a>, TensorRef<'a>, Layouts, Option<&'a str>);
    let cases: [Case<'_>; 5] = [
        (
            "q row stride past the end",
            q.as_ref(),
            k.as_ref(),
            v.as_ref(),
            Layouts { q: Some(RowLayout { batch: 64, head: 4, row: 9 }), ..bnhd },
            Some("q"),
        ),
        (
            "v batch stride past the end",
            q.as_ref(),
            k.as_ref(),
            v.as_ref(),
            Layouts { v: Some(RowLayout { batch: 49, head: 4, row: 8 }), ..bnhd },
            Some("v"),
        ),
        (
            "k strides overflow",
            q.as_ref(),
            TensorRef::F32(&big),
            v.as_ref(),
            Layouts { k: Some(RowLayout { batch: usize::MAX / 2, head: 4, row: 8 }), ..bnhd },
            Some("k"),
        ),
        (
            "strides in bytes, not elements",
            TensorRef::F32(&big[..64]),
            k.as_ref(),
            v.as_ref(),
            Layouts { q: Some(RowLayout { batch: 256, head: 16, row: 32 }), ..bnhd },
            Some("q"),
        ),
        (
            "contiguous layout but a shorter buffer",
            TensorRef::F32(&big[..127]),
            k.as_ref(),
            v.as_ref(),
            Layouts { q: Some(RowLayout::bhnd(2, 8, 4)), ..bnhd },
            Some("q"),
        ),
    ];
    for (what, q, k, v, lay, name) in cases {
        let err = AttnArgs::new_strided(&p, q, k, v, PairData::default(), lay).expect_err(what);
        match &err {
            AttnError::Strides { tensor, .. } => assert_eq!(Some(*tensor), name, "{what}: {err}"),
            _ => panic!("{what}: unexpected error {err}"),
        }
    }
    // A (B, N, H, D) layout of exactly the right buffers is accepted, and so is a contiguous
    // one over a longer buffer (a view into a bigger allocation).
    assert!(AttnArgs::new_strided(&p, q.as_ref(), k.as_ref(), v.as_ref(), PairData::default(), bnhd).is_ok());
    let contiguous_q = Layouts { q: Some(RowLayout::bhnd(2, 8, 4)), ..bnhd };
    let long =
        AttnArgs::new_strided(&p, TensorRef::F32(&big), k.as_ref(), v.as_ref(), PairData::default(), contiguous_q);
    assert_eq!(long.expect("accepted").q().len(), p.q_len());
}
