//! CUDA support shared by the `flash-cuda` backend, `attnkit kernels` and the tests: the
//! embedded kernel source, its variants and launch plan, NVRTC compilation, and the static
//! resource report (`ptxas -v`, theoretical occupancy).
//!
//! Nothing in this module needs a GPU; NVRTC is probed before use, so on a machine without
//! libnvrtc every entry point returns an error instead of panicking.

mod nvrtc;
mod variants;

pub use nvrtc::{
    Compiled, PtxasInfo, compile, include_paths, nvrtc_available, parse_ptxas, ptxas_path, run_ptxas, validate_arch,
};
pub use variants::{FlashLaunch, HEAD_DIMS, THREADS, Variant, unsupported_reasons, variant_for, variants};

use crate::error::{AttnError, Result};
use serde::Serialize;

/// The forward kernel's source, compiled at run time by NVRTC.
pub const FLASH_FWD_SRC: &str = include_str!("../../kernels/flash_fwd.cu");

/// Static figures of one kernel variant compiled for one arch.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCompileReport {
    pub kernel: String,
    pub arch: String,
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

/// Compiles every kernel variant for every arch in `archs` through NVRTC and, when `ptxas` is on
/// PATH, assembles the PTX and reports registers, spills, shared memory and occupancy.
///
/// Errors (instead of panicking) when libnvrtc is absent or an arch string is malformed. A
/// variant that fails to compile is reported with `compiled: false` and NVRTC's log.
pub fn compile_report(archs: &[String]) -> Result<Vec<KernelCompileReport>> {
    for a in archs {
        validate_arch(a)?;
    }
    nvrtc_available().map_err(AttnError::Cuda)?;
    let ptxas = ptxas_path();
    let mut reports = Vec::new();
    for arch in archs {
        // One module with every variant; per-variant compiles only to attribute a failure.
        let whole = compile(FLASH_FWD_SRC, arch, &[]);
        let mut per_entry = Vec::new();
        let mut ptxas_err = None;
        if let (Ok(c), Some(px)) = (&whole, &ptxas) {
            match run_ptxas(px, &c.ptx, arch) {
                Ok(v) => per_entry = v,
                Err(e) => ptxas_err = Some(e.to_string()),
            }
        }
        for v in variants() {
            let name = v.kernel_name();
            let error = match &whole {
                Ok(_) => ptxas_err.clone(),
                Err(_) => compile(FLASH_FWD_SRC, arch, &v.only_defines()).err().map(|e| e.to_string()),
            };
            let compiled = whole.is_ok() || error.is_none();
            let info = per_entry.iter().find(|(n, _)| *n == name).map(|(_, i)| i.clone());
            let shared = v.smem_bytes() as u32 + info.as_ref().map_or(0, |i| i.static_smem);
            let occ = info.as_ref().map(|i| theoretical_occupancy(arch, i.registers, shared, THREADS));
            reports.push(KernelCompileReport {
                kernel: name,
                arch: arch.clone(),
                compiled,
                error,
                registers: info.as_ref().map(|i| i.registers),
                spill_bytes: info.as_ref().map(|i| i.spill_stores + i.spill_loads),
                shared_bytes: Some(shared),
                ptxas: info.is_some(),
                block_threads: THREADS,
                blocks_per_sm: occ.map(|o| o.0),
                occupancy: occ.map(|o| o.1),
            });
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_follows_registers_and_smem() {
        // 248 regs · 32 = 7936 → 8 warps by registers → 2 blocks of 4 warps on sm_80.
        assert_eq!(theoretical_occupancy("sm_80", 248, 52_224, 128), (2, 0.125));
        // 64 regs: registers allow 8 blocks, 100 KB smem blocks allow 1.
        assert_eq!(theoretical_occupancy("sm_80", 64, 100_000, 128).0, 1);
        assert_eq!(theoretical_occupancy("sm_90", 32, 0, 128).0, 16);
    }
}
