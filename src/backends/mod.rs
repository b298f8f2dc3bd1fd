//! One file per backend, named for its algorithm.

pub mod auto;
pub mod flash_cpu;
pub mod local;
pub mod reference;
pub mod sdpa;
