//! Picking a backend at run time: by name, by listing, or `auto`.

use crate::attention::{Attention, Device, Exactness};
use crate::backends;
use crate::error::{AttnError, Result};
use serde::Serialize;

pub use crate::options::BackendOptions;

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
        #[cfg(feature = "cuda")]
        ("flash-cuda", |_| Ok(Box::new(backends::flash_cuda::FlashCuda::new()))),
        ("auto", |o| Ok(Box::new(auto(o)))),
        ("linformer", |o| Ok(Box::new(backends::linformer::Linformer::from_options(o)?))),
        ("performer", |o| Ok(Box::new(backends::performer::Performer::from_options(o)?))),
        ("nystrom", |o| Ok(Box::new(backends::nystrom::Nystrom::from_options(o)?))),
    ]
}

/// What `auto` chooses from: every other registered backend that builds with `opts`, in
/// registry order. Each one says through [`Attention::auto_rank`] whether and how much it wants a
/// problem, so `auto` never tests names.
fn auto_candidates(opts: &BackendOptions) -> Vec<Box<dyn Attention>> {
    registry().iter().filter(|(n, _)| *n != "auto").filter_map(|(_, make)| make(opts).ok()).collect()
}

/// `auto` built over every other registered backend, with `opts`.
pub fn auto(opts: &BackendOptions) -> backends::auto::Auto {
    backends::auto::Auto::new(auto_candidates(opts))
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
    /// Whether the backend implements the backward pass ([`crate::Attention::backward`]):
    /// its backward refuses no reason on a plain problem (B = 1, H = 8, N = 1024, D = 64).
    pub backward: bool,
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
                backward: b.supports_backward(&crate::Problem::new(1, 8, 1024, 64)),
            },
            Err(e) => BackendInfo {
                name: name.to_string(),
                exactness: Exactness::Exact,
                device: Device::Cpu,
                unavailable_reason: Some(e.to_string()),
                backward: false,
            },
        })
        .collect()
}
