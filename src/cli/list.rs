//! `attnkit list`: every backend, whether it has a backward pass (`backward`, or `fwd-only`)
//! and its availability, then what the CUDA backend found (the
//! driver library and its version, the NVRTC library and its version), so a GPU host's setup can
//! be read off one command.

use attnkit::AttnError;
use std::process::ExitCode;

pub fn run() -> Result<ExitCode, AttnError> {
    let infos = attnkit::list_backends();
    let width = infos.iter().map(|b| b.name.len()).max().unwrap_or(0).max(8);
    for b in infos {
        let status = match &b.unavailable_reason {
            None => "available".to_string(),
            Some(r) => format!("unavailable ({r})"),
        };
        let grad = if b.backward { "backward" } else { "fwd-only" };
        outln!("{:<width$}  {:<6}  {:<4}  {grad}  {status}", b.name, b.exactness.to_string(), b.device.to_string())?;
    }
    outln!("")?;
    for line in cuda_lines() {
        outln!("{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "cuda")]
fn cuda_lines() -> Vec<String> {
    let driver = match attnkit::cuda::driver_info() {
        Ok(d) => match d.ready() {
            Ok(()) => format!("CUDA driver: {d}"),
            Err(why) => format!("CUDA driver: {d}; not usable: {why}"),
        },
        Err(why) => format!("CUDA driver: {why}"),
    };
    let nvrtc = match attnkit::cuda::nvrtc() {
        Ok(n) => format!("NVRTC: {}.{} ({})", n.version().0, n.version().1, n.path().display()),
        Err(why) => format!("NVRTC: {why}"),
    };
    vec![driver, nvrtc]
}

#[cfg(not(feature = "cuda"))]
fn cuda_lines() -> Vec<String> {
    vec!["CUDA: not built (this attnkit was built without the `cuda` feature)".to_string()]
}
