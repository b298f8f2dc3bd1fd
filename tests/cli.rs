//! End-to-end tests of the `attnkit` binary: exit codes, output formats, .npy round trips and
//! one-line errors. Shapes are tiny so the whole file runs in a few seconds.

use attnkit::npy::{read_tensor, write_tensor};
use attnkit::{AttnArgs, Problem, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attnkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnkit")).args(args).output().expect("spawn attnkit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh scratch folder per test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnkit-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a failed run: non-zero exit, exactly one `error:` line mentioning `want`, no panic.
fn assert_one_line_error(out: &Output, want: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(want), "`{}` lacks `{want}`", lines[0]);
}

#[test]
fn list_prints_every_registered_backend() {
    let out = attnkit(&["list"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    for name in attnkit::backend_names() {
        let line = s
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing: {s}"));
        assert!(line.contains("exact") || line.contains("approx"), "{line}");
        assert!(line.contains("available"), "{line}");
    }
}

#[test]
fn check_passes_for_exact_backends_and_reports_numbers() {
    let out = attnkit(&[
        "check",
        "--seq",
        "24",
        "--seq-kv",
        "40",
        "--dim",
        "8",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--causal",
    ]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    for name in ["reference", "sdpa", "auto"] {
        let line = s.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {s}"));
        assert!(line.contains("PASS"), "{line}");
    }
}

#[test]
fn check_f16_and_window() {
    let out = attnkit(&[
        "check",
        "--backends",
        "sdpa",
        "--seq",
        "16",
        "--dim",
        "8",
        "--heads",
        "1",
        "--dtype",
        "f16",
        "--window",
        "3,-1",
    ]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("dtype=f16") && text(&out.stdout).contains("window=(3,-1)"));
}

/// Every bad argument, with a fragment the single error line must contain.
#[test]
fn bad_arguments_fail_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["check", "--backends", "nope"], "unknown backend `nope`"),
        (&["check", "--heads", "6", "--kv-heads", "4", "--seq", "4", "--dim", "4"], "kv_heads (4)"),
        (&["check", "--seq", "0"], "seq_q"),
        (&["bench", "--backends", "sdpa", "--seq", "8", "--reps", "0"], "--reps"),
        (&["bench", "--backends", "sdpa", "--seq", "8,16", "--seq-kv", "1,2,3"], "--seq-kv"),
        (&["bench", "--backends", "sdpa", "--seq", "8", "--threads", "0"], "--threads"),
    ];
    for (args, want) in cases {
        assert_one_line_error(&attnkit(args), want);
    }
    // clap's own errors: non-zero, no panic.
    for args in [
        &["check", "--window", "3,x"][..],
        &["check", "--window", "-2,0"],
        &["bench", "--dtype", "f8"],
        &["frobnicate"],
    ] {
        let out = attnkit(args);
        assert!(!out.status.success() && !text(&out.stderr).contains("panicked"), "{args:?}");
        assert!(text(&out.stderr).starts_with("error:"), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn bench_json_lines_have_the_documented_fields() {
    let out = attnkit(&[
        "bench",
        "--backends",
        "sdpa,auto",
        "--seq",
        "32,64",
        "--dim",
        "16",
        "--heads",
        "2",
        "--reps",
        "2",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines.len(), 4);
    for v in &lines {
        for key in [
            "backend",
            "seq",
            "seq_kv",
            "dim",
            "heads",
            "kv_heads",
            "batch",
            "causal",
            "window",
            "dtype",
            "threads",
            "median_s",
            "gflops",
            "peak_bytes",
            "gemm_gflops",
            "gemm_fraction",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["status"], "ok");
        assert_eq!(v["threads"], 1);
        assert_eq!(v["dim"], 16);
        let p = Problem::new(1, 2, v["seq"].as_u64().unwrap() as usize, 16);
        let (t, g) = (v["median_s"].as_f64().unwrap(), v["gflops"].as_f64().unwrap());
        assert!((g - p.flops() / t / 1e9).abs() <= 1e-9 * g.max(1.0), "gflops is not flops()/time: {v}");
        assert!(v["gemm_gflops"].as_f64().unwrap() > 0.0);
        assert!(v["peak_bytes"].as_u64().unwrap() > 0, "sdpa allocates its score matrix: {v}");
    }
}

#[test]
fn bench_text_mentions_gemm_ceiling() {
    let out = attnkit(&["bench", "--backends", "sdpa", "--seq", "32", "--dim", "8", "--heads", "1", "--reps", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("GEMM ceiling") && s.lines().any(|l| l.starts_with("sdpa")), "{s}");
}

/// `bench` refuses a hopeless request before making inputs or measuring the GEMM ceiling (it
/// used to generate 6 GB of inputs and time a 2048³ sgemm, 36 s, then exit 0): the ceiling line
/// is printed when the ceiling is measured, which happens only for a cell that will run, and a
/// run in which a named backend measured nothing exits 3, as `check` does.
#[test]
fn bench_refuses_before_any_work_and_exits_3_when_nothing_named_ran() {
    let out = attnkit(&["bench", "--backends", "sdpa", "--seq", "1000000", "--dim", "64", "--heads", "8"]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{so}{se}");
    let row = so.lines().find(|l| l.starts_with("sdpa")).unwrap_or_else(|| panic!("no sdpa row: {so}"));
    assert!(row.contains("skipped") && row.contains("would need"), "{row}");
    assert!(!so.contains("GEMM ceiling"), "the ceiling was measured for a refused run: {so}");
    assert!(se.contains("measured at no N: sdpa"), "{se}");
    // `all` is not a promise about any one backend: a partly refused sweep still exits 0.
    let out = attnkit(&["bench", "--seq", "16", "--dim", "8", "--heads", "1", "--reps", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `attnkit bench ... | head -2` used to panic ("failed printing to stdout: Broken pipe",
/// exit 101); a reader that has gone away ends the command quietly.
#[test]
fn bench_exits_quietly_when_its_reader_goes_away() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attnkit"))
        .args(["bench", "--backends", "sdpa", "--seq", "64,128,256", "--dim", "16", "--heads", "1", "--reps", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn attnkit");
    drop(child.stdout.take()); // close the read end: every later write gets EPIPE
    let out = child.wait_with_output().expect("wait");
    let err = text(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

fn write_inputs(dir: &Path, p: &Problem, dtype: attnkit::DType, seed: u64, rank3: bool) -> (Tensor, Tensor, Tensor) {
    let (q, k, v) = attnkit::seeded::normal_qkv(&p.clone().with_dtype(dtype), seed);
    let qs = [p.batch, p.heads, p.seq_q, p.head_dim];
    let ks = [p.batch, p.kv_heads, p.seq_k, p.head_dim];
    let (qs, ks): (&[usize], &[usize]) = if rank3 { (&qs[1..], &ks[1..]) } else { (&qs, &ks) };
    write_tensor(dir.join("q.npy"), qs, &q).unwrap();
    write_tensor(dir.join("k.npy"), ks, &k).unwrap();
    write_tensor(dir.join("v.npy"), ks, &v).unwrap();
    (q, k, v)
}

fn run_args(dir: &Path, extra: &[&str]) -> Output {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut args =
        vec!["run".to_string(), "--q".into(), p("q.npy"), "--k".into(), p("k.npy"), "--v".into(), p("v.npy")];
    args.extend(["--out".into(), p("o.npy")]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    attnkit(&refs)
}

/// `run` on f32 and f16 files (rank 4 and rank 3) matches the reference computed in-process.
#[test]
fn run_matches_reference_for_f32_and_f16() {
    let cases = [
        ("f32", attnkit::DType::F32, false, vec!["--causal"]),
        ("f16", attnkit::DType::F16, false, vec!["--window", "4,2"]),
        ("rank3", attnkit::DType::F32, true, vec!["--scale", "0.3"]),
    ];
    for (name, dtype, rank3, extra) in cases {
        let dir = scratch(&format!("run-{name}"));
        let mut p = Problem::new(if rank3 { 1 } else { 2 }, 4, 12, 8).with_kv_heads(2).with_seq_k(10).with_dtype(dtype);
        let (q, k, v) = write_inputs(&dir, &p, dtype, 3, rank3);
        let mut flags: Vec<&str> = vec!["--backend", "sdpa", "--lse"];
        let lse_path = dir.join("lse.npy").display().to_string();
        flags.push(&lse_path);
        flags.extend(extra.iter().copied());
        let out = run_args(&dir, &flags);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        if extra.contains(&"--causal") {
            p = p.with_causal(true);
        }
        if extra.contains(&"4,2") {
            p = p.with_window(attnkit::Window::new(4, 2));
        }
        if extra.contains(&"0.3") {
            p = p.with_scale(0.3);
        }
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let (want, want_lse) = attnkit::backends::reference::attention_f64(&args);
        let (got, shape) = read_tensor(dir.join("o.npy")).unwrap();
        let expect_shape: Vec<usize> = if rank3 { vec![4, 12, 8] } else { vec![2, 4, 12, 8] };
        assert_eq!(shape, expect_shape, "{name}");
        assert!(matches!(got, Tensor::F32(_)), "{name}: output must be float32");
        let err = attnkit::validate::compare(&got.to_f32(), &want);
        assert!(err.max_abs < 1e-4 && err.non_finite == 0, "{name}: {err:?}");
        let (lse, lshape) = read_tensor(dir.join("lse.npy")).unwrap();
        assert_eq!(lshape, expect_shape[..expect_shape.len() - 1].to_vec(), "{name}");
        let lerr = attnkit::validate::compare(&lse.to_f32(), &want_lse);
        assert!(lerr.max_abs < 1e-4, "{name} lse: {lerr:?}");
    }
}

/// Each broken input file (or flag), the file it replaces, and a fragment of the error.
#[test]
fn run_rejects_bad_inputs_with_one_line() {
    let dir = scratch("run-bad");
    let p = Problem::new(1, 2, 6, 4);
    write_inputs(&dir, &p, attnkit::DType::F32, 1, false);
    let good_k = std::fs::read(dir.join("k.npy")).unwrap();
    let f64_file = {
        let mut buf = Vec::new();
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&[1, 2, 6, 4]).writer(&mut buf).begin_nd().unwrap();
        w.extend((0..48).map(|i| i as f64)).unwrap();
        w.finish().unwrap();
        buf
    };
    let fortran = {
        let at = good_k.windows(5).position(|w| w == b"False").unwrap();
        let mut b = good_k.clone();
        b[at..at + 5].copy_from_slice(b"True ");
        b
    };
    let rank2 = attnkit::npy::tensor_to_bytes(&[12, 4], &Tensor::F32(vec![0.0; 48])).unwrap();
    let bad_d = attnkit::npy::tensor_to_bytes(&[1, 2, 6, 5], &Tensor::F32(vec![0.0; 60])).unwrap();
    let bad_h = attnkit::npy::tensor_to_bytes(&[1, 3, 6, 4], &Tensor::F32(vec![0.0; 72])).unwrap();
    let f16_k =
        attnkit::npy::tensor_to_bytes(&[1, 2, 6, 4], &Tensor::from_f32(&[0.0; 48], attnkit::DType::F16)).unwrap();
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("missing", None, "cannot read"),
        ("truncated", Some(good_k[..good_k.len() - 5].to_vec()), "truncated"),
        ("float64", Some(f64_file), "<f8"),
        ("fortran", Some(fortran), "Fortran"),
        ("rank 2", Some(rank2), "[12, 4]"),
        ("head dim", Some(bad_d), "D=4"),
        ("heads", Some(bad_h), "H_kv=3"),
        ("mixed dtype", Some(f16_k), "share a dtype"),
        ("not npy", Some(b"garbage".to_vec()), "magic"),
    ];
    for (name, bytes, want) in cases {
        let k = dir.join("k.npy");
        match &bytes {
            Some(b) => std::fs::write(&k, b).unwrap(),
            None => std::fs::remove_file(&k).unwrap(),
        }
        let out = run_args(&dir, &["--backend", "sdpa"]);
        assert_one_line_error(&out, want);
        let _ = name;
        std::fs::write(&k, &good_k).unwrap();
    }
    assert_one_line_error(&run_args(&dir, &["--backend", "nope"]), "unknown backend `nope`");
    assert_one_line_error(&run_args(&dir, &["--backend", "sdpa", "--scale", "-1"]), "scale");
    let out = run_args(&dir, &["--backend", "sdpa", "--window", "a,b"]);
    assert!(!out.status.success() && !text(&out.stderr).contains("panicked"));
    assert!(run_args(&dir, &["--backend", "sdpa", "--threads", "1"]).status.success());
}

/// `report` with a tiny sweep writes every artefact into --out, replacing what was there.
#[test]
fn report_writes_all_artefacts() {
    let dir = scratch("report");
    let target = dir.join("rep");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("stale.txt"), "old").unwrap();
    let t = target.display().to_string();
    let out = attnkit(&["report", "--quick", "--max-n", "256", "--out", &t]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "README.md",
        "results.json",
        "results.csv",
        "time_vs_n.svg",
        "memory_vs_n.svg",
        "error_vs_n.svg",
        "error_vs_speed.svg",
        "weights_normal.svg",
        "weights_structured.svg",
        "weights_local-global.svg",
        "sections.csv",
        "decode_bandwidth.svg",
    ] {
        assert!(target.join(f).is_file(), "{f} missing");
    }
    assert!(!target.join("stale.txt").exists(), "the old report must be replaced, not merged");
    let readme = std::fs::read_to_string(target.join("README.md")).unwrap();
    for section in [
        "## Reading",
        "## Input families",
        "### `local-global`",
        "## Scaling",
        "## Crossovers",
        "## Accuracy–speed frontier per input family",
        "## Results per backend",
        "### sdpa",
        "mean-of-V rel. error",
        "GEMM ceiling",
        "## Decode and bf16",
        "### bf16 vs f32 prefill (N = 256",
        "## Masks and varlen speed",
        "`packed varlen 8 × 256` takes",
    ] {
        assert!(readme.contains(section), "README lacks {section}");
    }
    assert!(!readme.to_lowercase().contains("issue"), "the report names targets, not issue numbers");
    // --replot redraws the plots from results.json without measuring, README untouched.
    let replot = attnkit(&["report", "--replot", "--out", &t]);
    assert!(
        replot.status.success() && text(&replot.stdout).contains("decode_bandwidth.svg"),
        "{}",
        text(&replot.stderr)
    );
    assert_eq!(std::fs::read_to_string(target.join("README.md")).unwrap(), readme);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(target.join("results.json")).unwrap()).unwrap();
    let sections = json["sections"].as_array().unwrap();
    let decode = sections.iter().filter(|r| r["section"] == "decode" && r["status"] == "ok").count();
    assert_eq!(decode, 4, "--max-n 256 keeps N_k = 1024 for each shape and dtype");
    assert!(sections.iter().any(|r| r["section"] == "masks" && r["ratio"].is_f64()));
    let rows = json["results"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["backend"] == "sdpa" && r["status"] == "ok" && r["err_max_abs"].as_f64().unwrap() < 1e-5)
    );
    // The mean-of-V baseline sits beside every measured error, on the sweep's input family.
    let scored: Vec<&serde_json::Value> = rows.iter().filter(|r| r["rel_err"].is_f64()).collect();
    assert!(scored.len() >= 4, "at N = 256 every measured backend is scored against the oracle: {}", scored.len());
    assert!(scored.iter().all(|r| r["baseline_rel_err"].as_f64().unwrap() > 0.1 && r["inputs"] == "normal"));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders left behind");
    assert_one_line_error(&attnkit(&["report", "--quick", "--out", "/"]), "--out");
}

#[test]
fn kernels_subcommand_rejects_a_bad_arch() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attnkit"))
        .args(["kernels", "--arch", "sm_7x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("sm_7x") && !err.contains("panicked"), "{err}");
}

#[test]
fn kv_cache_flags_on_check_and_bench() {
    // Each layout and dtype passes the oracle check on chunked prefill onto a cache.
    for (layout, dtype) in [("contiguous", "f32"), ("paged:16", "bf16"), ("paged:64", "int8")] {
        let args = ["check", "--seq-kv", "300", "--new-tokens", "16", "--kv-layout", layout, "--kv-dtype", dtype];
        let out = attnkit(&[&args[..], &["--heads", "4", "--kv-heads", "2", "--causal", "--window", "64,0"]].concat());
        let s = text(&out.stdout);
        assert!(out.status.success(), "{layout} {dtype}: {s}{}", text(&out.stderr));
        assert!(s.contains(&format!("kv cache {layout} {dtype} of 316 keys")) && s.contains(" ok;"), "{s}");
    }
    let out = attnkit(&["bench", "--seq-kv", "2048", "--kv-dtype", "int8", "--reps", "1", "--threads", "1", "--json"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    for field in
        ["\"kv_layout\":\"contiguous\"", "\"kv_dtype\":\"int8\"", "\"gb_s\":", "\"frac_bw\":", "\"ceiling_gb_s\":"]
    {
        assert!(s.contains(field), "{field} missing: {s}");
    }
    // clap's own errors (its first line names the value), then ours (one line).
    for (args, want) in [
        (["check", "--kv-layout", "paged:8"], "page size 8 is below the minimum 16"),
        (["check", "--kv-dtype", "fp8"], "unknown kv dtype `fp8`"),
    ] {
        let err = text(&attnkit(&args).stderr);
        assert!(
            err.starts_with("error:") && err.lines().next().unwrap().contains(want) && !err.contains("panicked"),
            "{err}"
        );
    }
    assert_one_line_error(
        &attnkit(&["check", "--new-tokens", "4", "--dtype", "bf16"]),
        "--dtype bf16 applies to the backends",
    );
}
