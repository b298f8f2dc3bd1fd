//! End-to-end tests of the backward pass through the `attnkit` binary: `check --backward`
//! verdicts and exit codes, `run --d-out` gradients against the library's, `bench --backward
//! --json` rows, and the `list` column. Shapes are tiny so the file runs in seconds.

use attnkit::npy::{read_tensor, write_f32};
use attnkit::{AttnArgs, Problem, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attnkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnkit")).args(args).output().expect("spawn attnkit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnkit-clibwd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn path(d: &Path, f: &str) -> String {
    d.join(f).to_string_lossy().into_owned()
}

/// The rows of `backend` in `check --backward` output, by gradient name.
fn grad_rows<'a>(s: &'a str, backend: &str) -> Vec<(&'a str, &'a str)> {
    s.lines()
        .filter(|l| l.split_whitespace().next() == Some(backend))
        .filter_map(|l| Some((l.split_whitespace().nth(2)?, l)))
        .collect()
}

#[test]
fn check_backward_passes_with_modifiers_and_judges_every_gradient() {
    let d = scratch("check");
    let bias = attnkit::seeded::normal_values(4 * 30 * 45, 7);
    write_f32(d.join("bias.npy"), &[1, 4, 30, 45], &bias).unwrap();
    let args = [
        "check",
        "--backward",
        "--backends",
        "flash-cpu,sdpa,auto",
        "--seq",
        "30",
        "--seq-kv",
        "45",
        "--dim",
        "16",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--causal",
        "--softcap",
        "2.5",
        "--sinks-value",
        "0.3",
        "--alibi",
    ];
    let mut with_bias: Vec<&str> = args.to_vec();
    let bias_path = path(&d, "bias.npy");
    with_bias.extend(["--bias", &bias_path]);
    let out = attnkit(&with_bias);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}{}", text(&out.stderr));
    for name in ["flash-cpu", "sdpa", "auto"] {
        let rows = grad_rows(&s, name);
        let grads: Vec<&str> = rows.iter().map(|r| r.0).collect();
        assert_eq!(grads, ["dq", "dk", "dv", "dsinks", "dbias"], "{name}: {s}");
        assert!(rows.iter().all(|r| r.1.ends_with("PASS")), "{name}: {s}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A backend named explicitly without a backward exits with check's skip status (3), with the
/// reason on its row; without sinks or bias there are only the dQ, dK, dV rows.
#[test]
fn a_named_backend_without_backward_is_a_skip_with_exit_3() {
    let out = attnkit(&["check", "--backward", "--backends", "flash-cpu,nystrom", "--seq", "32", "--dim", "8"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{s}{}", text(&out.stderr));
    let grads: Vec<&str> = grad_rows(&s, "flash-cpu").iter().map(|r| r.0).collect();
    assert_eq!(grads, ["dq", "dk", "dv"], "{s}");
    let ny = s.lines().find(|l| l.starts_with("nystrom")).expect("nystrom row");
    assert!(ny.contains("SKIP no backward") && ny.contains("has no backward pass"), "{ny}");
    assert!(text(&out.stderr).contains("explicitly requested backend(s) skipped: nystrom"));
    // With `all`, backends without a backward are SKIPs and the run passes.
    let all = attnkit(&["check", "--backward", "--seq", "32", "--dim", "8"]);
    assert!(all.status.success(), "{}{}", text(&all.stdout), text(&all.stderr));
    assert!(text(&all.stdout).lines().any(|l| l.starts_with("nystrom") && l.contains("SKIP")));
    // The approximations with a backward run and are reported, not judged by the exact rule.
    let all_out = text(&all.stdout);
    for name in ["linformer", "performer"] {
        let rows = grad_rows(&all_out, name);
        assert_eq!(rows.len(), 3, "{name}: {all_out}");
        assert!(rows.iter().all(|(_, l)| l.contains("approx (not judged)")), "{rows:?}");
    }
}

/// `run --d-out` writes float32 gradients in the contract's shapes whose values are the
/// library's own backward on the same inputs (bitwise: flash-cpu's backward is deterministic).
#[test]
fn run_d_out_writes_the_librarys_gradients() {
    let d = scratch("run");
    let p = Problem::new(1, 4, 20, 8).with_kv_heads(2).with_seq_k(28).with_causal(true).with_sinks(vec![0.5; 4]);
    let (q, k, v) = attnkit::seeded::normal_qkv(&p, 3);
    let d_out = attnkit::seeded::normal_values(p.out_len(), 4);
    let (qs, ks) = ([1, 4, 20, 8], [1, 2, 28, 8]);
    write_f32(d.join("q.npy"), &qs, &q.to_f32()).unwrap();
    write_f32(d.join("k.npy"), &ks, &k.to_f32()).unwrap();
    write_f32(d.join("v.npy"), &ks, &v.to_f32()).unwrap();
    write_f32(d.join("do.npy"), &qs, &d_out).unwrap();
    write_f32(d.join("sinks.npy"), &[4], &[0.5; 4]).unwrap();
    let f = |n: &str| path(&d, n);
    let (qp, kp, vp, op, dop, sp) = (f("q.npy"), f("k.npy"), f("v.npy"), f("o.npy"), f("do.npy"), f("sinks.npy"));
    let (dq, dk, dv, ds) = (f("dq.npy"), f("dk.npy"), f("dv.npy"), f("ds.npy"));
    let out = attnkit(&[
        "run",
        "--backend",
        "flash-cpu",
        "--q",
        &qp,
        "--k",
        &kp,
        "--v",
        &vp,
        "--out",
        &op,
        "--causal",
        "--sinks",
        &sp,
        "--d-out",
        &dop,
        "--dq",
        &dq,
        "--dk",
        &dk,
        "--dv",
        &dv,
        "--dsinks",
        &ds,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = attnkit::backend("flash-cpu").unwrap();
    let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
    let fwd = b.forward(&args, true).unwrap();
    let want = b.backward(&args, &fwd.out, fwd.lse.as_ref().unwrap(), &d_out, false).unwrap();
    let want_ds = want.dsinks.clone().unwrap();
    for (file, shape, data) in [(&dq, &qs[..], &want.dq), (&dk, &ks[..], &want.dk), (&dv, &ks[..], &want.dv)] {
        let (t, s) = read_tensor(file).unwrap();
        assert_eq!(s, shape, "{file}");
        let Tensor::F32(got) = t else { panic!("{file}: not float32") };
        assert_eq!(&got, data, "{file}");
    }
    let (t, s) = read_tensor(&ds).unwrap();
    assert_eq!((s, t.to_f32()), (vec![4], want_ds));
    assert!(want.dq.iter().any(|&x| x != 0.0), "a zero gradient would match anything");

    // dO with the wrong shape, and a missing dO file: one typed line naming the file.
    write_f32(d.join("bad.npy"), &[1, 4, 21, 8], &vec![0.0; 4 * 21 * 8]).unwrap();
    for (d_out, want) in [(f("bad.npy"), "bad.npy: shape [1, 4, 21, 8]"), (f("nope.npy"), "nope.npy")] {
        let out = attnkit(&[
            "run",
            "--backend",
            "flash-cpu",
            "--q",
            &qp,
            "--k",
            &kp,
            "--v",
            &vp,
            "--out",
            &op,
            "--d-out",
            &d_out,
            "--dq",
            &dq,
            "--dk",
            &dk,
            "--dv",
            &dv,
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("error: ") && err.contains(want) && !err.contains("panicked"), "{err}");
    }
    // A backend without a backward is refused by name, and --dq without --d-out is a usage error.
    let out = attnkit(&[
        "run",
        "--backend",
        "nystrom",
        "--q",
        &qp,
        "--k",
        &kp,
        "--v",
        &vp,
        "--out",
        &op,
        "--d-out",
        &dop,
        "--dq",
        &dq,
        "--dk",
        &dk,
        "--dv",
        &dv,
    ]);
    assert!(text(&out.stderr).contains("no backward pass"), "{}", text(&out.stderr));
    let out =
        attnkit(&["run", "--backend", "flash-cpu", "--q", &qp, "--k", &kp, "--v", &vp, "--out", &op, "--dq", &dq]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bench_backward_json_emits_one_row_per_cell() {
    let out = attnkit(&[
        "bench",
        "--backward",
        "--json",
        "--backends",
        "flash-cpu,sdpa,nystrom",
        "--seq",
        "64,128",
        "--dim",
        "16",
        "--heads",
        "2",
        "--reps",
        "2",
    ]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "nystrom was named and measured at no N: {s}{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = s.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(rows.len(), 6, "{s}");
    for r in &rows {
        if r["backend"] == "nystrom" {
            assert_eq!(r["status"], "skipped");
            assert!(r["reason"].as_str().unwrap().contains("no backward"), "{r}");
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        assert!(f("fwd_s") > 0.0 && f("bwd_s") > 0.0 && f("fwdbwd_s") > 0.0, "{r}");
        let p = Problem::new(1, 2, r["seq"].as_u64().unwrap() as usize, 16);
        let want = 2.5 * p.flops() / f("bwd_s") / 1e9;
        assert!((f("bwd_gflops") - want).abs() <= 1e-6 * want, "{r}");
        assert!((f("bwd_gemm_fraction") - f("bwd_gflops") / f("gemm_gflops")).abs() < 1e-9, "{r}");
        assert_eq!(r["reps"], 2);
    }
}

#[test]
fn list_says_which_backends_have_a_backward() {
    let out = attnkit(&["list"]);
    let s = text(&out.stdout);
    let line = |name: &str| s.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap().to_string();
    for name in ["flash-cpu", "sdpa", "reference", "local", "linformer", "performer"] {
        assert!(line(name).contains(" backward "), "{}", line(name));
    }
    assert!(line("nystrom").contains(" fwd-only "), "{}", line("nystrom"));
}
