//! NVRTC compiles every flash-cuda kernel variant for sm_80 and sm_90 with each CUDA major the
//! project supports (12 and 13), each library loaded explicitly by path, and the assembled
//! kernels (ptxas of the same major) spill nothing.
//!
//! Toolkits come from `ATTNKIT_NVRTC_12`/`ATTNKIT_PTXAS_12` and `ATTNKIT_NVRTC_13`/
//! `ATTNKIT_PTXAS_13` (set by .ci/cuda-wheels.sh). A missing one is skipped with a message; with
//! `ATTNKIT_REQUIRE_NVRTC=1` (CI) both majors, their ptxas, and the process-wide NVRTC are required.
#![cfg(feature = "cuda")]

use attnkit::cuda::{
    FLASH_BWD_SRC, FLASH_FWD_SRC, Nvrtc, bwd_variants, compile, compile_report, compile_report_with, nvrtc, variants,
};
use std::path::PathBuf;

fn required() -> bool {
    std::env::var("ATTNKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// Prints why and returns `false`, or fails under ATTNKIT_REQUIRE_NVRTC=1.
fn skip(why: &str) -> bool {
    assert!(!required(), "ATTNKIT_REQUIRE_NVRTC=1 but {why}");
    eprintln!("SKIPPED: {why}");
    false
}

/// (NVRTC library, ptxas) of CUDA `major` from the environment.
fn toolkit(major: i32) -> Option<(PathBuf, PathBuf)> {
    let var = |what: &str| std::env::var_os(format!("ATTNKIT_{what}_{major}")).map(PathBuf::from);
    Some((var("NVRTC")?, var("PTXAS")?))
}

/// Report rows per arch: forward variants + flash_combine, backward variants + preprocess,
/// convert and dsink.
fn rows_per_arch() -> usize {
    variants().len() + 1 + bwd_variants().len() + 3
}

fn check_all_variants(major: i32) -> usize {
    let Some((lib, ptxas)) = toolkit(major) else {
        skip(&format!("ATTNKIT_NVRTC_{major} / ATTNKIT_PTXAS_{major} not set"));
        return 0;
    };
    let nvrtc = Nvrtc::load(&lib).unwrap_or_else(|e| panic!("loading {}: {e}", lib.display()));
    assert_eq!(nvrtc.version().0, major, "{} is NVRTC {:?}", lib.display(), nvrtc.version());
    assert_eq!(attnkit::cuda::ptxas_major(&ptxas), Some(major), "{} is not ptxas {major}", ptxas.display());
    let archs = ["sm_80".to_string(), "sm_90".to_string()];
    let reports = compile_report_with(&nvrtc, Some(&ptxas), &archs).expect("compile_report");
    assert_eq!(reports.len(), archs.len() * rows_per_arch(), "every forward and backward kernel per arch");
    eprintln!("NVRTC {:?} from {}, ptxas {}", nvrtc.version(), nvrtc.path().display(), ptxas.display());
    eprintln!("{:<22} {:<6} {:>5} {:>6} {:>7} {:>7} {:>6}", "kernel", "arch", "regs", "spill", "smem", "blk/SM", "occ");
    for r in &reports {
        assert!(r.compiled, "{} for {} failed: {:?}", r.kernel, r.arch, r.error);
        assert!(r.ptxas, "{} {}: ptxas figures missing ({:?})", r.kernel, r.arch, r.error);
        let regs = r.registers.expect("registers");
        eprintln!(
            "{:<22} {:<6} {:>5} {:>6} {:>7} {:>7} {:>5.0}%",
            r.kernel,
            r.arch,
            regs,
            r.spill_bytes.unwrap_or(0),
            r.shared_bytes.unwrap_or(0),
            r.blocks_per_sm.unwrap_or(0),
            100.0 * r.occupancy.unwrap_or(0.0)
        );
        assert_eq!(r.spill_bytes, Some(0), "{} {} spills with CUDA {major}", r.kernel, r.arch);
        assert!((1..=255).contains(&regs), "{} {}: {regs} registers", r.kernel, r.arch);
        assert!(r.blocks_per_sm.unwrap_or(0) >= 1, "{} {} cannot be resident", r.kernel, r.arch);
    }
    reports.len()
}

#[test]
fn every_variant_compiles_with_nvrtc_12_without_spills() {
    let n = check_all_variants(12);
    assert!(n == 0 || n == 2 * rows_per_arch(), "checked {n}");
}

#[test]
fn every_variant_compiles_with_nvrtc_13_without_spills() {
    let n = check_all_variants(13);
    assert!(n == 0 || n == 2 * rows_per_arch(), "checked {n}");
}

#[test]
fn single_variant_module_holds_only_that_entry_and_a_cubin() {
    if let Err(why) = nvrtc() {
        skip(&why);
        return;
    }
    // The _mods entry point of one variant compiles alone too (empty vs `_mods` name suffix).
    let m = variants().into_iter().find(|v| v.bf16 && v.dp == 48 && v.mods).expect("bf16 d48 _mods variant");
    let c = compile(FLASH_FWD_SRC, "sm_80", &m.only_defines()).expect("compile _mods");
    assert!(c.ptx.contains(&format!(".entry {}(", m.kernel_name())), "{} missing", m.kernel_name());
    assert_eq!(c.ptx.matches(".entry ").count(), 2, "FLASH_ONLY_* should leave one _mods variant (+ combine)");
    let v = variants().into_iter().find(|v| v.bf16 && v.dp == 128 && !v.mods).expect("bf16 d128 variant");
    let c = compile(FLASH_FWD_SRC, "sm_80", &v.only_defines()).expect("compile");
    assert!(c.ptx.contains(&format!(".entry {}(", v.kernel_name())), "entry missing");
    assert!(c.ptx.contains(&format!(".entry {}(", attnkit::cuda::COMBINE_KERNEL)), "combine kernel missing");
    assert_eq!(c.ptx.matches(".entry ").count(), 2, "FLASH_ONLY_* should leave one variant (+ flash_combine)");
    assert!(c.ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "bf16 mma missing");
    // One by-value struct argument of FlashFwdParams' size (152 bytes), not 26 scalars.
    let size = std::mem::size_of::<attnkit::cuda::FlashFwdParams>();
    assert!(
        c.ptx.contains(&format!(".param .align 8 .b8 {}_param_0[{size}]", v.kernel_name())),
        "by-value param missing"
    );
    assert!(!c.ptx.contains("_param_1"), "more than one kernel parameter");
    assert!(c.cubin.as_ref().is_some_and(|b| b.starts_with(b"\x7fELF")), "no CUBIN for a real arch");
    // The backward module of one variant: that main entry point and its three helpers.
    let b = bwd_variants().into_iter().find(|v| v.bf16 && v.dp == 80).expect("bf16 d80 backward variant");
    let c = compile(FLASH_BWD_SRC, "sm_80", &b.only_defines()).expect("compile backward");
    assert!(c.ptx.contains(&format!(".entry {}(", b.kernel_name())), "backward entry missing");
    assert_eq!(c.ptx.matches(".entry ").count(), 4, "FLASH_BWD_ONLY_* should leave one variant + 3 helpers");
    let size = std::mem::size_of::<attnkit::cuda::FlashBwdParams>();
    assert!(c.ptx.contains(&format!(".param .align 8 .b8 {}_param_0[{size}]", b.kernel_name())), "by-value param");
}

#[test]
fn bad_arch_is_a_typed_error_everywhere() {
    // Checked before NVRTC is touched, so this runs on any machine.
    let e = compile_report(&["sm_80; rm -rf /".to_string()]).unwrap_err();
    assert!(e.to_string().contains("must look like sm_80"), "{e}");
}

#[test]
fn kernels_subcommand_reports_every_variant_as_json() {
    if let Err(why) = nvrtc() {
        skip(&why);
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attnkit"))
        .args(["kernels", "--arch", "sm_80", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), rows_per_arch(), "one line per kernel: forward + flash_combine, backward + 3 helpers");
    for v in &lines {
        for key in ["kernel", "arch", "nvrtc", "compiled", "registers", "spill_bytes", "shared_bytes"] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["compiled"], true);
    }
}
