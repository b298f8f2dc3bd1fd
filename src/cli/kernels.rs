//! `attnkit kernels`: NVRTC compile (and ptxas resource report) of every CUDA kernel variant.

use attnkit::AttnError;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Target architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90")]
    pub arch: Vec<String>,
    /// One JSON object per variant and arch.
    #[arg(long)]
    pub json: bool,
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: &KernelsArgs) -> Result<ExitCode, AttnError> {
    for arch in &a.arch {
        attnkit::cuda::validate_arch(arch)?;
    }
    Err(AttnError::Cuda("this attnkit was built without the `cuda` feature (no NVRTC); rebuild with it".into()))
}

#[cfg(feature = "cuda")]
pub fn run(a: &KernelsArgs) -> Result<ExitCode, AttnError> {
    let nvrtc = attnkit::cuda::nvrtc().map_err(AttnError::Cuda)?;
    if !a.json {
        outln!("NVRTC {}.{}: {}", nvrtc.version().0, nvrtc.version().1, nvrtc.path().display())?;
    }
    let reports = attnkit::cuda::compile_report(&a.arch)?;
    let opt = |x: Option<u32>| x.map_or("-".to_string(), |v| v.to_string());
    if !a.json {
        outln!(
            "{:<22} {:<6} {:<8} {:>5} {:>7} {:>8} {:>10}",
            "kernel",
            "arch",
            "compiled",
            "regs",
            "spill_B",
            "smem_B",
            "occupancy"
        )?;
    }
    let mut bad = 0;
    for r in &reports {
        if !r.compiled || r.spill_bytes.is_some_and(|s| s > 0) {
            bad += 1;
        }
        if a.json {
            outln!("{}", serde_json::to_string(r).map_err(|e| AttnError::invalid(e.to_string()))?)?;
        } else {
            let occ = r.occupancy.map_or("-".to_string(), |o| format!("{:.1}%", o * 100.0));
            outln!(
                "{:<22} {:<6} {:<8} {:>5} {:>7} {:>8} {:>10}{}",
                r.kernel,
                r.arch,
                if r.compiled { "yes" } else { "NO" },
                opt(r.registers),
                opt(r.spill_bytes),
                opt(r.shared_bytes),
                occ,
                r.error.as_ref().map(|e| format!("  error: {}", e.lines().next().unwrap_or(""))).unwrap_or_default()
            )?;
        }
    }
    if !a.json && reports.iter().all(|r| !r.ptxas) {
        outln!("(ptxas not on PATH: registers and spills not reported)")?;
    }
    if bad > 0 {
        return Err(AttnError::Cuda(format!("{bad} kernel variant(s) failed to compile or spill registers")));
    }
    Ok(ExitCode::SUCCESS)
}
