//! Construction options for backends that take parameters, in a module of their own so that
//! backends and the registry both depend on it and never on each other.

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
