//! Criterion bench of the backward pass: `flash-cpu` (FlashAttention-2's algorithm) and `sdpa`
//! (the materialized textbook backward) at D = 64, H = 8, B = 1, f32, non-causal and causal,
//! N ∈ {256, 1024} (more with `ATTNKIT_BWD_BENCH_NS=256,1024,4096`). One group per
//! configuration, one id per (backend, N); each iteration is one backward from a saved forward
//! (O, LSE) and a seeded dO, into preallocated gradients. A backend whose backward refuses the
//! problem ([`attnkit::bench::backward::backward_refusal`]) is left out before any input is made.
//!
//! `Throughput::Elements` is the backward's FLOPs by FlashAttention's convention, 2.5 ×
//! `Problem::flops()` (4·D per allowed pair), so criterion's "elements/s" reads as the same
//! backward FLOP/s `attnkit bench --backward` prints.

use attnkit::alloc_counter::CountingAllocator;
use attnkit::bench::backward::{backward_flops, backward_refusal, seeded_d_out};
use attnkit::bench::plan::{DIM, HEADS, SEED};
use attnkit::{AttnArgs, Grads, Problem, Saved};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

const BACKENDS: [&str; 2] = ["flash-cpu", "sdpa"];

/// N values: the default keeps a run short on a shared 2-core machine.
fn ns() -> Vec<usize> {
    let env = std::env::var("ATTNKIT_BWD_BENCH_NS").unwrap_or_default();
    let parsed: Vec<usize> = env.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    if parsed.is_empty() { vec![256, 1024] } else { parsed }
}

fn backward(c: &mut Criterion) {
    let backends: Vec<_> = BACKENDS.iter().filter_map(|n| attnkit::backend(n).ok()).collect();
    for causal in [false, true] {
        let mut group = c.benchmark_group(if causal { "backward_causal_d64_h8" } else { "backward_noncausal_d64_h8" });
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
        for n in ns() {
            let p = Problem::new(1, HEADS, n, DIM).with_causal(causal);
            let mut inputs = None;
            for b in &backends {
                if let Some(why) = backward_refusal(b.as_ref(), &p) {
                    eprintln!("{} at N={n}: skipped ({why})", b.name());
                    continue;
                }
                let (q, k, v) = inputs.get_or_insert_with(|| attnkit::seeded::normal_qkv(&p, SEED));
                let Ok(args) = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()) else {
                    continue;
                };
                let d_out = seeded_d_out(&p, SEED);
                let fwd = match b.forward(&args, true) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("{} at N={n}: forward failed: {e}", b.name());
                        continue;
                    }
                };
                let lse = fwd.lse.unwrap_or_default();
                let saved = Saved { out: &fwd.out, lse: &lse, d_out: &d_out };
                let mut grads = Grads::zeros(&p, false);
                if let Err(e) = b.backward_into(&args, &saved, &mut grads.as_mut()) {
                    eprintln!("{} at N={n}: backward failed: {e}", b.name());
                    continue;
                }
                group.throughput(Throughput::Elements(backward_flops(&p) as u64));
                group.bench_function(BenchmarkId::new(b.name(), n), |bench| {
                    bench.iter(|| {
                        b.backward_into(black_box(&args), &saved, &mut grads.as_mut()).map(|_| black_box(grads.dq[0]))
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, backward);
criterion_main!(benches);
