//! Criterion scaling bench over the report's shared sweep plan
//! ([`SweepPlan::scaling_bench`]): every registered, available backend over N = 256 … 4096 at
//! D = 64, H = 8, B = 1, non-causal and causal, with the plan's windows (`local` at w = 256) and
//! its oracle cap (`reference` only at N ≤ 512). One group per configuration, one id per
//! (variant, N). A cell the runner's checks refuse ([`attnkit::bench::refusal`]: unsupported,
//! over the memory budget) is left out before any input is made.
//!
//! `Throughput::Elements` is set to `Problem::flops()`: the FLOP count of exact attention over
//! the allowed (unmasked) query–key pairs, 4·D per pair — so criterion's "elements/s" reads as
//! FLOP/s, the same effective rate `attnkit bench` prints, for every backend.
//!
//! CUDA backends are timed with `iter_custom` through `attnkit::bench::device_timing`
//! (device-resident, synchronized); one whose device timer fails is reported on stderr and timed
//! on the host (transfers included).

use attnkit::alloc_counter::CountingAllocator;
use attnkit::bench::{LazyInputs, SweepPlan, device_timing, plan::SEED, refusal};
use attnkit::inputs::InputFamily;
use attnkit::{AttnArgs, Device};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn scaling(c: &mut Criterion) {
    let plan = SweepPlan::scaling_bench();
    let infos = attnkit::list_backends();
    let available: Vec<&str> =
        infos.iter().filter(|b| b.unavailable_reason.is_none()).map(|b| b.name.as_str()).collect();
    let backends: Vec<_> = plan
        .variants(&available)
        .into_iter()
        .filter_map(|v| attnkit::backend_with(&v.backend, &v.opts).ok().map(|b| (v, b)))
        .collect();
    for causal in [false, true] {
        let mut group = c.benchmark_group(if causal { "causal_d64_h8" } else { "noncausal_d64_h8" });
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
        for &n in &plan.ns {
            let base = plan.base_problem(n, causal);
            let inputs = LazyInputs::new(&base, InputFamily::Normal, SEED);
            for (var, b) in &backends {
                let p = var.problem(&base);
                if refusal(b.as_ref(), &p, plan.plan_skip(var, n).as_deref()).is_some() {
                    continue;
                }
                let (q, k, v) = inputs.get();
                let Ok(args) = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()) else {
                    continue;
                };
                let mut out = vec![0.0f32; p.out_len()];
                if let Err(e) = b.forward_into(&args, &mut out, None) {
                    eprintln!("{} at N={n}: {e}", var.label);
                    continue;
                }
                group.throughput(Throughput::Elements(p.flops() as u64));
                let id = BenchmarkId::new(&var.label, n);
                let device_timed = b.device() == Device::Cuda
                    && match device_timing(b.as_ref(), &p, 1) {
                        Ok(_) => true,
                        Err(e) => {
                            eprintln!(
                                "{}: device timing failed ({e}); timing on the host, transfers included",
                                var.label
                            );
                            false
                        }
                    };
                if device_timed {
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
