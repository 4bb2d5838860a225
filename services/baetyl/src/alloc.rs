//! The process's global allocator, for the `baetyl` binary (every role) and the hub benchmark
//! (`services/hub/benches/mqtt.rs` includes this file, so that it measures the product's allocator).
//!
//! jemalloc for the small, short-lived allocations that dominate the hub's message path (faster than glibc's
//! malloc under many threads), and the system allocator for blocks of [`LARGE`] bytes and more. The split keeps
//! memory that is allocated zeroed and then mostly left alone (sled's metrics histograms: about 20 MiB) out of the
//! resident set: glibc maps such blocks fresh from the kernel, so untouched pages cost nothing, whereas jemalloc
//! hands out recycled extents that it must zero by writing.
//!
//! The choice is made on the layout's size, which the caller must pass unchanged to `dealloc` and `realloc`, so
//! a block is always freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};

use tikv_jemallocator::Jemalloc;

/// Blocks of this size and above come from the system allocator.
pub const LARGE: usize = 256 * 1024;

/// Install with `#[global_allocator] static GLOBAL: alloc::Allocator = alloc::Allocator;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

// SAFETY: every call is forwarded to exactly one of two sound allocators, chosen by the layout's size; a block
// keeps its size class for its whole life (realloc across the boundary allocates anew, copies and frees), so
// it is always returned to the allocator that made it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            // SAFETY: the caller's contract for `alloc` is passed on unchanged.
            unsafe { System.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { Jemalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            // SAFETY: the caller's contract for `alloc_zeroed` is passed on unchanged.
            unsafe { System.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { Jemalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE {
            // SAFETY: `ptr` was allocated with this layout, hence by `System` (see `alloc`).
            unsafe { System.dealloc(ptr, layout) }
        } else {
            // SAFETY: `ptr` was allocated with this layout, hence by `Jemalloc`.
            unsafe { Jemalloc.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (layout.size() >= LARGE, new_size >= LARGE) {
            // SAFETY: the block belongs to `System`; the caller's contract is passed on.
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            // SAFETY: the block belongs to `Jemalloc`; the caller's contract is passed on.
            (false, false) => unsafe { Jemalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: the caller guarantees that `new_size`, rounded up to `layout.align()`, does not
                // overflow `isize`, which makes this a valid layout.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: `new_layout` has a non-zero size (the two sizes sit on both sides of `LARGE`).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap; the old
                    // block is freed with the layout it was allocated with.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cross_the_boundary_intact() {
        let a = Allocator;
        for (from, to) in [
            (64, LARGE + 8),
            (LARGE * 2, 100),
            (LARGE - 1, LARGE),
            (LARGE, LARGE * 3),
        ] {
            let layout = Layout::from_size_align(from, 16).unwrap();
            // SAFETY: non-zero sizes; every block is freed with the layout it has at that moment.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!(std::slice::from_raw_parts(p, from).iter().all(|&b| b == 0));
                for i in 0..from {
                    *p.add(i) = (i % 251) as u8;
                }
                let q = a.realloc(p, layout, to);
                assert!(!q.is_null());
                assert_eq!(q as usize % 16, 0);
                for i in 0..from.min(to) {
                    assert_eq!(*q.add(i), (i % 251) as u8, "byte {i} after {from} -> {to}");
                }
                a.dealloc(q, Layout::from_size_align(to, 16).unwrap());
            }
        }
    }
}
