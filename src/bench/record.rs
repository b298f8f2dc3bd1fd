//! [`BenchRecord`]: one line of `attnkit bench --json` and one row of the report's raw results,
//! with typed status, device, window and dtype.
//!
//! JSON field names and values are those `bench --json` has always printed: `status` is
//! `"ok"`, `"skipped"` or `"error"` with the why in `reason` (empty when ok), `device` `"cpu"` or
//! `"cuda"`, `window` `"L,R"`, `dtype` `"f32"`/`"f16"`/`"bf16"`. Two changes, both `null` where
//! there is nothing to say: `device` is `null` (was `""`) when the backend could not be built, and
//! `gemm_gflops` is `null` when the ceiling was not measured (no CPU cell ran before this one).
//! `device_timing_error` is new: why a CUDA backend's device timer failed, so it was host-timed;
//! `inputs` is new: the input family of the cell (`bench --inputs`).

use super::ceiling::GemmCeiling;
use super::measure::{Measurement, Timing};
use crate::attention::Device;
use crate::inputs::InputFamily;
use crate::problem::{DType, Problem, Window};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::fmt;

/// The outcome of one cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// Measured, and the output was finite.
    Ok,
    /// Not run: unavailable, unsupported, over the memory or time budget, or left out by the plan.
    Skipped(String),
    /// Ran and went wrong: the backend returned an error, or its output held NaN/Inf.
    Failed(String),
}

impl Status {
    /// The JSON/CSV word: `ok`, `skipped`, `error`.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped(_) => "skipped",
            Status::Failed(_) => "error",
        }
    }

    /// Why it was skipped or failed; empty when ok.
    pub fn reason(&self) -> &str {
        match self {
            Status::Ok => "",
            Status::Skipped(r) | Status::Failed(r) => r,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Status::Ok)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Serialized as two fields, `status` and `reason`, flattened into the record.
impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Status", 2)?;
        st.serialize_field("status", self.label())?;
        st.serialize_field("reason", self.reason())?;
        st.end()
    }
}

/// Serializes a value through its `Display` (a window as `"L,R"`).
pub fn serialize_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One backend (variant) on one problem: what ran, and what came of it.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRecord {
    pub backend: String,
    /// Where the backend runs; `None` when it could not be built.
    pub device: Option<Device>,
    /// Parameters that distinguish variants of one backend (`k=128`, `m=64`, `w=256`), or "".
    pub variant: String,
    pub seq: usize,
    pub seq_kv: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub batch: usize,
    pub causal: bool,
    /// FlashAttention semantics, -1 = unbounded; serialized as "L,R".
    #[serde(serialize_with = "serialize_display")]
    pub window: Window,
    pub dtype: DType,
    /// The input family the cell ran on (`normal`, `structured`, `local-global`).
    #[serde(serialize_with = "serialize_display")]
    pub inputs: InputFamily,
    pub threads: usize,
    #[serde(flatten)]
    pub status: Status,
    pub reps: usize,
    pub timing: Option<Timing>,
    /// Why a CUDA backend's device timing failed (it was then host-timed, transfers included).
    pub device_timing_error: Option<String>,
    pub median_s: Option<f64>,
    /// Problem::flops() / median_s: FLOPs of exact attention over the allowed pairs.
    pub gflops: Option<f64>,
    pub peak_bytes: Option<u64>,
    /// The CPU's f32 GEMM ceiling in this run, once measured.
    pub gemm_gflops: Option<f64>,
    /// gflops / gemm_gflops, for CPU backends only: a GPU's rate over the CPU's GEMM means nothing.
    pub gemm_fraction: Option<f64>,
    /// For decode-shaped CPU rows (few query rows per KV head, memory-bound): bytes moved, GB/s
    /// and the fraction of the streaming-read ceiling measured in the same run.
    pub decode: Option<super::bandwidth::DecodeRate>,
    /// That streaming-read ceiling, GB/s, once measured.
    pub bandwidth_gb_per_s: Option<f64>,
}

impl BenchRecord {
    /// A record for `backend` (running on `device`, `None` if it could not be built) on `p`,
    /// skipped with an empty reason until a measurement or a reason is filled in.
    pub fn new(backend: &str, variant: &str, p: &Problem, device: Option<Device>, threads: usize) -> Self {
        BenchRecord {
            backend: backend.to_string(),
            device,
            variant: variant.to_string(),
            seq: p.seq_q,
            seq_kv: p.seq_k,
            dim: p.head_dim,
            heads: p.heads,
            kv_heads: p.kv_heads,
            batch: p.batch,
            causal: p.causal,
            window: p.window,
            dtype: p.dtype,
            inputs: InputFamily::Normal,
            threads,
            status: Status::Skipped(String::new()),
            reps: 0,
            timing: None,
            device_timing_error: None,
            median_s: None,
            gflops: None,
            peak_bytes: None,
            gemm_gflops: None,
            gemm_fraction: None,
            decode: None,
            bandwidth_gb_per_s: None,
        }
    }

    /// Sets the input family (default [`InputFamily::Normal`]).
    pub fn with_inputs(mut self, family: InputFamily) -> Self {
        self.inputs = family;
        self
    }

    /// Marks the record skipped, with the reason.
    pub fn skipped(mut self, reason: impl Into<String>) -> Self {
        self.status = Status::Skipped(reason.into());
        self
    }

    /// Marks the record failed, with the reason (any measurement already filled in stays).
    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.status = Status::Failed(reason.into());
        self
    }

    /// Fills in a measurement (status ok) and, for a CPU backend, its fraction of `ceiling`.
    pub fn with_measurement(mut self, p: &Problem, m: &Measurement, ceiling: Option<&GemmCeiling>) -> Self {
        let g = super::gflops(p, m.median_s);
        self.status = Status::Ok;
        self.reps = m.times_s.len();
        self.timing = Some(m.timing);
        self.device_timing_error = m.device_timing_error.clone();
        self.median_s = Some(m.median_s);
        self.gflops = Some(g);
        self.peak_bytes = m.peak_bytes;
        self.gemm_gflops = ceiling.map(|c| c.gflops);
        self.gemm_fraction =
            ceiling.filter(|c| self.device == Some(Device::Cpu) && c.gflops > 0.0).map(|c| g / c.gflops);
        self
    }

    /// Whether this row is reported against the bandwidth ceiling: measured, on the CPU, and
    /// decode-shaped ([`super::bandwidth::is_decode_shaped`]).
    pub fn wants_bandwidth(&self, p: &Problem) -> bool {
        self.status.is_ok() && self.device == Some(Device::Cpu) && super::bandwidth::is_decode_shaped(p)
    }

    /// Fills in bytes moved, GB/s and the fraction of `ceiling` for a decode-shaped row.
    pub fn with_bandwidth(mut self, p: &Problem, ceiling: &super::bandwidth::BandwidthCeiling) -> Self {
        if let (true, Some(t)) = (self.wants_bandwidth(p), self.median_s) {
            self.decode = super::bandwidth::decode_rate(p, t, ceiling);
            self.bandwidth_gb_per_s = Some(ceiling.gb_per_s);
        }
        self
    }

    /// Timed on the host although it runs on a device: the time includes transfers.
    pub fn host_timed_on_device(&self) -> bool {
        self.device == Some(Device::Cuda) && self.timing == Some(Timing::Host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling() -> GemmCeiling {
        GemmCeiling { m: 1, n: 1, k: 1, threads: 1, median_s: 1.0, gflops: 10.0 }
    }

    fn measurement(timing: Timing) -> Measurement {
        Measurement { times_s: vec![1e-3], median_s: 1e-3, peak_bytes: None, timing, device_timing_error: None }
    }

    #[test]
    fn only_decode_shaped_cpu_rows_get_a_bandwidth_fraction() {
        let bw = crate::bench::bandwidth::BandwidthCeiling { bytes: 1, threads: 1, median_s: 1.0, gb_per_s: 10.0 };
        let decode = Problem::new(1, 8, 1, 64).with_kv_heads(2).with_seq_k(4096);
        let prefill = Problem::new(1, 8, 4096, 64);
        let row = |p: &Problem, d| {
            BenchRecord::new("x", "", p, Some(d), 1).with_measurement(p, &measurement(Timing::Host), None)
        };
        let r = row(&decode, Device::Cpu).with_bandwidth(&decode, &bw);
        let rate = r.decode.expect("decode-shaped CPU row");
        assert_eq!(rate.bytes, crate::bench::bandwidth::bytes_moved(&decode));
        assert!((rate.gb_per_s - rate.bytes as f64 / 1e-3 / 1e9).abs() < 1e-9);
        assert!((rate.fraction_of_ceiling - rate.gb_per_s / 10.0).abs() < 1e-12);
        assert!(row(&prefill, Device::Cpu).with_bandwidth(&prefill, &bw).decode.is_none());
        assert!(row(&decode, Device::Cuda).with_bandwidth(&decode, &bw).decode.is_none());
    }

    #[test]
    fn json_keeps_the_documented_field_values() {
        let p = Problem::new(1, 2, 32, 16).with_window(Window::new(4, 0)).with_dtype(DType::F16);
        let ok = BenchRecord::new("sdpa", "", &p, Some(Device::Cpu), 1).with_measurement(
            &p,
            &measurement(Timing::Host),
            Some(&ceiling()),
        );
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!((v["status"].as_str(), v["reason"].as_str()), (Some("ok"), Some("")));
        assert_eq!(
            (v["device"].as_str(), v["window"].as_str(), v["dtype"].as_str()),
            (Some("cpu"), Some("4,0"), Some("f16"))
        );
        assert_eq!(v["timing"], "host");
        let failed = BenchRecord::new("x", "", &p, None, 1).failed("boom");
        let v = serde_json::to_value(&failed).unwrap();
        assert_eq!((v["status"].as_str(), v["reason"].as_str()), (Some("error"), Some("boom")));
        assert!(v["device"].is_null());
        let v = serde_json::to_value(BenchRecord::new("x", "", &p, None, 1).skipped("why")).unwrap();
        assert_eq!(v["status"], "skipped");
    }

    /// A GPU's rate divided by the CPU's sgemm rate is not a fraction of anything (issue 10 item 5).
    #[test]
    fn gemm_fraction_is_for_cpu_rows_only() {
        let p = Problem::new(1, 1, 64, 16);
        let cpu = BenchRecord::new("a", "", &p, Some(Device::Cpu), 1).with_measurement(
            &p,
            &measurement(Timing::Host),
            Some(&ceiling()),
        );
        assert!(cpu.gemm_fraction.is_some());
        let gpu = BenchRecord::new("b", "", &p, Some(Device::Cuda), 1).with_measurement(
            &p,
            &measurement(Timing::Device),
            Some(&ceiling()),
        );
        assert_eq!(gpu.gemm_fraction, None);
        assert!(!gpu.host_timed_on_device());
    }
}
