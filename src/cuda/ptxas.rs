//! `ptxas -v` resource figures of NVRTC's PTX: registers, spills, static shared memory.
//!
//! ptxas must come from the same CUDA major as the NVRTC that wrote the PTX (ptxas 12 cannot
//! assemble NVRTC 13's PTX ISA): [`ptxas_for`] picks one of the right major.

use super::validate_arch;
use crate::error::{AttnError, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Per-entry resource usage printed by `ptxas -v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasInfo {
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
    pub static_smem: u32,
}

/// `ptxas` found on PATH, if any.
pub fn ptxas_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}

/// The CUDA major version of a ptxas (`ptxas --version`: "Cuda compilation tools, release 13.0").
pub fn ptxas_major(ptxas: &Path) -> Option<i32> {
    let out = Command::new(ptxas).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("release ").nth(1)?.split('.').next()?.trim().parse().ok()
}

/// A ptxas of CUDA major `major`: `ATTNKIT_PTXAS`, the `bin/ptxas` beside the NVRTC library's
/// folder (toolkit and wheel layouts alike), or the one on PATH — the first of that major.
pub fn ptxas_for(major: i32, nvrtc_lib: &Path) -> Option<PathBuf> {
    let beside = nvrtc_lib.parent().and_then(Path::parent).map(|root| root.join("bin/ptxas"));
    let env = std::env::var_os("ATTNKIT_PTXAS").filter(|p| !p.is_empty()).map(PathBuf::from);
    [env, beside, ptxas_path()].into_iter().flatten().find(|p| p.is_file() && ptxas_major(p) == Some(major))
}

/// Assembles `ptx` for `arch` and parses `-v` output per entry point.
pub fn run_ptxas(ptxas: &Path, ptx: &str, arch: &str) -> Result<Vec<(String, PtxasInfo)>> {
    validate_arch(arch)?;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("attnkit-{}-{n}-{arch}.ptx", std::process::id()));
    std::fs::write(&file, ptx)?;
    let out = Command::new(ptxas).arg(format!("-arch={arch}")).arg("-v").arg(&file).arg("-o").arg("/dev/null").output();
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(AttnError::Cuda(format!("ptxas -arch={arch} failed:\n{text}")));
    }
    Ok(parse_ptxas(&text))
}

fn number_before(line: &str, suffix: &str) -> Option<u32> {
    let idx = line.find(suffix)?;
    line[..idx].split_whitespace().last()?.parse().ok()
}

/// Parses `ptxas -v` text into (entry, info) in the order printed.
pub fn parse_ptxas(text: &str) -> Vec<(String, PtxasInfo)> {
    let mut out: Vec<(String, PtxasInfo)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push((name, PtxasInfo::default()));
            continue;
        }
        let Some((_, info)) = out.last_mut() else {
            continue;
        };
        if line.contains("spill stores") {
            info.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            info.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            info.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            info.registers = number_before(line, "registers").unwrap_or(0);
            info.static_smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'flash_fwd_f16_d64' for 'sm_80'\n\
ptxas info    : Function properties for flash_fwd_f16_d64\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 251 registers, used 1 barriers, 1024 bytes smem, 424 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'k2' for 'sm_80'\n\
ptxas info    : Function properties for k2\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 40 registers, 424 bytes cmem[0]\n";
        let got = parse_ptxas(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "flash_fwd_f16_d64");
        assert_eq!(
            got[0].1,
            PtxasInfo { registers: 251, spill_stores: 4, spill_loads: 12, stack_bytes: 8, static_smem: 1024 }
        );
        assert_eq!(got[1].1, PtxasInfo { registers: 40, ..Default::default() });
    }
}
