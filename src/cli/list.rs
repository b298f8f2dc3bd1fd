//! `attnkit list`

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
        println!("{:<width$}  {:<6}  {:<4}  {status}", b.name, b.exactness.to_string(), b.device.to_string());
    }
    Ok(ExitCode::SUCCESS)
}
