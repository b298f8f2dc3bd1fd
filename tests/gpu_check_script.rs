//! scripts/gpu-check/run.sh, the prepared device check, exercised here without a GPU:
//!
//! - the dry run: with the real `attnkit` and no NVIDIA GPU, it records the environment (with
//!   `attnkit list`'s driver and NVRTC lines), says "NO GPU" and stops with status 2;
//! - its plumbing: with stand-ins for nvidia-smi, compute-sanitizer, ncu, the test binary, python
//!   and attnkit that report success, every step runs, at most 8 files are written, the verdicts
//!   and the speed table are in summary.md, and the exit status is 0 — and a stand-in `check` that
//!   fails one shape, or a flash-cuda that `list` reports unavailable, turns the status to 1.
//!
//! Both take about a second; the GPU itself is exercised only when run.sh runs on a GPU machine.
//! Needs the `cuda` feature: without it `attnkit list` has no driver/NVRTC lines to record.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check/run.sh")
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gpu-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

#[test]
fn dry_run_without_a_gpu_says_so_and_stops() {
    if on_path("nvidia-smi") {
        eprintln!("SKIPPED: nvidia-smi is on PATH, so run.sh would run the real check here");
        return;
    }
    let out_dir = tmp("dry");
    let t = std::time::Instant::now();
    let o = Command::new("bash")
        .arg(script())
        .arg(&out_dir)
        .env("ATTNKIT_BIN", env!("CARGO_BIN_EXE_attnkit"))
        .output()
        .expect("bash");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("NO GPU"), "{}", text(&o));
    assert_eq!(files_in(&out_dir), ["env.txt", "summary.md"]);
    let env = std::fs::read_to_string(out_dir.join("env.txt")).unwrap();
    assert!(env.contains("flash-cuda") && env.contains("CUDA driver:") && env.contains("NVRTC"), "{env}");
    assert!(t.elapsed().as_secs() < 30, "dry run took {:?}", t.elapsed());
}

/// Writes an executable shell script.
fn stand_in(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// run.sh with every external tool replaced; `check_fails_for` makes the fake `attnkit check`
/// fail for argument lists containing that text.
fn run_with_stand_ins(name: &str, check_fails_for: &str, flash_status: &str) -> (Output, PathBuf) {
    let dir = tmp(name);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    stand_in(&bin, "nvidia-smi", "echo 'GPU 0: Stand-in H100'");
    stand_in(&bin, "compute-sanitizer", "shift 4; \"$@\"; echo '========= ERROR SUMMARY: 0 errors'");
    stand_in(&bin, "ncu", "echo ncu stand-in");
    let attnkit = stand_in(
        &bin,
        "attnkit",
        &format!(
            r#"case "$1" in
  list) echo 'flash-cuda   exact   cuda  {flash_status}'; echo 'CUDA driver: /x/libcuda.so.1 (CUDA driver API 13.0)'; echo 'NVRTC: 13.0 (/x/libnvrtc.so.13)';;
  check) [[ "$*" == *"{check_fails_for}"* ]] && exit 1; echo PASS;;
  bench) for n in 2048 4096; do echo '{{"backend":"flash-cuda","seq":'$n',"dim":64,"causal":false,"dtype":"f16","gflops":150000.0}}'; done;;
esac"#
        ),
    );
    let tests =
        stand_in(&bin, "cuda_gpu", "[[ $ATTNKIT_REQUIRE_GPU == 1 ]] && echo 'test result: ok. 5 passed; 0 failed'");
    let python = stand_in(
        &bin,
        "python-stand-in",
        r#"case "$1" in
  *summarize.py) exec python3 "$@";;
  *torch_sdpa_gpu.py) echo '{"backend":"torch-fa2","seq":2048,"dim":64,"causal":false,"dtype":"f16","tflops":300.0}';;
  *) echo 'torch stand-in';;
esac"#,
    );
    let out_dir = dir.join("out");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new("bash")
        .arg(script())
        .env("OUT", &out_dir)
        .env("PATH", path)
        .env("ATTNKIT_BIN", attnkit)
        .env("ATTNKIT_GPU_TESTS", tests)
        .env("PYTHON", python)
        .output()
        .expect("bash");
    (o, out_dir)
}

#[test]
fn every_step_runs_and_writes_at_most_8_files() {
    let (o, out_dir) = run_with_stand_ins("ok", "no such argument", "available");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let files = files_in(&out_dir);
    assert!(files.len() <= 8, "{files:?}");
    for f in
        ["env.txt", "tests.txt", "check.txt", "sanitizer.txt", "bench_attnkit.jsonl", "bench_torch.jsonl", "summary.md"]
    {
        assert!(files.iter().any(|x| x == f), "{f} missing: {files:?}");
    }
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    for want in [
        "cuda_gpu tests (ATTNKIT_REQUIRE_GPU=1)**: PASS",
        "attnkit check**: PASS: 74/74",
        "compute-sanitizer**: PASS: 8/8",
        "attnkit check --backward**: PASS: 8/8",
    ] {
        assert!(summary.contains(want), "{want} not in:\n{summary}");
    }
    // flash-cuda 150 TFLOP/s vs FA2 300 at (f16, 64, non-causal, 2048): ratio 0.50.
    assert!(summary.contains("| f16 | 64 | no | 2048 | 150.0 | 300.0 | - | 0.50 |"), "{summary}");
    let check = std::fs::read_to_string(out_dir.join("check.txt")).unwrap();
    for d in [32, 40, 48, 64, 72, 80, 96, 128, 160, 192, 256] {
        for dt in ["f16", "bf16"] {
            assert!(check.contains(&format!("--dim {d} --dtype {dt} ")), "d{d} {dt} not checked");
        }
    }
    // Split-KV decode and every kind of score modifier, in both dtypes.
    for dt in ["f16", "bf16"] {
        for extra in ["--seq 1 --seq-kv 4099", "--softcap 30 --alibi", "--sinks-value 0.5", "--seqlens 100,37,250"] {
            assert!(check.contains(&format!("--dtype {dt} --dim 128 ")), "{dt}: no d128 extra run");
            assert!(check.lines().any(|l| l.contains(extra) && l.contains(&format!("--dtype {dt} "))), "{extra} {dt}");
        }
    }
}

#[test]
fn a_failing_check_fails_the_run() {
    let (o, out_dir) = run_with_stand_ins("fail", "--dim 96 --dtype bf16", "available");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(summary.contains("attnkit check**: FAIL: 72/74"), "{summary}");
}

#[test]
fn a_gpu_without_a_usable_flash_cuda_fails_the_environment_step() {
    let (o, out_dir) = run_with_stand_ins("unavail", "no such argument", "unavailable (libnvrtc not found)");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(summary.contains("environment**: FAIL"), "{summary}");
}
