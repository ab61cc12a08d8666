//! Keeps the forward pass's large activation buffers in the heap between layers.
//!
//! A prefill chunk allocates and frees megabyte-sized activations several times per layer.
//! With glibc's defaults the heap top is trimmed back to the system and grown again each
//! time, and every regrowth page-faults fresh zeroed pages (doc/benchmarks.md has the cost). Raising the trim threshold lets freed buffers be reused in place; the
//! memory goes back to the system with [`release`] once a forward pass is over, so an idle
//! app holds no more than before. [`super::options::ModelOptions::default_heap`] keeps glibc's
//! defaults (for measuring the difference).

/// Tunes the allocator once per process (Linux with glibc; elsewhere a no-op).
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if super::options::get().default_heap {
                return;
            }
            // SAFETY: mallopt only changes allocator parameters; called before the
            // allocations it concerns, and glibc serializes it with the arenas' locks.
            unsafe {
                // Buffers up to 32 MB (glibc's ceiling) come from the heap, not fresh maps.
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

/// Returns the heap's free memory to the system.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
