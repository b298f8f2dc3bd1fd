//! One file per backend, named for its algorithm.

pub mod auto;
pub mod flash_cpu;
#[cfg(feature = "cuda")]
pub mod flash_cuda;
pub mod linformer;
mod linformer_proj;
pub mod local;
pub mod local_block;
pub mod nystrom;
pub mod performer;
mod performer_features;
pub mod reference;
pub mod sdpa;
pub mod segments;
