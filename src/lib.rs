//! attnkit: efficient long-sequence attention kernels behind one object-safe trait.
//!
//! ```
//! use attnkit::{AttnArgs, Problem};
//! let p = Problem::new(1, 2, 16, 8).with_causal(true);
//! let (q, k, v) = (vec![0.1f32; p.q_len()], vec![0.2f32; p.kv_len()], vec![0.3f32; p.kv_len()]);
//! let backend = attnkit::backend("sdpa").unwrap();
//! let out = backend.forward(&AttnArgs::new(&p, &q, &k, &v).unwrap(), false).unwrap();
//! assert_eq!(out.out.len(), p.out_len());
//! ```

pub mod alloc_counter;
pub mod approx_eval;
pub mod attention;
pub mod backends;
pub mod bench;
pub mod budget;
pub mod cuda;
pub mod dist;
pub mod error;
pub mod grad;
pub mod inputs;
pub mod interop;
pub mod kvcache;
pub mod layer;
pub mod linalg;
pub mod lse;
pub mod npy;
pub mod options;
pub mod problem;
pub mod registry;
pub mod row_layout;
#[cfg(feature = "safetensors")]
pub mod safetensors_io;
pub mod seeded;
pub mod simd;
pub mod tensor;
pub mod threads;
pub mod tiled;
pub mod validate;

pub use attention::{Attention, AttnArgs, AttnOutput, Device, Exactness, PairData};
/// The bandwidth and bf16-dot ceilings and decode rates (`bench::bandwidth`), at the crate root
/// because examples and the report read them as `attnkit::ceiling`.
pub use bench::bandwidth as ceiling;
pub use error::{AttnError, Result};
pub use grad::{Grads, GradsMut, Saved};
pub use lse::merge_partials;
pub use modifiers::{Modifier, Modifiers, PairShape, Varlen, alibi_slopes};
/// Score modifiers and masks (`problem::modifiers`), at the crate root for short paths.
pub use problem::modifiers;
pub use problem::{DType, Problem, Window};
pub use registry::{BackendInfo, BackendOptions, backend, backend_names, backend_with, list_backends};
pub use row_layout::{Layouts, Operand, RowLayout};
pub use tensor::{Tensor, TensorRef};

// The interop doors, each behind its own off-by-default feature (see src/interop/mod.rs).
#[cfg(feature = "candle")]
pub use interop::candle;
#[cfg(feature = "ndarray")]
pub use interop::ndarray;

/// The README's Rust example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
