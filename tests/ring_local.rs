//! Ring attention's algorithm (`attnkit::dist`) on the in-process thread transport, in the
//! default build: forward and backward against the f64 oracle under FlashAttention's tolerance
//! rule (`exact_tolerance`, `gradient_tolerance`), for P ∈ {1,2,3,4}, both layouts, causal and
//! not, GQA, D ∈ {64,128}, N not divisible by 2P, sinks and softcap, sliding windows (causal with
//! a left bound, two-sided, narrower than a chunk so that whole pairs are skipped) and ALiBi
//! (with and without causal or a window); bitwise identical across two runs and between the
//! ring and all-gather schedules; refusals by name. The MPI transport runs
//! the same code (tests/ring_mpi.rs runs it under mpirun).

use attnkit::dist::local::ThreadRing;
use attnkit::dist::ring::{self, Schedule};
use attnkit::dist::{Layout, Shard, ShardPlan, gather_full, gather_kv};
use attnkit::grad::oracle::gradients_f64;
use attnkit::validate::{compare, exact_tolerance, gradient_tolerance, oracle};
use attnkit::{AttnArgs, Problem, Window, alibi_slopes};

struct Run {
    /// Chunk pairs the band skipped, summed over ranks (forward).
    skipped: usize,
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
    let skipped = per_rank.iter().map(|(f, _)| f.stats.skipped).sum();
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
        skipped,
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

/// The position-dependent modifiers of a case.
#[derive(Clone, Copy, Debug)]
enum Mods {
    None,
    /// Sliding window (left, right); `skips`: narrower than a chunk, so some chunk pairs hold no
    /// allowed key and must be skipped.
    Window(i64, i64, bool),
    /// ALiBi with the standard slopes.
    Alibi,
    /// ALiBi and a window.
    AlibiWindow(i64, i64),
    /// ALiBi, a window and a diagonal shift of the whole problem.
    Shifted(i64),
}

/// (P, layout, causal, H, H_kv, D, N, mods); every N leaves uneven chunks (N mod 2P ≠ 0 where
/// P > 1).
type Case = (usize, Layout, bool, usize, usize, usize, usize, Mods);
const CASES: &[Case] = &[
    (1, Layout::Contiguous, false, 2, 2, 64, 37, Mods::None),
    (1, Layout::Zigzag, true, 2, 1, 64, 37, Mods::None),
    (2, Layout::Contiguous, false, 2, 2, 64, 45, Mods::None),
    (2, Layout::Zigzag, true, 4, 2, 64, 45, Mods::None),
    (2, Layout::Contiguous, true, 2, 2, 128, 41, Mods::None),
    (3, Layout::Zigzag, true, 2, 2, 128, 43, Mods::None),
    (3, Layout::Contiguous, false, 4, 1, 64, 40, Mods::None),
    (3, Layout::Zigzag, false, 2, 2, 64, 29, Mods::None),
    (4, Layout::Zigzag, true, 4, 2, 64, 51, Mods::None),
    (4, Layout::Contiguous, true, 2, 2, 64, 50, Mods::None),
    (4, Layout::Zigzag, true, 2, 2, 128, 9, Mods::None),
    // Windows: causal with a left bound, two-sided, and narrower than a chunk.
    (2, Layout::Zigzag, true, 4, 2, 64, 45, Mods::Window(9, -1, false)),
    (3, Layout::Contiguous, true, 2, 2, 64, 47, Mods::Window(3, -1, true)),
    (3, Layout::Contiguous, false, 4, 2, 64, 40, Mods::Window(3, 4, true)),
    (4, Layout::Zigzag, false, 2, 1, 64, 57, Mods::Window(6, 2, true)),
    (4, Layout::Zigzag, true, 2, 2, 128, 70, Mods::Window(2, 0, true)),
    (2, Layout::Contiguous, false, 2, 2, 64, 33, Mods::Window(-1, 5, false)),
    // ALiBi, with and without causal, and with a window.
    (2, Layout::Contiguous, false, 4, 2, 64, 41, Mods::Alibi),
    (3, Layout::Zigzag, true, 4, 2, 128, 43, Mods::Alibi),
    (4, Layout::Zigzag, false, 2, 2, 64, 51, Mods::Alibi),
    (4, Layout::Contiguous, true, 4, 1, 64, 50, Mods::AlibiWindow(7, 0)),
    (2, Layout::Zigzag, false, 2, 2, 64, 39, Mods::AlibiWindow(5, 3)),
    (3, Layout::Zigzag, true, 2, 2, 64, 40, Mods::Shifted(-4)),
];

#[test]
fn ring_matches_the_oracle_forward_and_backward_and_is_reproducible() {
    for (i, &(ranks, layout, causal, heads, kv_heads, d, n, mods)) in CASES.iter().enumerate() {
        let mut p = Problem::new(1, heads, n, d).with_kv_heads(kv_heads).with_causal(causal);
        // Sinks and softcap on some cases: sinks are added once after the merge, softcap per pair.
        if i % 3 == 1 {
            p.mods.sinks = Some(attnkit::seeded::normal_values(heads, 7 + i as u64));
        }
        if i % 4 == 2 {
            p.mods.softcap = Some(2.0);
        }
        match mods {
            Mods::None => {}
            Mods::Window(l, r, _) => p.window = Window::new(l, r),
            Mods::Alibi => p = p.with_alibi(alibi_slopes(heads)),
            Mods::AlibiWindow(l, r) => p = p.with_alibi(alibi_slopes(heads)).with_window(Window::new(l, r)),
            Mods::Shifted(s) => p = p.with_alibi(alibi_slopes(heads)).with_window(Window::new(5, 1)).with_diag_shift(s),
        }
        let label = format!(
            "P={ranks} {layout:?} causal={causal} H={heads}/{kv_heads} D={d} N={n} window={} mods={:?}",
            p.window,
            p.mods.active()
        );
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

        // Narrow windows leave chunk pairs with no allowed key, which are skipped.
        if let Mods::Window(_, _, skips) = mods {
            assert_eq!(got.skipped > 0, skips || causal, "{label}: {} pairs skipped", got.skipped);
        }

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
    // Per-pair data and per-sequence alignment are refused by name, before any transfer.
    let causal = Problem::new(1, 1, 16, 8).with_causal(true);
    for (p, want) in [
        (causal.clone().with_bias(1, 1), "additive bias"),
        (causal.clone().with_mask(1, 1), "boolean mask"),
        (causal.clone().with_varlen(vec![0, 7, 16], vec![0, 7, 16]), "varlen"),
        (causal.clone().with_seqused_k(vec![12]), "seqused_k"),
        (causal.clone().with_dtype(attnkit::DType::F16), "f32 inputs, got f16"),
    ] {
        let e = Shard::from_full(&p, &plan, 0, &q, &q, &q).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
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
