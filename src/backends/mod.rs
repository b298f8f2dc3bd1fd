//! One file per backend, named for its algorithm.

pub mod auto;
pub mod reference;
pub mod sdpa;
