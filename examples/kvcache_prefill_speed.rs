//! Chunked prefill onto a KV cache: N_NEW new tokens attend to an f32 cache of N_K keys
//! (causal, bottom-right), contiguous and paged 16, beside `flash-cpu` on the same problem as
//! plain `(B, H, N, D)` tensors, against the f32 GEMM ceiling measured in the same run.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example kvcache_prefill_speed -- [N_NEW] [N_K] [REPS]
//! ```
//! Defaults 512 new tokens, 32768 keys, 3 reps; H = 32, H_kv = 8, D = 128. The variants run
//! alternately, rep by rep; figures are medians. `gflops` counts 4·D flops per allowed
//! (query, key) pair and head; `frac_gemm` divides it by the GEMM ceiling (`sgemm` 2048³,
//! measured before and after the variants, the higher used).

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::bench::{gemm_ceiling, median};
use attnkit::kvcache::{AppendOptions, KvCache, KvDType};
use attnkit::{Attention, AttnArgs, Problem, seeded::normal_values};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|x| x.parse().ok()).collect();
    let (nq, nk, reps) = (
        args.first().copied().unwrap_or(512),
        args.get(1).copied().unwrap_or(32768),
        args.get(2).copied().unwrap_or(3),
    );
    let (h, hkv, d) = (32, 8, 128);
    let p = Problem::new(1, h, nq, d).with_kv_heads(hkv).with_causal(true).with_seq_k(nk);
    let (k, v) = (normal_values(p.kv_len(), 1), normal_values(p.kv_len(), 2));
    let q = normal_values(p.q_len(), 3);
    let caches: Vec<(&str, KvCache)> = [("contiguous-f32", None), ("paged16-f32", Some(16))]
        .into_iter()
        .map(|(name, page)| {
            let mut c = match page {
                None => KvCache::contiguous(1, hkv, d, nk, KvDType::F32),
                Some(ps) => {
                    let mp = nk.div_ceil(ps);
                    KvCache::paged(
                        1,
                        hkv,
                        d,
                        ps,
                        mp,
                        mp,
                        (0..mp).map(|i| ((i * 7919) % mp) as i32).collect(),
                        KvDType::F32,
                    )
                }
            }
            .expect("cache");
            // The cache takes (B, H_kv, N, D) rows: the same K/V as flash-cpu's tensors.
            c.append(&k, &v, nk, &AppendOptions::default()).expect("append");
            (name, c)
        })
        .collect();
    let gemm = || gemm_ceiling(2048, 3).expect("gemm ceiling").gflops;
    let g0 = gemm();
    let flash = FlashCpu::new();
    let mut out = vec![0.0f32; p.out_len()];
    let mut times = vec![Vec::new(); caches.len() + 1];
    for rep in 0..=reps {
        for (i, (_, c)) in caches.iter().enumerate() {
            let t = Instant::now();
            c.attend(&p, &q, None, &mut out, None).expect("attend");
            if rep > 0 {
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
        let t = Instant::now();
        let a = AttnArgs::new(&p, q.as_slice(), k.as_slice(), v.as_slice()).expect("args");
        flash.forward_into(&a, &mut out, None).expect("flash-cpu");
        if rep > 0 {
            times[caches.len()].push(t.elapsed().as_secs_f64());
        }
    }
    let ceiling = g0.max(gemm());
    println!(
        "{{\"ceiling\":\"gemm\",\"size\":2048,\"gflops\":{ceiling:.1},\"threads\":{}}}",
        rayon::current_num_threads()
    );
    let flops = 4.0 * (h * d) as f64 * p.allowed_pairs_per_head() as f64;
    let names = caches.iter().map(|(n, _)| *n).chain(["flash-cpu-bhnd-f32"]);
    for (name, t) in names.zip(&times) {
        let t = median(t);
        let gf = flops / t / 1e9;
        println!(
            "{{\"variant\":\"{name}\",\"n_new\":{nq},\"n_k\":{nk},\"ms\":{:.1},\"gflops\":{gf:.1},\"frac_gemm\":{:.3}}}",
            t * 1e3,
            gf / ceiling
        );
    }
}
