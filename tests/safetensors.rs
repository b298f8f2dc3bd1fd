//! `attnkit run --safetensors` (feature `safetensors`): named f32/f16/bf16 tensors in, output and
//! LSE bitwise equal to the same backend called in-process, written as `.safetensors` or `.npy`;
//! bad files and names fail with one `error:` line naming the file, never a panic.

use attnkit::safetensors_io::{parse_tensor, read_tensor};
use attnkit::{AttnArgs, DType, Problem, Tensor};
use safetensors::{Dtype, tensor::TensorView};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attnkit(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnkit")).args(args).output().expect("spawn attnkit")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnkit-st-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn le_bytes(t: &Tensor) -> (Dtype, Vec<u8>) {
    match t {
        Tensor::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Tensor::BF16(v) => (Dtype::BF16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

/// Writes `(name, shape, tensor)` entries as one `.safetensors` file.
fn write(path: &Path, entries: &[(&str, Vec<usize>, &Tensor)]) {
    let bytes: Vec<(Dtype, Vec<u8>)> = entries.iter().map(|(_, _, t)| le_bytes(t)).collect();
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), (d, b))| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn run(dir: &Path, file: &str, names: [&str; 3], out: &str, extra: &[&str]) -> Output {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut args: Vec<String> = vec!["run".into(), "--backend".into(), "flash-cpu".into()];
    args.extend(["--safetensors".into(), p(file)]);
    for (flag, name) in ["--q", "--k", "--v"].iter().zip(names) {
        args.extend([flag.to_string(), name.to_string()]);
    }
    args.extend(["--out".into(), p(out)]);
    args.extend(extra.iter().map(|s| s.to_string()));
    attnkit(&args)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn run_reads_named_tensors_of_every_dtype() {
    let mut checked = 0;
    for dtype in DType::ALL {
        let dir = scratch(&format!("ok-{dtype}"));
        let p = Problem::new(2, 4, 12, 8).with_kv_heads(2).with_seq_k(10).with_dtype(dtype).with_causal(true);
        let (q, k, v) = attnkit::seeded::normal_qkv(&p, 5);
        let (qs, ks) = (vec![2, 4, 12, 8], vec![2, 2, 10, 8]);
        // Extra tensors around the named ones, as in a checkpoint.
        let other = Tensor::F32(vec![1.0; 3]);
        let entries =
            [("a.other", vec![3], &other), ("l0.q", qs.clone(), &q), ("l0.k", ks.clone(), &k), ("l0.v", ks, &v)];
        write(&dir.join("in.safetensors"), &entries);

        let lse = dir.join("lse.safetensors").display().to_string();
        let out = run(&dir, "in.safetensors", ["l0.q", "l0.k", "l0.v"], "o.safetensors", &["--causal", "--lse", &lse]);
        assert!(out.status.success(), "{dtype}: {}", String::from_utf8_lossy(&out.stderr));
        let args = AttnArgs::new(&p, q.as_ref(), k.as_ref(), v.as_ref()).unwrap();
        let direct = attnkit::backend("flash-cpu").unwrap().forward(&args, true).unwrap();
        let (o, shape) = read_tensor(dir.join("o.safetensors"), "out").unwrap();
        assert_eq!(shape, qs, "{dtype}");
        assert!(matches!(o, Tensor::F32(_)) && same_bits(&o.to_f32(), &direct.out), "{dtype}: output");
        let (l, lshape) = read_tensor(dir.join("lse.safetensors"), "lse").unwrap();
        assert_eq!(lshape, vec![2, 4, 12], "{dtype}");
        assert!(same_bits(&l.to_f32(), direct.lse.as_ref().unwrap()), "{dtype}: lse");

        // --out as .npy from safetensors input.
        let out = run(&dir, "in.safetensors", ["l0.q", "l0.k", "l0.v"], "o.npy", &["--causal"]);
        assert!(out.status.success(), "{dtype}: {}", String::from_utf8_lossy(&out.stderr));
        let (o, _) = attnkit::npy::read_tensor(dir.join("o.npy")).unwrap();
        assert!(same_bits(&o.to_f32(), &direct.out), "{dtype}: npy output");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// Each bad input (file contents and names) and a fragment of the one-line error.
#[test]
fn run_rejects_bad_files_and_names_with_one_line() {
    let dir = scratch("bad");
    let q = Tensor::F32(vec![0.5; 2 * 6 * 4]);
    let h = Tensor::from_f32(&[0.5; 48], DType::F16);
    let narrow = Tensor::F32(vec![0.5; 2 * 6 * 5]);
    write(
        &dir.join("good.safetensors"),
        &[("q", vec![2, 6, 4], &q), ("h", vec![2, 6, 4], &h), ("d5", vec![2, 6, 5], &narrow), ("flat", vec![48], &q)],
    );
    let f64_file = {
        let b: Vec<u8> = (0..48).flat_map(|i| (i as f64).to_le_bytes()).collect();
        safetensors::serialize(vec![("x", TensorView::new(Dtype::F64, vec![2, 6, 4], &b).unwrap())], None).unwrap()
    };
    std::fs::write(dir.join("f64.safetensors"), f64_file).unwrap();
    std::fs::write(dir.join("garbage.safetensors"), b"\x05\x00\x00\x00\x00\x00\x00\x00{oops").unwrap();
    let cases: [(&str, [&str; 3], &str); 7] = [
        ("missing.safetensors", ["q", "q", "q"], "cannot open"),
        ("garbage.safetensors", ["q", "q", "q"], "malformed"),
        ("good.safetensors", ["q", "nope", "q"], "no tensor named `nope`; the file holds: d5, flat, h, q"),
        ("f64.safetensors", ["x", "x", "x"], "dtype F64"),
        ("good.safetensors", ["q", "h", "h"], "share a dtype"),
        ("good.safetensors", ["q", "d5", "d5"], "head dim differs"),
        ("good.safetensors", ["flat", "flat", "flat"], "expected (B, H, N, D)"),
    ];
    for (file, names, want) in cases {
        let out = run(&dir, file, names, "o.safetensors", &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && !err.contains("panicked"), "{file} {names:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "`{}` lacks `{want}`", lines[0]);
    }
    // The library reader names the file in its error.
    let err = read_tensor(dir.join("garbage.safetensors"), "q").unwrap_err().to_string();
    assert!(err.starts_with("safetensors `") && err.contains("garbage.safetensors"), "{err}");
    assert!(parse_tensor(b"", "q").is_err());
}
