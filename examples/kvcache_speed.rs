//! KV-cache decode speed: contiguous vs paged (16, 256) f32, and bf16 / int8 caches, side by
//! side with the streaming-read ceiling measured in the same run.
//!
//! ```text
//! cargo run --release --example kvcache_speed -- [N_K] [REPS]    # default 32768 keys, 7 reps
//! ```
//! One decode step (N_q = 1, H = 32, H_kv = 8, D = 128, causal) over a cache of N_K keys; the
//! variants run alternately, rep by rep, so machine noise hits them alike; figures are medians.
//! `gb_s` counts the bytes each variant actually reads (K and V rows of its dtype, int8 scales
//! included, plus Q and O); `frac_bw` divides it by `ceiling::bandwidth_ceiling` measured
//! before and after (the lower is used); `time_vs_contiguous` is the variant's time over
//! contiguous f32's. The last row is `flash-cpu`'s decode on plain `(B, H_kv, N, D)` f32
//! tensors (no cache), the path the cache's layout is compared with. Threads: rayon's pool (`RAYON_NUM_THREADS=2` for the issue's setting).

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::bench::median;
use attnkit::ceiling::{BANDWIDTH_BUFFER_BYTES, bandwidth_ceiling};
use attnkit::kvcache::{AppendOptions, KvCache, KvDType, KvLayout};
use attnkit::{Attention, AttnArgs, Problem, seeded::normal_values};
use std::time::Instant;

/// A cache of `nk` keys of random K/V (appended in pieces of 4096 tokens).
fn cache(layout: KvLayout, dtype: KvDType, hkv: usize, d: usize, nk: usize) -> KvCache {
    let mut c = match layout {
        KvLayout::Contiguous => KvCache::contiguous(1, hkv, d, nk, dtype),
        KvLayout::Paged { page_size } => {
            let mp = nk.div_ceil(page_size);
            // Pages in a scattered order: page i of the sequence is page (i·7919) mod mp.
            let table = (0..mp).map(|i| ((i * 7919) % mp) as i32).collect();
            KvCache::paged(1, hkv, d, page_size, mp, mp, table, dtype)
        }
    }
    .expect("cache");
    let step = 4096;
    for s in (0..nk).step_by(step) {
        let n = step.min(nk - s);
        let k = normal_values(hkv * n * d, 2 * s as u64);
        let v = normal_values(hkv * n * d, 2 * s as u64 + 1);
        c.append(&k, &v, n, &AppendOptions::default()).expect("append");
    }
    c
}

fn bandwidth() -> f64 {
    let c = bandwidth_ceiling(BANDWIDTH_BUFFER_BYTES, 6).expect("ceiling");
    println!(
        "{{\"ceiling\":\"bandwidth\",\"bytes\":{},\"threads\":{},\"gb_s\":{:.2}}}",
        c.bytes, c.threads, c.gb_per_s
    );
    c.gb_per_s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nk: usize = args.first().and_then(|x| x.parse().ok()).unwrap_or(32768);
    let reps: usize = args.get(1).and_then(|x| x.parse().ok()).unwrap_or(7);
    let (h, hkv, d) = (32, 8, 128);
    let p = Problem::new(1, h, 1, d).with_kv_heads(hkv).with_causal(true);
    let variants = [
        ("contiguous-f32", KvLayout::Contiguous, KvDType::F32),
        ("paged16-f32", KvLayout::Paged { page_size: 16 }, KvDType::F32),
        ("paged256-f32", KvLayout::Paged { page_size: 256 }, KvDType::F32),
        ("contiguous-bf16", KvLayout::Contiguous, KvDType::BF16),
        ("contiguous-int8", KvLayout::Contiguous, KvDType::Int8),
        ("paged16-int8", KvLayout::Paged { page_size: 16 }, KvDType::Int8),
    ];
    let bw0 = bandwidth();
    let caches: Vec<KvCache> = variants
        .iter()
        .map(|&(name, l, t)| {
            let t0 = Instant::now();
            let c = cache(l, t, hkv, d, nk);
            // Includes generating the random K/V (the same work for every variant).
            println!("{{\"variant\":\"{name}\",\"fill_ms\":{:.1}}}", t0.elapsed().as_secs_f64() * 1e3);
            c
        })
        .collect();
    let q = normal_values(p.q_len(), 9);
    let mut out = vec![0.0f32; p.out_len()];
    // Reference: flash-cpu's decode on plain (B, H_kv, N, D) f32 tensors, no cache.
    let pk = p.clone().with_seq_k(nk);
    let (k, v) = (normal_values(pk.kv_len(), 1), normal_values(pk.kv_len(), 2));
    let flash = FlashCpu::new();
    let mut times = vec![Vec::new(); variants.len() + 1];
    for rep in 0..=reps {
        for (i, c) in caches.iter().enumerate() {
            let t = Instant::now();
            c.attend(&p, &q, None, &mut out, None).expect("attend");
            if rep > 0 {
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
        let t = Instant::now();
        let args = AttnArgs::new(&pk, q.as_slice(), k.as_slice(), v.as_slice()).expect("args");
        flash.forward_into(&args, &mut out, None).expect("flash-cpu");
        if rep > 0 {
            times[variants.len()].push(t.elapsed().as_secs_f64());
        }
    }
    let bw = bw0.min(bandwidth());
    let base = median(&times[0]);
    let med = |name: &str| variants.iter().position(|v| v.0 == name).map(|i| median(&times[i]));
    if let (Some(b), Some(i)) = (med("contiguous-bf16"), med("contiguous-int8")) {
        println!("{{\"int8_speedup_over_bf16\":{:.3},\"target\":1.7}}", b / i);
    }
    let rows = variants.iter().map(|&(n, _, t)| (n, t)).chain([("flash-cpu-bhnd-f32", KvDType::F32)]);
    for ((name, dtype), t) in rows.zip(&times) {
        let t = median(t);
        let bytes = (2 * nk * hkv * dtype.row_bytes(d) + 2 * p.q_len() * 4) as f64;
        let gbs = bytes / t / 1e9;
        println!(
            "{{\"variant\":\"{name}\",\"n_k\":{nk},\"threads\":{},\"ms\":{:.3},\"gb_s\":{gbs:.2},\"frac_bw\":{:.3},\"time_vs_contiguous\":{:.3}}}",
            rayon::current_num_threads(),
            t * 1e3,
            gbs / bw,
            t / base
        );
    }
}
