//! Running work in a rayon pool of a chosen size: the `--threads` knob of the CLI, the GEMM
//! ceiling and the benches, which must all measure in the same pool.

use crate::error::{AttnError, Result};

/// Runs `f` inside a rayon pool of `threads` threads (`None`: rayon's default, all cores).
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(AttnError::invalid("--threads must be ≥ 1, got 0")),
        Some(t) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|e| AttnError::invalid(format!("cannot build a {t}-thread pool: {e}")))?;
            Ok(pool.install(f))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_has_the_asked_size_and_zero_is_refused() {
        assert_eq!(with_threads(Some(1), rayon::current_num_threads).unwrap(), 1);
        assert_eq!(with_threads(Some(3), rayon::current_num_threads).unwrap(), 3);
        assert!(with_threads(Some(0), || ()).is_err());
    }
}
