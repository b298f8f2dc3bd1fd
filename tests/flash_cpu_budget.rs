//! flash-cpu under a tight memory budget: fewer KV heads in flight, then a typed refusal.
//! Its own test binary because the budget is process-wide.

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::budget::set_mem_budget;
use attnkit::{Attention, AttnArgs, AttnError, Problem};

#[test]
fn tight_budget_shrinks_the_wave_then_refuses() {
    // 4 KV heads of 512 keys, D = 64: one packed head is 512·(64+64)·4 = 256 KiB.
    let p = Problem::new(1, 4, 512, 64);
    let q: Vec<f32> = (0..p.q_len()).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let k: Vec<f32> = (0..p.kv_len()).map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5).collect();
    let args = AttnArgs::new(&p, &q, &k, &k).unwrap();
    let full = FlashCpu::new().forward(&args, true).unwrap();

    set_mem_budget(600 << 10); // room for one or two packed heads plus scratch, not four
    let tight = FlashCpu::new().forward(&args, true).unwrap();
    assert_eq!(full.out, tight.out, "the wave size must not change results");

    set_mem_budget(64 << 10); // not even one head
    let err = FlashCpu::new().forward(&args, false).unwrap_err();
    set_mem_budget(0);
    assert!(matches!(err, AttnError::MemoryBudget { .. }), "{err}");
}
