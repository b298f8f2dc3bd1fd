//! The one error type of attnkit. Every fallible public function returns [`Result`].
//!
//! Variants are typed so callers can branch on them (a shape error is a caller bug, an
//! `Unsupported` is a routing decision, a `MemoryBudget` is a capacity decision), and every
//! message names the offending values.

use thiserror::Error;

/// Result alias used throughout attnkit.
pub type Result<T, E = AttnError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum AttnError {
    /// A tensor or problem dimension is inconsistent (names the values).
    #[error("shape error: {0}")]
    Shape(String),

    /// A tensor's row layout (strides) is refused: it reaches outside the buffer or overflows.
    #[error("strides of {tensor}: {reason}")]
    Strides { tensor: &'static str, reason: String },

    /// A scalar option is out of its domain: scale, window, k, m, thread count, ...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The backend cannot run this problem; `reasons` lists every reason, xformers-style.
    #[error("backend `{backend}` does not support this problem: {}", reasons.join("; "))]
    Unsupported { backend: String, reasons: Vec<String> },

    /// The working set would exceed the configured memory budget. Raised before allocating.
    #[error(
        "`{backend}` would need {needed_bytes} bytes ({:.2} GiB) of working memory for {what}, over the budget of {budget_bytes} bytes ({:.2} GiB); set ATTNKIT_MEM_BUDGET or pick a tiled backend",
        *needed_bytes as f64 / (1u64 << 30) as f64,
        *budget_bytes as f64 / (1u64 << 30) as f64
    )]
    MemoryBudget { backend: String, what: String, needed_bytes: u64, budget_bytes: u64 },

    /// No backend of that name is registered.
    #[error("unknown backend `{name}`; known backends: {}", known.join(", "))]
    UnknownBackend { name: String, known: Vec<String> },

    /// The backend is registered but cannot run on this machine (no CUDA driver, ...).
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable { backend: String, reason: String },

    /// A `.npy` file could not be read or written.
    #[error("npy `{path}`: {reason}")]
    Npy { path: String, reason: String },

    /// A `.safetensors` file could not be read or written, or lacks a named tensor.
    #[error("safetensors `{path}`: {reason}")]
    Safetensors { path: String, reason: String },

    /// A KV-cache operation was refused; nothing was written (names the offending value).
    #[error("kv cache: {0}")]
    KvCache(crate::kvcache::KvCacheError),

    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    #[cfg(feature = "cuda")]
    #[error("CUDA driver error: {0}")]
    CudaDriver(#[from] cudarc::driver::DriverError),

    /// Anything CUDA-side that is not a driver or NVRTC error code (missing library, bad PTX log, ...).
    #[error("CUDA: {0}")]
    Cuda(String),
}

impl AttnError {
    pub fn shape(msg: impl Into<String>) -> Self {
        AttnError::Shape(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        AttnError::InvalidArgument(msg.into())
    }
}
