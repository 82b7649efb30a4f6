//! A counting global allocator for tests that hold a hot path to "no allocation per packet":
//! a test crate installs [`Counting`] as its `#[global_allocator]` and wraps the code it
//! checks in [`allocations`], which counts what that code allocates on the calling thread, or
//! in [`allocations_anywhere`], which counts every thread's (for code that hands work to
//! another thread; keep such a test alone in its test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The system allocator, counting allocations made on threads inside [`allocations`].
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ANYWHERE: AtomicBool = AtomicBool::new(false);

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if ANYWHERE.load(Ordering::Relaxed) || WATCHED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; counting touches only an atomic
// and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns it with the allocations it made on this thread (always 0 unless
/// [`Counting`] is the global allocator).
pub fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    WATCHED.with(|w| w.set(true));
    let out = f();
    WATCHED.with(|w| w.set(false));
    (out, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

/// As [`allocations`], counting the allocations of every thread while `f` runs.
pub fn allocations_anywhere<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    ANYWHERE.store(true, Ordering::Relaxed);
    let out = f();
    ANYWHERE.store(false, Ordering::Relaxed);
    (out, ALLOCATIONS.load(Ordering::Relaxed) - before)
}
