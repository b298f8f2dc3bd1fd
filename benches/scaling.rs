//! Criterion scaling bench: every registered, available backend over N = 256 … 4096 at
//! D = 64, H = 8, B = 1, non-causal and causal (`reference` only at N ≤ 512: it is the f64
//! oracle and takes seconds beyond that). One group per configuration, one id per
//! (backend, N). `local` gets a (256, 256) window ((256, 0) causal) because it needs one.
//!
//! `Throughput::Elements` is set to `Problem::flops()`: the FLOP count of exact attention over
//! the allowed (unmasked) query–key pairs, 4·D per pair — so criterion's "elements/s" reads as
//! FLOP/s, the same effective rate `attnkit bench` prints, for every backend.
//!
//! CUDA backends are timed with `iter_custom` through `attnkit::bench::device_timing`
//! (device-resident, synchronized); until that hook is wired they fall back to host timing.

use attnkit::alloc_counter::CountingAllocator;
use attnkit::bench::device_timing;
use attnkit::{AttnArgs, Device, Problem, Window};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

const NS: [usize; 5] = [256, 512, 1024, 2048, 4096];

fn scaling(c: &mut Criterion) {
    let backends: Vec<_> = attnkit::list_backends()
        .into_iter()
        .filter(|b| b.unavailable_reason.is_none() && b.name != "auto")
        .filter_map(|b| attnkit::backend(&b.name).ok())
        .collect();
    for causal in [false, true] {
        let mut group = c.benchmark_group(if causal { "causal_d64_h8" } else { "noncausal_d64_h8" });
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
        for n in NS {
            let base = Problem::new(1, 8, n, 64).with_causal(causal);
            let (q, k, v) = attnkit::seeded::normal_qkv(&base, 0);
            for b in &backends {
                if b.name() == "reference" && n > 512 {
                    continue;
                }
                let p = if b.name() == "local" {
                    base.clone().with_window(Window::new(256, if causal { 0 } else { 256 }))
                } else {
                    base.clone()
                };
                if !b.supports(&p) {
                    continue;
                }
                let Ok(args) = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()) else {
                    continue;
                };
                let mut out = vec![0.0f32; p.out_len()];
                if b.forward_into(&args, &mut out, None).is_err() {
                    continue; // memory budget or similar: nothing to time
                }
                group.throughput(Throughput::Elements(p.flops() as u64));
                let id = BenchmarkId::new(b.name(), n);
                if b.device() == Device::Cuda && device_timing(b.as_ref(), &p, 1).is_ok() {
                    group.bench_function(id, |bench| {
                        bench.iter_custom(|iters| {
                            let times = device_timing(b.as_ref(), &p, iters as usize).unwrap_or_default();
                            Duration::from_secs_f64(times.iter().sum())
                        })
                    });
                } else {
                    group.bench_function(id, |bench| {
                        bench.iter(|| b.forward_into(black_box(&args), &mut out, None).map(|_| black_box(out[0])))
                    });
                }
            }
        }
        group.finish();
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
