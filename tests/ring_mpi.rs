//! `attnkit ring` under `mpirun` on localhost (features `cli` + `mpi`; `.ci/run` runs it):
//! P ∈ {1,2,3,4}, zigzag / contiguous / all-gather, causal and not, GQA, D ∈ {64,128}, N not
//! divisible by 2P, sinks, sliding windows and ALiBi, forward and backward judged by `--check` against the f64 oracle
//! (tolerance rule), bitwise identical across two runs; and failure behaviour: a rank with a
//! bad shard, or one that exits, ends every rank with a non-zero status, naming the rank,
//! within a bounded time. Shapes are small: the whole file takes seconds.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every run must end within this (a hang is a failure, not a stuck CI).
const LIMIT: Duration = Duration::from_secs(90);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn mpirun(ranks: usize, args: &[&str]) -> Outcome {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_attnkit"))
        .arg("ring")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("mpirun must be on PATH (apt-get install openmpi-bin)");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > LIMIT {
            child.kill().ok();
            child.wait().ok();
            panic!("mpirun -n {ranks} ring {args:?} did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        secs: start.elapsed().as_secs_f64(),
    }
}

/// (ranks, extra arguments); every N is uneven for its P.
const CASES: &[(usize, &str)] = &[
    (1, "--seq 77 --heads 2 --causal --backward"),
    (2, "--seq 203 --heads 4 --kv-heads 2 --causal --backward"),
    (3, "--seq 203 --heads 4 --kv-heads 2 --causal --backward --sinks"),
    (4, "--seq 203 --heads 2 --dim 128 --causal --backward"),
    (2, "--seq 131 --heads 2 --dim 128 --layout contiguous --backward"),
    (3, "--seq 131 --heads 4 --kv-heads 1 --layout contiguous --causal --backward"),
    (4, "--seq 101 --heads 2 --layout allgather --causal"),
    (3, "--seq 100 --heads 2 --layout allgather"),
    // Windows (causal with a left bound; two-sided and narrower than a chunk) and ALiBi.
    (2, "--seq 203 --heads 4 --kv-heads 2 --causal --window 17,-1 --backward"),
    (3, "--seq 131 --heads 2 --window 5,3 --layout contiguous --backward"),
    (4, "--seq 203 --heads 4 --kv-heads 2 --causal --alibi --backward"),
    (2, "--seq 131 --heads 2 --dim 128 --alibi --layout contiguous --backward"),
    (3, "--seq 100 --heads 2 --alibi --window 9,4 --layout allgather"),
];

#[test]
fn ring_passes_check_and_repeats_bit_for_bit() {
    for &(ranks, extra) in CASES {
        let args: Vec<&str> = extra.split_whitespace().chain(["--check", "--threads", "1"]).collect();
        let first = mpirun(ranks, &args);
        let label = format!("mpirun -n {ranks} ring {extra}");
        assert_eq!(first.code, Some(0), "{label}: stdout {} stderr {}", first.stdout, first.stderr);
        let checks = first.stdout.lines().filter(|l| l.starts_with("check")).count();
        let want = if extra.contains("--backward") { 4 } else { 1 } + usize::from(extra.contains("--sinks"));
        assert_eq!(checks, want, "{label}: {}", first.stdout);
        assert!(!first.stdout.contains("FAIL"), "{label}: {}", first.stdout);
        assert!(first.stdout.contains("hidden"), "{label}: timings missing: {}", first.stdout);
        let bits = |o: &Outcome| o.stdout.lines().find(|l| l.starts_with("bits")).map(str::to_string);
        let second = mpirun(ranks, &args);
        assert_eq!(second.code, Some(0), "{label} (second run): {}", second.stderr);
        assert!(bits(&first).is_some());
        assert_eq!(bits(&first), bits(&second), "{label}: results differ between two runs");
    }
}

#[test]
fn a_failing_rank_ends_every_rank_with_its_name() {
    for (fault, rank) in [("1:error", "rank 1"), ("2:exit", "rank 2")] {
        let o = mpirun(3, &["--seq", "300", "--heads", "2", "--causal", "--backward", "--fault", fault]);
        assert!(o.code.is_some_and(|c| c != 0), "fault {fault}: mpirun exited {:?}", o.code);
        assert!(o.stderr.contains(rank), "fault {fault}: stderr does not name {rank}: {}", o.stderr);
        assert!(o.secs < LIMIT.as_secs_f64(), "fault {fault}: took {:.1} s", o.secs);
    }
    // An unsupported problem is refused by name on every rank, before any transfer.
    let o = mpirun(2, &["--seq", "3", "--heads", "2", "--causal"]);
    assert!(o.code.is_some_and(|c| c != 0));
    assert!(o.stderr.contains("N=3") && o.stderr.contains("rank"), "{}", o.stderr);
}
