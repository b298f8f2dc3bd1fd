//! CPU backends give bitwise identical output across runs and across thread counts (1, 2, 8).
//!
//! Why this holds: every backend fixes the reduction order of each output row independently of
//! how rows are spread over threads (rows, heads and query blocks are the unit of parallelism,
//! never the key loop), and random features/projections are seeded, not drawn per call.

mod common;

use attnkit::{AttnArgs, DType, Device, Problem, Window, backend, backend_names};
use common::qkv;

fn run_in_pool(threads: usize, f: impl FnOnce() -> Vec<f32> + Send) -> Vec<f32> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

#[test]
fn cpu_backends_are_bitwise_deterministic_across_thread_counts() {
    let problems = [
        Problem::new(2, 4, 300, 64).with_kv_heads(2),
        Problem::new(1, 3, 257, 40).with_causal(true).with_dtype(DType::BF16),
        Problem::new(1, 2, 200, 64).with_window(Window::new(31, 31)).with_dtype(DType::F16),
    ];
    let mut checked = std::collections::BTreeSet::new();
    for p in &problems {
        let (q, k, v) = qkv(p, 99);
        let args = AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        for name in backend_names() {
            let b = backend(name).unwrap();
            if b.device() != Device::Cpu || b.availability().is_err() || !b.supports(p) {
                println!("skip {name} for {p}: not a CPU backend, unavailable or unsupported");
                continue;
            }
            checked.insert(name);
            let first = run_in_pool(1, || b.forward(&args, false).unwrap().out);
            for threads in [1, 2, 8] {
                let again = run_in_pool(threads, || b.forward(&args, false).unwrap().out);
                let same = first.iter().zip(&again).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{name}: output with {threads} threads differs bitwise from 1 thread for {p}");
            }
        }
    }
    // Every CPU backend must have been checked on at least one problem: one skipped everywhere
    // (unavailable, or refusing everything) would otherwise pass silently.
    let cpu: std::collections::BTreeSet<_> =
        backend_names().into_iter().filter(|n| backend(n).unwrap().device() == Device::Cpu).collect();
    assert_eq!(checked, cpu, "CPU backends checked vs registered");
}
