//! The working-memory budget that backends check before any large allocation.
//!
//! Default: 8 GiB, or `ATTNKIT_MEM_BUDGET` (bytes, or with a `K`/`M`/`G` suffix) read once.
//! [`set_mem_budget`] overrides it for the whole process (the CLI's and tests' knob).

use crate::error::{AttnError, Result};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const DEFAULT_BUDGET: u64 = 8 << 30;
static OVERRIDE: AtomicU64 = AtomicU64::new(0);
static FROM_ENV: OnceLock<u64> = OnceLock::new();

/// Parses `123`, `64K`, `512M`, `8G` (binary units). `None` on anything else.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// The budget in force, in bytes.
pub fn mem_budget() -> u64 {
    match OVERRIDE.load(Ordering::Relaxed) {
        0 => *FROM_ENV.get_or_init(|| {
            std::env::var("ATTNKIT_MEM_BUDGET").ok().and_then(|s| parse_bytes(&s)).unwrap_or(DEFAULT_BUDGET)
        }),
        b => b,
    }
}

/// Overrides the budget process-wide; `0` restores the environment/default value.
pub fn set_mem_budget(bytes: u64) {
    OVERRIDE.store(bytes, Ordering::Relaxed);
}

/// `Err(MemoryBudget)` when `needed_bytes` (None = overflowed) exceeds the budget.
pub fn check_budget(backend: &str, what: &str, needed_bytes: Option<u64>) -> Result<()> {
    let budget = mem_budget();
    let needed = needed_bytes.unwrap_or(u64::MAX);
    if needed > budget {
        return Err(AttnError::MemoryBudget {
            backend: backend.to_string(),
            what: what.to_string(),
            needed_bytes: needed,
            budget_bytes: budget,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_suffixes() {
        assert_eq!(super::parse_bytes("8G"), Some(8 << 30));
        assert_eq!(super::parse_bytes("512k"), Some(512 << 10));
        assert_eq!(super::parse_bytes("77"), Some(77));
        assert_eq!(super::parse_bytes("x"), None);
    }
}
