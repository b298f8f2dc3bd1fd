//! What the decode section ([`super::decode`]) and its targets' check ([`super::decode_target`])
//! share: the section's record, and the PyTorch CPU SDPA peer each of them times beside
//! `flash-cpu`. Kept apart so that neither of the two files imports the other.

use attnkit::Problem;
use attnkit::ceiling::{BandwidthCeiling, DotCeiling};
use std::path::Path;

use super::section::SectionRow;

/// What the section measured.
pub struct Decode {
    pub rows: Vec<SectionRow>,
    pub bandwidth: Option<BandwidthCeiling>,
    pub dot: Option<DotCeiling>,
    /// Why the PyTorch column is empty, when it is.
    pub torch_note: Option<String>,
    /// Wall time of the whole section.
    pub elapsed_s: f64,
}

/// The python with torch and the peers folder, or why the PyTorch column stays empty.
pub fn torch_env() -> Result<(String, String), String> {
    match (std::env::var("ATTNKIT_TORCH_PYTHON"), std::env::var("ATTNKIT_PEERS")) {
        (Ok(py), Ok(peers)) if !py.is_empty() && !peers.is_empty() => Ok((py, peers)),
        _ => Err("not measured (set ATTNKIT_TORCH_PYTHON and ATTNKIT_PEERS)".into()),
    }
}

/// PyTorch's median seconds on `p` (peers/torch_sdpa2.py, same thread count).
pub fn torch_time(py: &str, peers: &str, p: &Problem, reps: usize) -> Result<f64, String> {
    let args = [p.seq_q, p.seq_k, p.head_dim, p.heads, p.kv_heads].map(|x| x.to_string());
    let out = std::process::Command::new(py)
        .arg(Path::new(peers).join("torch_sdpa2.py"))
        .args(args)
        .arg(p.dtype.to_string())
        .args(["--reps", &reps.to_string()])
        .env("OMP_NUM_THREADS", rayon::current_num_threads().to_string())
        .output()
        .map_err(|e| e.to_string())?;
    parse_torch(&String::from_utf8_lossy(&out.stdout))
}

/// `median_s` of the peer's last JSON line.
pub fn parse_torch(stdout: &str) -> Result<f64, String> {
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or("no JSON line")?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    v["median_s"].as_f64().filter(|t| *t > 0.0).ok_or_else(|| format!("no median_s in {line}"))
}

#[cfg(test)]
mod tests {
    use super::parse_torch;

    #[test]
    fn torch_json_is_read_from_the_last_json_line() {
        let out = "warning: x\n{\"peer\": \"torch-sdpa-cpu\", \"median_s\": 0.012, \"gflops\": 3.5}\n";
        assert_eq!(parse_torch(out), Ok(0.012));
        assert!(parse_torch("no json").is_err());
        assert!(parse_torch("{\"gflops\": 1}").is_err());
    }
}
