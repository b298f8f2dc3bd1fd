//! One file per backend, named for its algorithm.

pub mod auto;
pub mod flash_cpu;
#[cfg(feature = "cuda")]
pub mod flash_cuda;
pub mod linformer;
pub mod local;
pub mod local_block;
pub mod performer;
pub mod reference;
pub mod sdpa;
