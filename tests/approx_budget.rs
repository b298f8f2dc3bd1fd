//! The approximate backends and the layer check the memory budget before allocating.
//! A separate test binary because the budget is process-wide: no other test runs beside it.

use attnkit::budget::set_mem_budget;
use attnkit::layer::{MhaConfig, MultiHeadAttention};
use attnkit::{AttnArgs, AttnError, Problem, backend};

#[test]
fn approximate_backends_and_layer_refuse_over_budget() {
    let p = Problem::new(1, 2, 64, 16);
    let x = vec![0.1f32; p.q_len()];
    let args = AttnArgs::new(&p, &x, &x, &x).unwrap();
    set_mem_budget(1024);
    let mut failures = Vec::new();
    for name in ["linformer", "performer", "nystrom"] {
        for causal in [false, true] {
            let pc = p.clone().with_causal(causal);
            let args = AttnArgs::new(&pc, &x, &x, &x).unwrap();
            let r = backend(name).unwrap().forward(&args, false);
            // Linformer and Nyström refuse causal problems before anything is sized.
            let refuses = name != "performer" && causal;
            let ok = match r {
                Err(AttnError::Unsupported { .. }) => refuses,
                Err(AttnError::MemoryBudget { .. }) => !refuses,
                _ => false,
            };
            if !ok {
                failures.push(format!("{name} causal={causal}: {:?}", r.map(|_| ())));
            }
        }
    }
    let layer = MultiHeadAttention::new(MhaConfig::new(32, 2).unwrap(), backend("performer").unwrap(), 0).unwrap();
    let r = layer.forward(&vec![0.0; 64 * 32], 1, 64);
    if !matches!(r, Err(AttnError::MemoryBudget { .. })) {
        failures.push(format!("layer: {:?}", r.map(|_| ())));
    }
    set_mem_budget(0);
    // With the budget restored everything runs.
    for name in ["linformer", "performer", "nystrom"] {
        assert!(backend(name).unwrap().forward(&args, false).is_ok(), "{name}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
