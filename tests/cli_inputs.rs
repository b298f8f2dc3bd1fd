//! `attnkit check --inputs …`: the input families reach `check`, the mean-of-V baseline is
//! printed beside every approximation, and an approximation that does not beat it is marked;
//! `bench --inputs …` runs on the family and records it in every row.

use std::process::{Command, Output};

fn attnkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnkit")).args(args).output().expect("spawn attnkit")
}

fn check(inputs: &str) -> String {
    let out = attnkit(&[
        "check",
        "--inputs",
        inputs,
        "--backends",
        "sdpa,nystrom,linformer",
        "--seq",
        "256",
        "--heads",
        "1",
        "--landmarks",
        "32",
        "--proj-dim",
        "64",
    ]);
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{s}{}", String::from_utf8_lossy(&out.stderr));
    s
}

fn line<'a>(s: &'a str, name: &str) -> &'a str {
    s.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name}: {s}"))
}

#[test]
fn structured_inputs_beat_the_baseline_and_local_global_ones_are_marked() {
    let s = check("structured");
    assert!(s.contains("inputs=structured"), "{s}");
    assert!(line(&s, "mean-of-v").contains("uniform attention"), "{s}");
    assert!(line(&s, "sdpa").contains("PASS"), "{s}");
    for name in ["nystrom", "linformer"] {
        assert!(line(&s, name).contains("better than mean-of-v") && !line(&s, name).contains("NOT"), "{s}");
    }
    // Nyström does not beat the mean of V where attention is local.
    let s = check("local-global");
    assert!(line(&s, "nystrom").contains("NOT better than mean-of-v (!)"), "{s}");
}

#[test]
fn bad_family_and_option_values_are_one_line_errors() {
    for (args, want) in [
        (&["check", "--inputs", "uniform"][..], "uniform"),
        (&["bench", "--inputs", "noise"], "noise"),
        (&["check", "--inputs", "structured:-2"], "structured:-2"),
        (&["check", "--kernel", "gelu"], "gelu"),
        (&["check", "--projection", "random"], "random"),
    ] {
        let out = attnkit(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bench_records_the_input_family_of_every_row() {
    for (family, want) in [("structured:4", "structured:4"), ("local-global", "local-global"), ("normal", "normal")] {
        let out = attnkit(&[
            "bench",
            "--inputs",
            family,
            "--backends",
            "sdpa,nystrom",
            "--seq",
            "64",
            "--dim",
            "8",
            "--heads",
            "1",
            "--reps",
            "1",
            "--json",
        ]);
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{s}{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<serde_json::Value> =
            s.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
        assert_eq!(rows.len(), 2, "{s}");
        for r in &rows {
            assert_eq!((r["inputs"].as_str(), r["status"].as_str()), (Some(want), Some("ok")), "{r}");
        }
    }
}
