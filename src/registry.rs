//! Picking a backend at run time: by name, by listing, or `auto`.

use crate::attention::{Attention, Device, Exactness};
use crate::backends;
use crate::error::{AttnError, Result};
use serde::Serialize;

/// Construction options for backends that take parameters. Unused fields are ignored by
/// backends they do not apply to.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Linformer's projected length k (default 256).
    pub proj_dim: Option<usize>,
    /// Performer's random-feature count m (default 256).
    pub features: Option<usize>,
    /// Seed for random projections/features.
    pub seed: u64,
    /// `local-block`'s block size (default 128).
    pub block_size: Option<usize>,
}

type Factory = fn(&BackendOptions) -> Result<Box<dyn Attention>>;

/// Every registered backend, in the order `attnkit list` prints them.
fn registry() -> &'static [(&'static str, Factory)] {
    &[
        ("reference", |_| Ok(Box::new(backends::reference::Reference))),
        ("sdpa", |_| Ok(Box::new(backends::sdpa::Sdpa))),
        ("flash-cpu", |_| Ok(Box::new(backends::flash_cpu::FlashCpu::new()))),
        ("local", |_| Ok(Box::new(backends::local::Local::new()))),
        ("local-block", |o| {
            Ok(Box::new(backends::local_block::LocalBlock::new(
                o.block_size.unwrap_or(backends::local_block::DEFAULT_BLOCK),
            )?))
        }),
        ("flash-cuda", |_| Ok(Box::new(backends::flash_cuda::FlashCuda::new()))),
        ("auto", |o| Ok(Box::new(backends::auto::Auto::new(o)))),
        ("linformer", |o| Ok(Box::new(backends::linformer::Linformer::from_options(o)?))),
        ("performer", |o| Ok(Box::new(backends::performer::Performer::from_options(o)?))),
    ]
}

/// Names of every registered backend.
pub fn backend_names() -> Vec<&'static str> {
    registry().iter().map(|(n, _)| *n).collect()
}

/// The backend called `name`, with default options.
pub fn backend(name: &str) -> Result<Box<dyn Attention>> {
    backend_with(name, &BackendOptions::default())
}

/// The backend called `name`, built with `opts`.
pub fn backend_with(name: &str, opts: &BackendOptions) -> Result<Box<dyn Attention>> {
    let (_, make) = registry().iter().find(|(n, _)| *n == name).ok_or_else(|| AttnError::UnknownBackend {
        name: name.to_string(),
        known: backend_names().iter().map(|s| s.to_string()).collect(),
    })?;
    make(opts)
}

/// One row of [`list_backends`].
#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    pub name: String,
    pub exactness: Exactness,
    pub device: Device,
    /// `None` when available, otherwise why not.
    pub unavailable_reason: Option<String>,
}

/// Every backend with its availability on this machine. Never panics, even without CUDA.
pub fn list_backends() -> Vec<BackendInfo> {
    registry()
        .iter()
        .map(|(name, make)| match make(&BackendOptions::default()) {
            Ok(b) => BackendInfo {
                name: name.to_string(),
                exactness: b.exactness(),
                device: b.device(),
                unavailable_reason: b.availability().err(),
            },
            Err(e) => BackendInfo {
                name: name.to_string(),
                exactness: Exactness::Exact,
                device: Device::Cpu,
                unavailable_reason: Some(e.to_string()),
            },
        })
        .collect()
}
