//! NVRTC compiles every flash-cuda kernel variant for sm_80 and sm_90, and (when `ptxas` is on
//! PATH) the assembled kernels spill nothing.
//!
//! Without libnvrtc these tests print why and skip; with `ATTNKIT_REQUIRE_NVRTC=1` (CI) a missing
//! libnvrtc or ptxas is a failure instead. See .ci/cuda-wheels.sh for the CPU-only setup.

use attnkit::cuda::{FLASH_FWD_SRC, compile, compile_report, nvrtc_available, ptxas_path, variants};

fn required() -> bool {
    std::env::var("ATTNKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// `true` when NVRTC can run; otherwise skips (prints why) or fails under ATTNKIT_REQUIRE_NVRTC=1.
fn nvrtc_or_skip() -> bool {
    match nvrtc_available() {
        Ok(()) => true,
        Err(why) if required() => panic!("ATTNKIT_REQUIRE_NVRTC=1 but {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

#[test]
fn every_variant_compiles_for_sm80_and_sm90_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    let archs = ["sm_80".to_string(), "sm_90".to_string()];
    let reports = compile_report(&archs).expect("compile_report");
    assert_eq!(reports.len(), archs.len() * variants().len());
    for r in &reports {
        assert!(r.compiled, "{} for {} failed: {:?}", r.kernel, r.arch, r.error);
    }
    if ptxas_path().is_none() {
        assert!(!required(), "ATTNKIT_REQUIRE_NVRTC=1 but ptxas is not on PATH (needed for the spill check)");
        eprintln!("SKIPPED (spill check only): ptxas not on PATH");
        return;
    }
    eprintln!("{:<22} {:<6} {:>5} {:>6} {:>7} {:>7} {:>6}", "kernel", "arch", "regs", "spill", "smem", "blk/SM", "occ");
    for r in &reports {
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
        assert_eq!(r.spill_bytes, Some(0), "{} {} spills", r.kernel, r.arch);
        assert!((1..=255).contains(&regs), "{} {}: {regs} registers", r.kernel, r.arch);
        assert!(r.blocks_per_sm.unwrap_or(0) >= 1, "{} {} cannot be resident", r.kernel, r.arch);
    }
}

#[test]
fn single_variant_module_holds_only_that_entry_and_a_cubin() {
    if !nvrtc_or_skip() {
        return;
    }
    let v = variants().into_iter().find(|v| v.bf16 && v.dp == 128).expect("bf16 d128 variant");
    let c = compile(FLASH_FWD_SRC, "sm_80", &v.only_defines()).expect("compile");
    assert!(c.ptx.contains(&format!(".entry {}(", v.kernel_name())), "entry missing");
    assert_eq!(c.ptx.matches(".entry ").count(), 1, "FLASH_ONLY_* should restrict the module to one entry");
    assert!(c.ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "bf16 mma missing");
    assert!(c.cubin.as_ref().is_some_and(|b| b.starts_with(b"\x7fELF")), "no CUBIN for a real arch");
}

#[test]
fn bad_arch_is_a_typed_error_everywhere() {
    // Checked before NVRTC is touched, so this runs on any machine.
    let e = compile_report(&["sm_80; rm -rf /".to_string()]).unwrap_err();
    assert!(e.to_string().contains("must look like sm_80"), "{e}");
}
