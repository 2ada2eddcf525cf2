//! Software prefetch: the one place Lungfish uses `unsafe`.
//!
//! Hash-table lookups on the hot path miss the cache for most keys of a large window.
//! Prefetching the slot of an event a few positions ahead overlaps those misses. A
//! prefetch instruction never faults, reads no value into the program and writes
//! nothing: it only changes timing.

/// Hints the CPU to load the cache line holding `value`. A no-op off x86-64.
#[inline(always)]
pub fn read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: PREFETCHT0 (SSE, part of every x86-64 CPU) takes any address, never
    // faults and has no architectural effect; the pointer comes from a live reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<{ _MM_HINT_T0 }>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
