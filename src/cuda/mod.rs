//! CUDA support shared by the `flash-cuda` backend, `attnkit kernels` and the tests: the
//! embedded kernel source, its variants and launch plan, NVRTC compilation, and the static
//! resource report (`ptxas -v`, theoretical occupancy).
//!
//! Nothing in this module needs a GPU; NVRTC is probed before use, so on a machine without
//! libnvrtc every entry point returns an error instead of panicking. The launch plan, the kernel
//! argument and the ptxas parser build without the `cuda` feature (the emulator tests use them);
//! the driver probe, NVRTC and [`compile_report`] need it.

mod bwd;
mod cost;
#[cfg(feature = "cuda")]
mod driver;
#[cfg(feature = "cuda")]
mod nvrtc;
mod params;
mod ptxas;
mod variants;

pub use bwd::{
    BWD_CONVERT_KERNEL, BWD_DSINK_KERNEL, BWD_PREPROCESS_KERNEL, BWD_ROWS_PER_BLOCK, BWD_THREADS, BwdVariant,
    FLASH_BWD_SRC, FlashBwdLaunch, FlashBwdParams, MAX_BWD_SPLITS, bwd_variant_for, bwd_variants,
};
pub use cost::{TileCost, ToolchainReport, cost_table_markdown};
#[cfg(feature = "cuda")]
pub use driver::{DriverInfo, driver_info};
#[cfg(feature = "cuda")]
pub use nvrtc::{Compiled, Nvrtc, compile, find_nvrtc, include_paths, nvrtc, nvrtc_available};
pub use params::FlashFwdParams;
pub use ptxas::{PtxasInfo, parse_ptxas, ptxas_for, ptxas_major, ptxas_path, run_ptxas};
pub use variants::{
    COMBINE_ROWS_PER_BLOCK, DEFAULT_SMS, FlashLaunch, HEAD_DIMS, MAX_SPLITS, ModData, THREADS, Variant,
    unsupported_reasons, variant_for, variants,
};

use crate::error::{AttnError, Result};
use serde::Serialize;

/// The kernels' source, compiled at run time by NVRTC: the GPU primitives (inline PTX), the
/// forward kernel, and the split-KV combine kernel (it uses the forward kernel's parameter
/// struct and the primitives).
pub const FLASH_FWD_SRC: &str = concat!(
    include_str!("../../kernels/flash_ptx.cuh"),
    include_str!("../../kernels/flash_common.cuh"),
    include_str!("../../kernels/flash_fwd.cu"),
    include_str!("../../kernels/flash_combine.cu")
);

/// Entry point that merges split-KV partials; present in every module compiled from
/// [`FLASH_FWD_SRC`].
pub const COMBINE_KERNEL: &str = "flash_combine";

/// Checks an arch string of the form `sm_80`, `sm_90a`.
pub fn validate_arch(arch: &str) -> Result<()> {
    let ok = arch.strip_prefix("sm_").is_some_and(|r| {
        r.len() >= 2
            && r.chars().take_while(|c| c.is_ascii_digit()).count() >= 2
            && r.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if ok { Ok(()) } else { Err(AttnError::invalid(format!("arch `{arch}` must look like sm_80 or sm_90a"))) }
}

/// Static figures of one kernel variant compiled for one arch.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCompileReport {
    pub kernel: String,
    pub arch: String,
    /// NVRTC version that compiled it, "major.minor".
    pub nvrtc: String,
    pub compiled: bool,
    pub error: Option<String>,
    /// Registers per thread (`ptxas -v`).
    pub registers: Option<u32>,
    /// Spill stores + spill loads, bytes (`ptxas -v`).
    pub spill_bytes: Option<u32>,
    /// Shared memory per block: the dynamic smem the launch requests plus any static smem.
    pub shared_bytes: Option<u32>,
    /// Whether ptxas ran (registers/spills are `None` without it).
    pub ptxas: bool,
    /// Threads per block.
    pub block_threads: u32,
    /// Resident blocks per SM that registers and shared memory allow (needs ptxas).
    pub blocks_per_sm: Option<u32>,
    /// Resident warps / the SM's maximum warps (needs ptxas).
    pub occupancy: Option<f64>,
}

/// Per-SM limits used for the theoretical occupancy (CUDA occupancy calculator values).
struct SmLimits {
    regs: u32,
    max_warps: u32,
    max_blocks: u32,
    smem: u32,
    smem_per_block_reserved: u32,
}

fn sm_limits(arch: &str) -> SmLimits {
    let digits: String = arch.trim_start_matches("sm_").chars().take_while(char::is_ascii_digit).collect();
    let cc: u32 = digits.parse().unwrap_or(80);
    match cc {
        86 | 87 | 89 => {
            SmLimits { regs: 65_536, max_warps: 48, max_blocks: 16, smem: 102_400, smem_per_block_reserved: 1024 }
        }
        90 | 100 | 103 => {
            SmLimits { regs: 65_536, max_warps: 64, max_blocks: 32, smem: 233_472, smem_per_block_reserved: 1024 }
        }
        120 | 121 => {
            SmLimits { regs: 65_536, max_warps: 48, max_blocks: 32, smem: 102_400, smem_per_block_reserved: 1024 }
        }
        _ => SmLimits { regs: 65_536, max_warps: 64, max_blocks: 32, smem: 167_936, smem_per_block_reserved: 1024 },
    }
}

/// (blocks per SM, occupancy) from registers per thread and shared bytes per block.
pub fn theoretical_occupancy(arch: &str, registers: u32, shared_bytes: u32, threads: u32) -> (u32, f64) {
    let lim = sm_limits(arch);
    let warps_per_block = threads.div_ceil(32);
    // Registers are allocated per warp in units of 256.
    let regs_per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = (lim.regs / regs_per_warp) / warps_per_block;
    let by_smem = lim.smem / (shared_bytes + lim.smem_per_block_reserved);
    let by_warps = lim.max_warps / warps_per_block;
    let blocks = by_regs.min(by_smem).min(by_warps).min(lim.max_blocks);
    (blocks, (blocks * warps_per_block) as f64 / lim.max_warps as f64)
}

/// Compiles every kernel variant (forward variants and `flash_combine`, then backward variants and
/// their preprocess/convert/dsink kernels, per arch) for every arch in
/// `archs` through NVRTC and, when `ptxas` is on PATH, assembles the PTX and reports registers,
/// spills, shared memory and occupancy.
///
/// Errors (instead of panicking) when libnvrtc is absent or an arch string is malformed. A
/// variant that fails to compile is reported with `compiled: false` and NVRTC's log.
#[cfg(feature = "cuda")]
pub fn compile_report(archs: &[String]) -> Result<Vec<KernelCompileReport>> {
    for a in archs {
        validate_arch(a)?;
    }
    let nvrtc = nvrtc().map_err(AttnError::Cuda)?;
    compile_report_with(nvrtc, ptxas_for(nvrtc.version().0, nvrtc.path()).as_deref(), archs)
}

/// [`compile_report`] with a given NVRTC and ptxas (ptxas must be of NVRTC's CUDA major: an
/// older one rejects the newer PTX ISA).
#[cfg(feature = "cuda")]
pub fn compile_report_with(
    nvrtc: &Nvrtc,
    ptxas: Option<&std::path::Path>,
    archs: &[String],
) -> Result<Vec<KernelCompileReport>> {
    for a in archs {
        validate_arch(a)?;
    }
    let mut reports = Vec::new();
    for arch in archs {
        // The forward module: every variant, then flash_combine (in every module).
        let mut fwd: Vec<Entry> = variants()
            .iter()
            .map(|v| (v.kernel_name(), v.smem_bytes() as u32, THREADS, Some(v.only_defines())))
            .collect();
        fwd.push((COMBINE_KERNEL.to_string(), 0, 32 * COMBINE_ROWS_PER_BLOCK as u32, None));
        reports.extend(module_rows(nvrtc, ptxas, arch, FLASH_FWD_SRC, &fwd));
        // The backward module: every main variant, then its three helpers (in every module).
        let mut bwd: Vec<Entry> = bwd_variants()
            .iter()
            .map(|v| (v.kernel_name(), v.smem_bytes() as u32, BWD_THREADS, Some(v.only_defines())))
            .collect();
        bwd.push((BWD_PREPROCESS_KERNEL.to_string(), 0, 32 * BWD_ROWS_PER_BLOCK as u32, None));
        bwd.push((BWD_CONVERT_KERNEL.to_string(), 0, BWD_THREADS, None));
        bwd.push((BWD_DSINK_KERNEL.to_string(), 4 * BWD_THREADS, BWD_THREADS, None));
        reports.extend(module_rows(nvrtc, ptxas, arch, FLASH_BWD_SRC, &bwd));
    }
    Ok(reports)
}

/// One entry point of a module: (name, dynamic smem bytes, threads per block, the defines that
/// compile it alone, or `None` for an entry present in every module of the source).
#[cfg(feature = "cuda")]
type Entry = (String, u32, u32, Option<Vec<String>>);

/// Compiles `src` whole for `arch` (per entry only to attribute a failure) and reports each entry.
#[cfg(feature = "cuda")]
fn module_rows(
    nvrtc: &Nvrtc,
    ptxas: Option<&std::path::Path>,
    arch: &str,
    src: &str,
    entries: &[Entry],
) -> Vec<KernelCompileReport> {
    let whole = nvrtc.compile(src, arch, &[]);
    let mut per_entry = Vec::new();
    let mut ptxas_err = None;
    if let (Ok(c), Some(px)) = (&whole, ptxas) {
        match run_ptxas(px, &c.ptx, arch) {
            Ok(v) => per_entry = v,
            Err(e) => ptxas_err = Some(e.to_string()),
        }
    }
    entries
        .iter()
        .map(|(kernel, dyn_smem, threads, defines)| {
            let error = match (&whole, defines) {
                (Ok(_), _) => ptxas_err.clone(),
                (Err(e), None) => Some(e.to_string()),
                (Err(_), Some(d)) => nvrtc.compile(src, arch, d).err().map(|e| e.to_string()),
            };
            let compiled = whole.is_ok() || (defines.is_some() && error.is_none());
            let info = per_entry.iter().find(|(n, _)| n == kernel).map(|(_, i)| i.clone());
            let shared = dyn_smem + info.as_ref().map_or(0, |i| i.static_smem);
            let occ = info.as_ref().map(|i| theoretical_occupancy(arch, i.registers, shared, *threads));
            KernelCompileReport {
                kernel: kernel.clone(),
                arch: arch.to_string(),
                nvrtc: format!("{}.{}", nvrtc.version().0, nvrtc.version().1),
                compiled,
                error,
                registers: info.as_ref().map(|i| i.registers),
                spill_bytes: info.as_ref().map(|i| i.spill_stores + i.spill_loads),
                shared_bytes: Some(shared),
                ptxas: info.is_some(),
                block_threads: *threads,
                blocks_per_sm: occ.map(|o| o.0),
                occupancy: occ.map(|o| o.1),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_strings_are_checked() {
        for ok in ["sm_80", "sm_90", "sm_90a", "sm_120"] {
            assert!(validate_arch(ok).is_ok(), "{ok}");
        }
        for bad in ["80", "sm_8", "compute_80", "sm_80;rm", ""] {
            assert!(validate_arch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn occupancy_follows_registers_and_smem() {
        // 248 regs · 32 = 7936 → 8 warps by registers → 2 blocks of 4 warps on sm_80.
        assert_eq!(theoretical_occupancy("sm_80", 248, 52_224, 128), (2, 0.125));
        // 64 regs: registers allow 8 blocks, 100 KB smem blocks allow 1.
        assert_eq!(theoretical_occupancy("sm_80", 64, 100_000, 128).0, 1);
        assert_eq!(theoretical_occupancy("sm_90", 32, 0, 128).0, 16);
    }
}
