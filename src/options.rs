//! Construction options for backends that take parameters, in a module of their own so that
//! backends and the registry both depend on it and never on each other.

use crate::error::AttnError;
use std::fmt;

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
    /// Linformer's projection (default [`Projection::Pooled`]).
    pub projection: Option<Projection>,
    /// Nyströmformer's landmark count m (default 64).
    pub landmarks: Option<usize>,
    /// Performer's kernel (default [`Kernel::Softmax`], FAVOR+).
    pub kernel: Option<Kernel>,
}

/// How Linformer projects the N_k keys and values down to k.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Projection {
    /// Segment means, each pooled key's logit raised by ln(segment size): training-free, exact
    /// when k = N_k.
    #[default]
    Pooled,
    /// Seeded Gaussian N(0, 1/k) matrices, the paper's untrained initialization.
    Gaussian,
}

/// Performer's feature map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    /// FAVOR+ positive random features, an unbiased estimate of the softmax kernel.
    #[default]
    Softmax,
    /// Generalized attention with ReLU random features (a different kernel, not softmax).
    Relu,
}

/// `Display`/`FromStr` for option enums: one lowercase name per variant.
macro_rules! named_enum {
    ($t:ty, $what:literal, $($v:path => $s:literal),+) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($v => $s),+ })
            }
        }
        impl std::str::FromStr for $t {
            type Err = AttnError;
            fn from_str(s: &str) -> Result<Self, AttnError> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($s => Ok($v),)+
                    _ => Err(AttnError::invalid(format!(
                        concat!("unknown ", $what, " `{}` (expected {})"),
                        s,
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

named_enum!(Projection, "linformer projection", Projection::Pooled => "pooled", Projection::Gaussian => "gaussian");
named_enum!(Kernel, "performer kernel", Kernel::Softmax => "softmax", Kernel::Relu => "relu");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_typos_name_the_value() {
        for p in [Projection::Pooled, Projection::Gaussian] {
            assert_eq!(p.to_string().parse::<Projection>().unwrap(), p);
        }
        for k in [Kernel::Softmax, Kernel::Relu] {
            assert_eq!(k.to_string().parse::<Kernel>().unwrap(), k);
        }
        let e = "gelu".parse::<Kernel>().unwrap_err().to_string();
        assert!(e.contains("`gelu`") && e.contains("relu"), "{e}");
    }
}
