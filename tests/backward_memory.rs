//! The backward's extra memory is O(N·D), never N×N: measured with the counting allocator (its
//! own test binary, since the allocator is process-wide) against the forward's, and the declared
//! `backward_working_bytes` bounds what was measured.

use attnkit::alloc_counter::{CountingAllocator, PeakScope};
use attnkit::{AttnArgs, Grads, Problem, Saved, backend};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[test]
fn backward_extra_memory_is_linear_and_at_most_twice_the_forward() {
    let b = backend("flash-cpu").unwrap();
    for p in [Problem::new(1, 8, 8192, 64), Problem::new(1, 4, 4096, 64).with_kv_heads(1).with_causal(true)] {
        let (q, k, v) = attnkit::seeded::normal_qkv(&p, 1);
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let d_out = attnkit::seeded::normal_values(p.out_len(), 2);
        let (mut out, mut lse) = (vec![0.0f32; p.out_len()], vec![0.0f32; p.lse_len()]);
        let scope = PeakScope::start();
        b.forward_into(&args, &mut out, Some(&mut lse)).unwrap();
        let fwd = scope.peak_extra().expect("the counting allocator is installed");
        let mut g = Grads::zeros(&p, false);
        let scope = PeakScope::start();
        b.backward_into(&args, &Saved { out: &out, lse: &lse, d_out: &d_out }, &mut g.as_mut()).unwrap();
        let bwd = scope.peak_extra().unwrap();
        let declared = b.backward_working_bytes(&p).unwrap();
        let n_by_n = (p.seq_q * p.seq_k * 4) as u64;
        println!(
            "{p}: forward peak {fwd} B, backward peak {bwd} B (declared {declared} B), one N×N f32 matrix {n_by_n} B"
        );
        assert!(bwd <= declared, "{p}: backward peaked at {bwd} B over its declared {declared} B");
        assert!(bwd * 4 < n_by_n, "{p}: backward peak {bwd} B is not small against N×N ({n_by_n} B)");
        if p.kv_heads == 8 {
            assert!(bwd <= 2 * fwd, "{p}: backward {bwd} B > 2 × forward {fwd} B");
        }
    }
    // The shape, N = 65536, D = 64, H = 8, from the declared figures (which the runs above
    // show bound the measured peaks).
    let p = Problem::new(1, 8, 65536, 64);
    let (f, bw) = (b.working_bytes(&p).unwrap(), b.backward_working_bytes(&p).unwrap());
    println!("{p}: declared forward {f} B, backward {bw} B");
    assert!(bw <= 2 * f, "declared backward {bw} B > 2 × forward {f} B at N = 65536");
}
