//! Ring attention's algorithm (`attnkit::dist`) on the in-process thread transport, in the
//! default build: forward and backward against the f64 oracle under FlashAttention's tolerance
//! rule (`exact_tolerance`, `gradient_tolerance`), for P ∈ {1,2,3,4}, both layouts, causal and
//! not, GQA, D ∈ {64,128}, N not divisible by 2P, sinks and softcap; bitwise identical across two
//! runs and between the ring and all-gather schedules; refusals by name. The MPI transport runs
//! the same code (tests/ring_mpi.rs runs it under mpirun).

use attnkit::dist::local::ThreadRing;
use attnkit::dist::ring::{self, Schedule};
use attnkit::dist::{Layout, Shard, ShardPlan, gather_full, gather_kv};
use attnkit::grad::oracle::gradients_f64;
use attnkit::validate::{compare, exact_tolerance, gradient_tolerance, oracle};
use attnkit::{AttnArgs, Problem};

struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dsinks: Option<Vec<f32>>,
}

fn run_ring(p: &Problem, plan: &ShardPlan, schedule: Schedule, q: &[f32], k: &[f32], v: &[f32], d_out: &[f32]) -> Run {
    let per_rank = ThreadRing::run(plan.ranks, |t| {
        let r = attnkit::dist::ring::Transport::rank(t);
        let shard = Shard::from_full(p, plan, r, q, k, v).unwrap();
        let f = ring::forward(t, p, plan, schedule, &shard).unwrap();
        let mut gd = Vec::new();
        for c in &shard.chunks {
            gd.extend(attnkit::dist::slice_rows(d_out, p.batch * p.heads, p.seq_q, p.head_dim, *c));
        }
        let b = ring::backward(t, p, plan, &shard, &f.out, &f.lse, &gd).unwrap();
        (f, b)
    });
    let outs: Vec<Vec<f32>> = per_rank.iter().map(|(f, _)| f.out.clone()).collect();
    let lses: Vec<Vec<f32>> = per_rank.iter().map(|(f, _)| f.lse.clone()).collect();
    let dqs: Vec<Vec<f32>> = per_rank.iter().map(|(_, b)| b.dq.clone()).collect();
    let dkvs: Vec<Vec<f32>> = per_rank.iter().map(|(_, b)| b.dkv.clone()).collect();
    let (dk, dv) = gather_kv(p, plan, &dkvs);
    let dsinks = per_rank[0].1.dsinks.clone();
    for (_, b) in &per_rank {
        assert_eq!(b.dsinks, dsinks, "every rank holds the same dσ");
    }
    Run {
        out: gather_full(p, plan, &outs, p.head_dim, p.heads),
        lse: gather_full(p, plan, &lses, 1, p.heads),
        dq: gather_full(p, plan, &dqs, p.head_dim, p.heads),
        dk,
        dv,
        dsinks,
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// (P, layout, causal, H, H_kv, D, N); every N leaves uneven chunks (N mod 2P ≠ 0 where P > 1).
const CASES: &[(usize, Layout, bool, usize, usize, usize, usize)] = &[
    (1, Layout::Contiguous, false, 2, 2, 64, 37),
    (1, Layout::Zigzag, true, 2, 1, 64, 37),
    (2, Layout::Contiguous, false, 2, 2, 64, 45),
    (2, Layout::Zigzag, true, 4, 2, 64, 45),
    (2, Layout::Contiguous, true, 2, 2, 128, 41),
    (3, Layout::Zigzag, true, 2, 2, 128, 43),
    (3, Layout::Contiguous, false, 4, 1, 64, 40),
    (3, Layout::Zigzag, false, 2, 2, 64, 29),
    (4, Layout::Zigzag, true, 4, 2, 64, 51),
    (4, Layout::Contiguous, true, 2, 2, 64, 50),
    (4, Layout::Zigzag, true, 2, 2, 128, 9),
];

#[test]
fn ring_matches_the_oracle_forward_and_backward_and_is_reproducible() {
    for (i, &(ranks, layout, causal, heads, kv_heads, d, n)) in CASES.iter().enumerate() {
        let mut p = Problem::new(1, heads, n, d).with_kv_heads(kv_heads).with_causal(causal);
        // Sinks and softcap on some cases: sinks are added once after the merge, softcap per pair.
        if i % 3 == 1 {
            p.mods.sinks = Some(attnkit::seeded::normal_values(heads, 7 + i as u64));
        }
        if i % 4 == 2 {
            p.mods.softcap = Some(2.0);
        }
        let label =
            format!("P={ranks} {layout:?} causal={causal} H={heads}/{kv_heads} D={d} N={n} mods={:?}", p.mods.active());
        let (q, k, v) = attnkit::seeded::normal_qkv(&p, 100 + i as u64);
        let (q, k, v) = (q.to_f32(), k.to_f32(), v.to_f32());
        let d_out = attnkit::seeded::normal_values(p.out_len(), 200 + i as u64);
        let plan = ShardPlan::new(n, ranks, layout).unwrap();
        let got = run_ring(&p, &plan, Schedule::Ring, &q, &k, &v, &d_out);

        let args = AttnArgs::new(&p, &q, &k, &v).unwrap();
        let want = oracle(&args);
        let tol = exact_tolerance(&args, &want, p.dtype);
        let e = compare(&got.out, &want);
        assert!(e.within(tol.bound), "{label}: forward error {} over bound {}", e.max_abs, tol.bound);
        let g64 = gradients_f64(&args, &d_out, false);
        let gt = gradient_tolerance(&args, &d_out, &g64);
        for (name, g, w, t) in
            [("dq", &got.dq, &g64.dq, gt.dq), ("dk", &got.dk, &g64.dk, gt.dk), ("dv", &got.dv, &g64.dv, gt.dv)]
        {
            let e = compare(g, w);
            assert!(e.within(t.bound), "{label}: {name} error {} over bound {}", e.max_abs, t.bound);
        }
        if let (Some(g), Some(w), Some(t)) = (&got.dsinks, &g64.dsinks, gt.dsinks) {
            let e = compare(g, w);
            assert!(e.within(t.bound), "{label}: dsinks error {} over bound {}", e.max_abs, t.bound);
        }
        assert_eq!(got.dsinks.is_some(), p.mods.sinks.is_some(), "{label}");

        let again = run_ring(&p, &plan, Schedule::Ring, &q, &k, &v, &d_out);
        let gathered = run_ring(&p, &plan, Schedule::AllGather, &q, &k, &v, &d_out);
        for other in [&again, &gathered] {
            assert!(same_bits(&got.out, &other.out) && same_bits(&got.lse, &other.lse), "{label}: forward bits differ");
            assert!(
                same_bits(&got.dq, &other.dq) && same_bits(&got.dk, &other.dk) && same_bits(&got.dv, &other.dv),
                "{label}: gradient bits differ"
            );
        }
    }
}

#[test]
fn unsupported_problems_and_bad_shards_are_refused_by_name() {
    let q = vec![0.0f32; 16 * 8];
    let plan = ShardPlan::new(16, 2, Layout::Zigzag).unwrap();
    let mut p = Problem::new(1, 1, 16, 8).with_causal(true);
    p.mods.alibi_slopes = Some(vec![0.5]);
    let e = Shard::from_full(&p, &plan, 0, &q, &q, &q).unwrap_err().to_string();
    assert!(e.contains("alibi"), "{e}");
    let p = Problem::new(1, 1, 16, 8).with_window(attnkit::Window::new(2, 0));
    assert!(Shard::from_full(&p, &plan, 0, &q, &q, &q).unwrap_err().to_string().contains("sliding window"));
    let p = Problem::new(1, 1, 16, 8);
    let bad_plan = ShardPlan::new(15, 2, Layout::Zigzag).unwrap();
    let e = Shard::from_full(&p, &bad_plan, 0, &q, &q, &q).unwrap_err().to_string();
    assert!(e.contains("N=15") && e.contains("N=16"), "{e}");
    // A shard that does not match the plan is refused before any transfer, naming the rank.
    let errs = ThreadRing::run(2, |t| {
        let r = attnkit::dist::ring::Transport::rank(t);
        let mut shard = Shard::from_full(&p, &plan, r, &q, &q, &q).unwrap();
        if r == 1 {
            shard.q.pop();
        }
        ring::forward(t, &p, &plan, Schedule::Ring, &shard).err().map(|e| e.to_string())
    });
    let e = errs[1].as_deref().unwrap_or("");
    assert!(e.contains("rank 1") && e.contains("shard"), "{e}");
    // Rank 0 sees its peer leave instead of waiting forever.
    let e = errs[0].as_deref().unwrap_or("");
    assert!(e.contains("rank 1 left the ring"), "{e}");
}
