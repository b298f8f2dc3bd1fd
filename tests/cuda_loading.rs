//! How flash-cuda finds the driver and NVRTC, checked with stand-in libraries (no GPU needed):
//! `attnkit list` runs as a subprocess with a chosen `LD_LIBRARY_PATH` (the loader reads it at
//! start-up), and its driver/NVRTC lines and flash-cuda's availability are read back.
//!
//! Stand-in `libcuda` files are built here from a few lines of C: `cuDriverGetVersion` returns a
//! chosen version and `cuInit` a chosen status (34 = CUDA_ERROR_STUB_LIBRARY, 100 = no device).
//! NVRTC cases use the real wheels from `ATTNKIT_NVRTC_12`/`_13` (.ci/cuda-wheels.sh) and skip
//! without them, unless `ATTNKIT_REQUIRE_NVRTC=1`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-loading-{}", std::process::id())).join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds a stand-in libcuda at `path` (SONAME libcuda.so.1).
fn fake_libcuda(path: &Path, version: i32, init_status: i32) {
    let src = path.with_extension("c");
    std::fs::write(
        &src,
        format!(
            "int cuDriverGetVersion(int* v) {{ *v = {version}; return 0; }}\n\
             int cuInit(unsigned flags) {{ (void)flags; return {init_status}; }}\n"
        ),
    )
    .unwrap();
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let cc = cc::Build::new()
        .target(&target)
        .host(&target)
        .opt_level(0)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .get_compiler();
    let out = cc
        .to_command()
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(path)
        .arg(&src)
        .output()
        .expect("C compiler");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `attnkit list` with LD_LIBRARY_PATH = `lib_path` (and extra env); returns stdout.
fn list(lib_path: &[&Path], env: &[(&str, &str)]) -> String {
    let joined = std::env::join_paths(lib_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attnkit"));
    cmd.arg("list").env("LD_LIBRARY_PATH", joined).env_remove("ATTNKIT_NVRTC");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("attnkit list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
}

#[test]
fn a_toolkit_stub_is_refused_and_named() {
    let stubs = dir("a/stubs");
    let stub = stubs.join("libcuda.so.1");
    fake_libcuda(&stub, 13000, 34);
    let out = list(&[&stubs], &[]);
    let driver = line(&out, "CUDA driver:");
    assert!(driver.contains("stub") && driver.contains(&*stub.to_string_lossy()), "{driver}");
    let flash = line(&out, "flash-cuda");
    assert!(flash.contains("unavailable") && flash.contains("stub"), "{flash}");
}

#[test]
fn a_stub_libcuda_so_ahead_of_the_driver_is_named() {
    // cudarc tries `libcuda.so` before `libcuda.so.1`: a stub under that name would win.
    let (stubs, drv) = (dir("b/stubs"), dir("b/driver"));
    fake_libcuda(&stubs.join("libcuda.so"), 13000, 34);
    fake_libcuda(&drv.join("libcuda.so.1"), 13000, 100);
    let out = list(&[&stubs, &drv], &[]);
    let flash = line(&out, "flash-cuda");
    assert!(
        flash.contains("cudarc")
            && flash.contains("stub")
            && flash.contains(&*stubs.join("libcuda.so").to_string_lossy()),
        "{flash}"
    );
}

#[test]
fn driver_version_is_listed_and_no_device_is_said() {
    let drv = dir("c/driver");
    fake_libcuda(&drv.join("libcuda.so.1"), 12080, 100);
    let out = list(&[&drv], &[]);
    let driver = line(&out, "CUDA driver:");
    assert!(driver.contains(&*drv.join("libcuda.so.1").to_string_lossy()), "{driver}");
    assert!(driver.contains("CUDA driver API 12.8") && driver.contains("no CUDA device"), "{driver}");
    assert!(line(&out, "flash-cuda").contains("no CUDA device"), "{out}");
}

/// (NVRTC 12 lib, NVRTC 13 lib) from the environment, or `None` (skip unless required).
fn both_nvrtc() -> Option<(PathBuf, PathBuf)> {
    let get = |m: i32| std::env::var_os(format!("ATTNKIT_NVRTC_{m}")).map(PathBuf::from);
    match (get(12), get(13)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            let required = std::env::var("ATTNKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
            assert!(!required, "ATTNKIT_REQUIRE_NVRTC=1 but ATTNKIT_NVRTC_12/13 are not set");
            eprintln!("SKIPPED: ATTNKIT_NVRTC_12/13 not set (source .ci/cuda-wheels.sh)");
            None
        }
    }
}

#[test]
fn nvrtc_13_is_found_and_preferred_unless_the_driver_is_older() {
    let Some((n12, n13)) = both_nvrtc() else { return };
    let (d12, d13) = (n12.parent().unwrap(), n13.parent().unwrap());
    // No driver: the newest NVRTC on the loader path.
    let out = list(&[d12, d13], &[]);
    assert!(line(&out, "NVRTC:").starts_with("NVRTC: 13.0 ("), "{out}");
    // Only CUDA 13's: found by its .so.13 name (cudarc 0.19 for CUDA 12 never tries it).
    assert!(line(&list(&[d13], &[]), "NVRTC:").contains(&*n13.to_string_lossy()));
    // A CUDA 12.8 driver cannot load NVRTC 13's CUBINs: NVRTC 12 is chosen.
    let drv = dir("d/driver");
    fake_libcuda(&drv.join("libcuda.so.1"), 12080, 100);
    assert!(line(&list(&[&drv, d12, d13], &[]), "NVRTC:").starts_with("NVRTC: 12."), "driver 12.8");
}

#[test]
fn attnkit_nvrtc_overrides_the_search() {
    let Some((n12, _)) = both_nvrtc() else { return };
    let out = list(&[], &[("ATTNKIT_NVRTC", &n12.to_string_lossy())]);
    let nv = line(&out, "NVRTC:");
    assert!(nv.starts_with("NVRTC: 12.") && nv.contains(&*n12.to_string_lossy()), "{nv}");
    let out = list(&[], &[("ATTNKIT_NVRTC", "/nonexistent/libnvrtc.so.13")]);
    assert!(line(&out, "NVRTC:").contains("ATTNKIT_NVRTC: /nonexistent/libnvrtc.so.13"), "{out}");
}
