//! The decode strategy allocates O(chunks·rows·D), not O(N_k·D): measured with the counting
//! allocator (its own test binary, since the allocator is process-wide).

use attnkit::alloc_counter::{CountingAllocator, PeakScope};
use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::{Attention, AttnArgs, DType, Problem};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[test]
fn decode_allocates_per_chunk_not_per_key() {
    // One KV head of 100 000 keys, D = 64: one f32 copy of K alone would be 25.6 MB.
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let p = Problem::new(1, 4, 1, 64).with_kv_heads(1).with_seq_k(100_000).with_causal(true).with_dtype(dtype);
        assert!(attnkit::tiled::decode_applies(&p));
        let (q, k, v) = attnkit::seeded::normal_qkv(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let mut out = vec![0.0f32; p.out_len()];
        let mut lse = vec![0.0f32; p.lse_len()];
        let b = FlashCpu::new();
        let scope = PeakScope::start();
        b.forward_into(&args, &mut out, Some(&mut lse)).unwrap();
        let peak = scope.peak_extra().expect("the counting allocator is installed");
        let one_k_copy = (p.kv_len() * 4) as u64;
        // chunks (≤ 16) · rows (4) · (D + 1) floats of partials, plus per-thread block scratch.
        let bound = 16 * 4 * 65 * 4 + rayon::current_num_threads() as u64 * 64 * 1024;
        println!("{dtype}: peak {peak} B, bound {bound} B, one f32 copy of K {one_k_copy} B");
        assert!(peak > 0 && peak <= bound, "{dtype}: decode peaked at {peak} B (bound {bound})");
        assert!(peak * 50 < one_k_copy);
        assert!(b.working_bytes(&p).unwrap() <= bound);
    }
}
