//! `ATTNKIT_SIMD` naming a path this CPU lacks is refused by every CPU kernel that dispatches
//! on it, the KV cache's decode and chunked prefill included (they once called `Isa::best()`
//! and ignored the override). Its own test binary: the choice is cached once per process.

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::kvcache::{AppendOptions, KvCache, KvDType};
use attnkit::simd::Isa;
use attnkit::{Attention, AttnError, Problem};

#[test]
fn an_override_the_cpu_lacks_is_refused_by_the_kvcache_too() {
    // An ISA this CPU does not have: NEON on x86, AVX2 on aarch64 (every target has one).
    let missing = [Isa::Neon, Isa::Avx2, Isa::Avx512].into_iter().find(|i| !i.is_available()).unwrap();
    // SAFETY: this binary has a single test and nothing else has started threads that read
    // the environment yet.
    unsafe { std::env::set_var("ATTNKIT_SIMD", missing.as_str()) };
    assert!(Isa::selected().is_err());
    assert!(FlashCpu::new().availability().is_err());

    let (hkv, d) = (2, 16);
    let mut c = KvCache::contiguous(1, hkv, d, 64, KvDType::BF16).unwrap();
    let kv = vec![0.5f32; hkv * 40 * d];
    c.append(&kv, &kv, 40, &AppendOptions::default()).unwrap();
    // Decode (one row) and chunked prefill (N_q · group > 16 rows: the tiled path).
    for nq in [1, 20] {
        let p = Problem::new(1, 4, nq, d).with_kv_heads(hkv).with_seq_k(40).with_causal(true);
        let q = vec![0.25f32; p.q_len()];
        let mut out = vec![f32::NAN; p.out_len()];
        match c.attend(&p, &q, None, &mut out, None) {
            Err(AttnError::Unavailable { backend, reason }) => {
                assert_eq!(backend, "kvcache");
                assert!(reason.contains("ATTNKIT_SIMD"), "{reason}");
            }
            other => panic!("N_q = {nq}: expected Unavailable, got {other:?}"),
        }
    }
}
