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
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// The static cost table of kernels/README.md (markdown): every toolchain named by
    /// ATTNKIT_NVRTC_12/ATTNKIT_PTXAS_12 and ATTNKIT_NVRTC_13/ATTNKIT_PTXAS_13 (as
    /// .ci/cuda-wheels.sh sets them), or the default NVRTC when neither is set.
    #[arg(long)]
    pub markdown: bool,
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: &KernelsArgs) -> Result<ExitCode, AttnError> {
    for arch in &a.arch {
        attnkit::cuda::validate_arch(arch)?;
    }
    Err(AttnError::Cuda("this attnkit was built without the `cuda` feature (no NVRTC); rebuild with it".into()))
}

/// The cost table over every toolchain the environment names (see [`KernelsArgs::markdown`]).
#[cfg(feature = "cuda")]
fn markdown(a: &KernelsArgs) -> Result<ExitCode, AttnError> {
    use attnkit::cuda::{Nvrtc, compile_report_with, cost_table_markdown, variants};
    for arch in &a.arch {
        attnkit::cuda::validate_arch(arch)?;
    }
    let mut toolchains = Vec::new();
    for major in [12, 13] {
        let var = |what: &str| std::env::var_os(format!("ATTNKIT_{what}_{major}")).map(std::path::PathBuf::from);
        let (Some(lib), Some(ptxas)) = (var("NVRTC"), var("PTXAS")) else {
            continue;
        };
        let nvrtc = Nvrtc::load(&lib).map_err(AttnError::Cuda)?;
        let name = format!("CUDA {}.{}", nvrtc.version().0, nvrtc.version().1);
        toolchains.push((name, compile_report_with(&nvrtc, Some(&ptxas), &a.arch)?));
    }
    if toolchains.is_empty() {
        let nvrtc = attnkit::cuda::nvrtc().map_err(AttnError::Cuda)?;
        toolchains.push((
            format!("CUDA {}.{}", nvrtc.version().0, nvrtc.version().1),
            attnkit::cuda::compile_report(&a.arch)?,
        ));
    }
    outln!("{}", cost_table_markdown(&variants(), &toolchains, &a.arch).trim_end())?;
    let bad: Vec<String> = toolchains
        .iter()
        .flat_map(|(t, r)| r.iter().map(move |r| (t, r)))
        .filter(|(_, r)| !r.compiled || r.spill_bytes != Some(0))
        .map(|(t, r)| format!("{} {} ({t})", r.kernel, r.arch))
        .collect();
    if !bad.is_empty() {
        return Err(AttnError::Cuda(format!("failed to compile, spilled or had no ptxas figures: {}", bad.join(", "))));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "cuda")]
pub fn run(a: &KernelsArgs) -> Result<ExitCode, AttnError> {
    // A bad arch is refused before NVRTC is even looked for.
    for arch in &a.arch {
        attnkit::cuda::validate_arch(arch)?;
    }
    if a.markdown {
        return markdown(a);
    }
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
