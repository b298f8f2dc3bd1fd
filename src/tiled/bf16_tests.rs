//! The bf16-pair block loop with every score modifier, on CPUs without AVX512_BF16: the portable
//! pair kernel ([`crate::simd::bf16_pairs::PairEmu`]) is forced through the real runner (waves,
//! blocks, modifiers, sinks, packing), at the strip and panel sizes of each available SIMD path,
//! against the f64 oracle under the bf16 tolerance rule (`validate::exact_tolerance`), and the
//! NaN-in-V policy holds on it. (The `vdpbf16ps` kernel itself: `tests/bf16_prefill.rs`.)

use super::bf16::EMULATE;
use crate::backends::flash_cpu::FlashCpu;
use crate::backends::reference::attention_f64;
use crate::seeded::{block_sparse_mask, normal_qkv, normal_values};
use crate::simd::Isa;
use crate::validate::{compare, exact_tolerance};
use crate::{Attention, AttnArgs, AttnOutput, DType, PairData, Problem, Tensor, Window, alibi_slopes};

/// One problem with its bias and mask data.
struct Case {
    name: String,
    p: Problem,
    bias: Option<Tensor>,
    mask: Option<Vec<bool>>,
}

fn case(name: &str, p: Problem) -> Case {
    Case { name: name.into(), p: p.with_dtype(DType::BF16), bias: None, mask: None }
}

/// Seeded booleans, about `frac` of them true.
fn bools(len: usize, seed: u64, frac: f32) -> Vec<bool> {
    // normal_values are N(0, 1): P(x > t) for t = 0.52, −0.52 is 0.3, 0.7.
    let t = if frac < 0.5 { 0.52 } else { -0.52 };
    normal_values(len, seed).iter().map(|&x| x > t).collect()
}

/// Each modifier alone and combined, on a GQA shape with an odd N and on D = 33 (odd pairs).
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (tag, base) in [
        ("gqa", Problem::new(2, 4, 37, 40).with_kv_heads(2).with_seq_k(75)),
        ("d33_causal", Problem::new(1, 2, 50, 33).with_causal(true)),
    ] {
        let (b, h, nq, nk) = (base.batch, base.heads, base.seq_q, base.seq_k);
        let t = |s: &str| format!("{tag}_{s}");
        v.push(case(&t("plain"), base.clone()));
        v.push(case(&t("alibi"), base.clone().with_alibi(alibi_slopes(h))));
        v.push(case(&t("softcap"), base.clone().with_softcap(1.5)));
        v.push(case(&t("alibi_softcap"), base.clone().with_alibi(alibi_slopes(h)).with_softcap(2.0)));
        v.push(case(&t("sinks"), base.clone().with_sinks(normal_values(h, 4))));
        v.push(case(&t("seqused_k"), base.clone().with_seqused_k((0..b).map(|i| nk * (i + 2) / (b + 2)).collect())));
        v.push(case(&t("window"), base.clone().with_window(Window::new(7, 3))));
        let mut c = case(&t("bias_f32_1H"), base.clone().with_bias(1, h));
        c.bias = Some(Tensor::from_f32(&normal_values(h * nq * nk, 5), DType::F32));
        v.push(c);
        let mut c = case(&t("bias_bf16_B1"), base.clone().with_bias(b, 1));
        c.bias = Some(Tensor::from_f32(&normal_values(b * nq * nk, 6), DType::BF16));
        v.push(c);
        let mut c = case(&t("mask_BH"), base.clone().with_mask(b, h));
        c.mask = Some(bools(b * h * nq * nk, 7, 0.7));
        v.push(c);
        let mut c = case(&t("block_mask"), base.clone().with_mask(1, 1));
        c.mask = Some(block_sparse_mask(nq, nk, 8, 0.3, 8));
        v.push(c);
        let all = base.with_alibi(alibi_slopes(h)).with_softcap(3.0).with_sinks(vec![0.5; h]);
        let mut c = case(&t("all"), all.with_bias(1, 1).with_mask(1, h));
        c.bias = Some(Tensor::from_f32(&normal_values(nq * nk, 9), DType::F16));
        c.mask = Some(bools(h * nq * nk, 10, 0.5));
        v.push(c);
    }
    let (cq, ck) = (vec![0, 5, 22, 62, 63], vec![0, 5, 35, 75, 77]);
    let varlen = Problem::new(1, 2, 63, 64).with_seq_k(77).with_varlen(cq, ck).with_causal(true);
    v.push(case("varlen_seqused_alibi", varlen.with_seqused_k(vec![3, 30, 12, 2]).with_alibi(alibi_slopes(2))));
    v
}

/// Runs `b` on `args` with the pair kernel forced (`emulate`) or the f32 path.
fn run(b: &FlashCpu, args: &AttnArgs<'_>, emulate: bool) -> AttnOutput {
    EMULATE.with(|e| e.set(emulate));
    let out = b.forward(args, true);
    EMULATE.with(|e| e.set(false));
    out.expect("runs")
}

/// The SIMD paths whose kernel shapes the emulation runs at (the portable one and the best).
fn paths() -> Vec<FlashCpu> {
    let mut isas = vec![Isa::Scalar, Isa::best()];
    isas.dedup();
    isas.into_iter().map(|i| FlashCpu::with_isa(i).expect("available")).collect()
}

#[test]
fn pair_kernel_with_every_modifier_matches_the_oracle() {
    let (mut checked, mut differed, mut worst) = (0, 0, 0.0f64);
    for c in cases() {
        let (q, k, v) = normal_qkv(&c.p, 21);
        let pair = PairData { bias: c.bias.as_ref().map(|b| b.as_ref()), mask: c.mask.as_deref() };
        let args = AttnArgs::new_with(&c.p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap();
        let (o64, l64) = attention_f64(&args);
        let tol = exact_tolerance(&args, &o64, DType::BF16).bound;
        for b in paths() {
            let got = run(&b, &args, true);
            let e = compare(&got.out, &o64);
            assert!(e.within(tol), "{} on {:?}: {e:?} over {tol:.3e}", c.name, b.isa());
            for (i, (a, w)) in got.lse.expect("asked").iter().zip(&l64).enumerate() {
                let ok =
                    if w.is_infinite() { *a as f64 == *w } else { (*a as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()) };
                assert!(ok, "{} on {:?}: LSE row {i}: {a} vs {w}", c.name, b.isa());
            }
            worst = worst.max(e.max_abs / tol);
            checked += 1;
            // P rounded to bf16 changes the bits: proof the pair kernel ran, not the f32 path.
            differed += usize::from(got.out != run(&b, &args, false).out);
        }
    }
    println!("pair kernel: {checked} runs, worst error / bound = {worst:.3}");
    assert!(checked >= 25 && differed == checked, "{differed} of {checked} runs differed from the f32 path");
}

/// A NaN in V at one key reaches exactly the rows that may see it (band and boolean mask), on
/// the pair kernel: every other row is bitwise unchanged.
#[test]
fn pair_kernel_keeps_a_nan_in_v_in_its_band_and_mask() {
    let p = Problem::new(1, 4, 130, 64).with_kv_heads(2).with_causal(true).with_mask(1, 1).with_dtype(DType::BF16);
    let (nq, nk, d, key) = (p.seq_q, p.seq_k, p.head_dim, 64);
    let mask: Vec<bool> = (0..nq * nk).map(|e| (e / nk / 16 + e % nk / 16) % 3 != 0 || e % 7 == 0).collect();
    for (name, p) in [("mask_causal", p.clone()), ("mask_causal_alibi", p.clone().with_alibi(alibi_slopes(4)))] {
        let (q, k, v) = normal_qkv(&p, 8);
        let mut vd = v.to_f32();
        vd[(nk + key) * d + 3] = f32::NAN; // KV head 1, element 3
        let vbad = Tensor::from_f32(&vd, DType::BF16);
        let pair = PairData { bias: None, mask: Some(&mask) };
        let clean = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), v.as_ref(), pair).unwrap();
        let dirty = AttnArgs::new_with(&p, q.as_ref(), k.as_ref(), vbad.as_ref(), pair).unwrap();
        for b in paths() {
            let (x, y) = (run(&b, &clean, true).out, run(&b, &dirty, true).out);
            let (mut seen, mut unseen) = (0, 0);
            for (r, (x, y)) in x.chunks(d).zip(y.chunks(d)).enumerate() {
                let (h, i) = (r / nq, r % nq);
                let sees = p.kv_head_of(h) == 1 && key <= i && mask[i * nk + key];
                if sees {
                    assert!(y.iter().any(|v| !v.is_finite()), "{name}: row {i} of head {h} sees the key but is finite");
                    seen += 1;
                } else {
                    assert!(x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: row {r} changed");
                    unseen += 1;
                }
            }
            assert!(seen > 20 && unseen > 300, "{name}: {seen} rows saw the key, {unseen} did not");
        }
    }
}

/// (B, H, N, D) data of `shape` rearranged to (B, N, H, D).
fn to_bnhd(t: &Tensor, [_, h, n, d]: [usize; 4]) -> Tensor {
    let x = t.to_f32();
    let mut y = vec![0.0f32; x.len()];
    for (r, row) in x.chunks(d).enumerate() {
        let (bi, hi, i) = (r / (h * n), (r / n) % h, r % n);
        let at = ((bi * n + i) * h + hi) * d;
        y[at..at + d].copy_from_slice(row);
    }
    Tensor::from_f32(&y, DType::BF16)
}

/// The pair packers read (B, N, H, D) rows in place: bitwise the contiguous result.
#[test]
fn pair_kernel_reads_bnhd_rows_in_place() {
    for c in cases().into_iter().filter(|c| c.bias.is_none() && c.mask.is_none()) {
        let p = &c.p;
        let (q, k, v) = normal_qkv(p, 5);
        let (qs, ks) = ([p.batch, p.heads, p.seq_q, p.head_dim], [p.batch, p.kv_heads, p.seq_k, p.head_dim]);
        let (qt, kt, vt) = (to_bnhd(&q, qs), to_bnhd(&k, ks), to_bnhd(&v, ks));
        let args = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let lay = crate::Layouts::bnhd(p);
        let sargs = AttnArgs::new_strided(p, qt.as_ref(), kt.as_ref(), vt.as_ref(), PairData::default(), lay).unwrap();
        for b in paths() {
            let (want, got) = (run(&b, &args, true), run(&b, &sargs, true));
            assert!(want.out.iter().zip(&got.out).all(|(a, b)| a.to_bits() == b.to_bits()), "{}", c.name);
        }
    }
}
