//! NVRTC compilation of the kernel source, and `ptxas -v` resource figures.
//!
//! Nothing here touches libnvrtc before [`nvrtc_available`] said it loads: cudarc panics, rather
//! than erroring, when the library is missing.

use crate::error::{AttnError, Result};
use std::ffi::CString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `Ok` when libnvrtc can be loaded (probed once per process).
pub fn nvrtc_available() -> std::result::Result<(), String> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: is_culib_present only tries to dlopen candidate library names and drops them.
    let present = *PRESENT.get_or_init(|| unsafe { cudarc::nvrtc::sys::is_culib_present() });
    if present {
        Ok(())
    } else {
        Err("libnvrtc not found (install a CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and put its lib folder on LD_LIBRARY_PATH)".to_string())
    }
}

/// Extra include dirs from `ATTNKIT_CUDA_INCLUDE` (colon-separated). The kernel includes no
/// header, so these are only passed through (for local experiments that add some).
pub fn include_paths() -> Vec<String> {
    std::env::var("ATTNKIT_CUDA_INCLUDE")
        .map(|s| s.split(':').filter(|p| !p.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Output of one NVRTC compile.
pub struct Compiled {
    pub ptx: String,
    /// SASS for the real arch (loaded on the GPU: a CUBIN does not need a driver new enough to
    /// JIT this NVRTC's PTX version).
    pub cubin: Option<Vec<u8>>,
}

/// Checks an arch string of the form `sm_80`, `sm_90a`.
pub fn validate_arch(arch: &str) -> Result<()> {
    let ok = arch.strip_prefix("sm_").is_some_and(|r| {
        r.len() >= 2
            && r.chars().take_while(|c| c.is_ascii_digit()).count() >= 2
            && r.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if ok { Ok(()) } else { Err(AttnError::invalid(format!("arch `{arch}` must look like sm_80 or sm_90a"))) }
}

/// Compiles `src` for `arch` with extra `-D` options; the error carries NVRTC's log.
pub fn compile(src: &str, arch: &str, defines: &[String]) -> Result<Compiled> {
    nvrtc_available().map_err(AttnError::Cuda)?;
    validate_arch(arch)?;
    let c_src = CString::new(src).map_err(|_| AttnError::Cuda("kernel source contains a NUL byte".into()))?;
    let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".to_string()];
    opts.extend(include_paths().into_iter().map(|p| format!("--include-path={p}")));
    opts.extend(defines.iter().cloned());
    let prog = Program(
        cudarc::nvrtc::result::create_program(&c_src, Some(c"flash_fwd.cu"))
            .map_err(|e| AttnError::Cuda(format!("nvrtcCreateProgram: {e:?}")))?,
    );
    // SAFETY: prog.0 was created above and is destroyed only by Program's Drop.
    if let Err(e) = unsafe { cudarc::nvrtc::result::compile_program(prog.0, &opts) } {
        // SAFETY: as above.
        let log = unsafe { cudarc::nvrtc::result::get_program_log(prog.0) }
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        return Err(AttnError::Cuda(format!("NVRTC failed for {arch} ({e:?}), options {opts:?}:\n{log}")));
    }
    // SAFETY: as above; the program compiled successfully.
    let ptx = unsafe { cudarc::nvrtc::result::get_ptx(prog.0) }
        .map_err(|e| AttnError::Cuda(format!("nvrtcGetPTX: {e:?}")))?;
    let cubin = get_cubin(&prog);
    Ok(Compiled { ptx: c_chars_to_string(&ptx), cubin })
}

struct Program(cudarc::nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: self.0 came from create_program and is destroyed exactly once, here.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
    }
}

fn get_cubin(prog: &Program) -> Option<Vec<u8>> {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: prog is a compiled program; size is a valid out-pointer.
    let r = unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: buf has exactly the size NVRTC reported for the CUBIN.
    let r = unsafe { sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()) };
    (r == sys::nvrtcResult::NVRTC_SUCCESS).then_some(buf)
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

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

/// Assembles `ptx` for `arch` and parses `-v` output per entry point.
pub fn run_ptxas(ptxas: &PathBuf, ptx: &str, arch: &str) -> Result<Vec<(String, PtxasInfo)>> {
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

    #[test]
    fn arch_strings_are_checked() {
        for ok in ["sm_80", "sm_90", "sm_90a", "sm_120"] {
            assert!(validate_arch(ok).is_ok(), "{ok}");
        }
        for bad in ["80", "sm_8", "compute_80", "sm_80;rm", ""] {
            assert!(validate_arch(bad).is_err(), "{bad}");
        }
    }
}
