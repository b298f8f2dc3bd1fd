//! A counting global allocator: the bench's "peak extra heap bytes".
//!
//! The library only defines the type; a binary opts in with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator;` (the `attnkit` CLI
//! and the criterion bench do). Counters are process-wide atomics, so allocations made on
//! rayon worker threads count too. When the allocator is not installed the counters stay at
//! zero and [`is_counting`] says so, so callers can print "n/a" instead of a false 0.
//!
//! Cost: two relaxed atomic RMWs per allocation, which is noise next to the allocations the
//! backends make (they allocate per call, not per element).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// [`System`] with live-byte and high-water-mark counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

#[inline]
fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
    if !ACTIVE.load(Ordering::Relaxed) {
        ACTIVE.store(true, Ordering::Relaxed);
    }
}

#[inline]
fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's layout unchanged and only
// updates counters afterwards, so all of `GlobalAlloc`'s contracts are `System`'s.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours; forwarded unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours; forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` came from this allocator; `new_size` is the caller's, checked
        // by the caller per `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// True once the counting allocator has served an allocation (i.e. it is installed).
pub fn is_counting() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Live heap bytes now.
pub fn current_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Measures the high-water mark above the heap in use when it was started.
#[derive(Debug, Clone, Copy)]
pub struct PeakScope {
    base: usize,
}

impl PeakScope {
    /// Resets the peak to the current level and remembers that level as the baseline.
    pub fn start() -> Self {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        PeakScope { base }
    }

    /// Peak bytes allocated above the baseline since [`PeakScope::start`]; `None` when the
    /// counting allocator is not installed.
    pub fn peak_extra(&self) -> Option<u64> {
        is_counting().then(|| PEAK.load(Ordering::Relaxed).saturating_sub(self.base) as u64)
    }
}
