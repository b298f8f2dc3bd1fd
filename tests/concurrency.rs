//! One backend instance shared by many threads gives the same results as sequential use.

mod common;

use attnkit::{AttnArgs, Problem, Tensor, backend, backend_names};
use common::qkv;
use std::sync::Arc;

#[test]
fn shared_instance_matches_sequential_use() {
    let problems: Vec<Problem> =
        (0..6).map(|i| Problem::new(1, 2, 60 + 13 * i, 32).with_causal(i % 2 == 0).with_kv_heads(1 + i % 2)).collect();
    let inputs: Vec<(Tensor, Tensor, Tensor)> = problems.iter().enumerate().map(|(i, p)| qkv(p, i as u64)).collect();
    let problems = &problems;
    let inputs = &inputs;
    let mut checked = std::collections::BTreeSet::new();
    for name in backend_names() {
        let b: Arc<dyn attnkit::Attention> = Arc::from(backend(name).unwrap());
        if b.availability().is_err() {
            println!("skip {name}: unavailable");
            continue;
        }
        let run = |i: usize| -> Option<Vec<f32>> {
            let p = &problems[i];
            if !b.supports(p) {
                return None;
            }
            let (q, k, v) = &inputs[i];
            Some(b.forward(&AttnArgs::new(p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap(), true).unwrap().out)
        };
        let sequential: Vec<Option<Vec<f32>>> = (0..problems.len()).map(run).collect();
        if sequential.iter().any(Option::is_some) {
            checked.insert(name);
        }
        // 8 OS threads, each running every problem in a different order, all at once.
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let run = &run;
                    s.spawn(move || {
                        (0..problems.len()).map(|j| (j + t) % problems.len()).map(|i| (i, run(i))).collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for (i, got) in h.join().expect("worker thread panicked") {
                    let same = match (&got, &sequential[i]) {
                        (Some(a), Some(b)) => a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        (None, None) => true,
                        _ => false,
                    };
                    assert!(same, "{name}: concurrent result for problem {i} differs from sequential");
                }
            }
        });
    }
    // Every CPU backend must have run at least one problem: one skipped everywhere would
    // otherwise pass silently.
    let cpu: std::collections::BTreeSet<_> =
        backend_names().into_iter().filter(|n| backend(n).unwrap().device() == attnkit::Device::Cpu).collect();
    assert_eq!(checked, cpu, "CPU backends checked vs registered");
}
