//! The AVX512_BF16 prefill kernel (whole-head packing of bf16 pairs, `vdpbf16ps`) forced on
//! (`Isa::Avx512Bf16`) and off (`Isa::Avx512`) over the shared shape table in bf16: both inside
//! the bf16 tolerance rule (`validate::exact_tolerance`), and different from each other on every
//! shape with more than one key per row (so the bf16 kernel really ran).

mod common;

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::simd::Isa;
use attnkit::validate::{compare, exact_tolerance, oracle};
use attnkit::{Attention, AttnArgs, DType};
use common::{qkv, shape_table};

#[test]
fn bf16_prefill_kernel_forced_on_and_off() {
    if !Isa::Avx512Bf16.is_available() {
        assert!(FlashCpu::with_isa(Isa::Avx512Bf16).is_err());
        println!("no AVX512_BF16 on this CPU: only the refusal was checked");
        return;
    }
    let (on, off) = (FlashCpu::with_isa(Isa::Avx512Bf16).unwrap(), FlashCpu::with_isa(Isa::Avx512).unwrap());
    let (mut worst, mut checked, mut differed) = (0.0f64, 0, 0);
    for case in shape_table() {
        let p = case.problem.clone().with_dtype(DType::BF16);
        if attnkit::tiled::decode_applies(&p) {
            continue; // the decode strategy has its own bf16 kernel (tests/decode.rs)
        }
        let (q, k, v) = qkv(&p, 31);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let want = oracle(&args);
        let tol = exact_tolerance(&args, &want, DType::BF16);
        let a = on.forward(&args, false).unwrap().out;
        let b = off.forward(&args, false).unwrap().out;
        for (what, got) in [("bf16 kernel", &a), ("f32 path", &b)] {
            let e = compare(got, &want);
            assert!(e.within(tol.bound), "{} {what}: {e:?} over {:.3e}", case.name, tol.bound);
        }
        worst = worst.max(compare(&a, &want).max_abs / tol.bound);
        checked += 1;
        differed += usize::from(a != b);
    }
    println!("bf16 prefill kernel: {checked} shapes, worst error / bound = {worst:.3}");
    assert!(checked >= 15, "only {checked} shapes took the prefill path");
    assert!(differed + 2 >= checked, "the bf16 kernel matched the f32 path on {} shapes", checked - differed);
}
