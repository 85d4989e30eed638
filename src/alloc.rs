//! The process's allocator: mimalloc, for Rust and, through its `override`
//! feature, for the C libraries too (ADR 22).
//!
//! Rust asks for every block with an alignment. mimalloc v3's aligned entry
//! point (`mi_malloc_aligned`) takes its fast path only while the size
//! class's page has a free block at hand. Otherwise, for a size that is not
//! a power of two, it over-allocates (`size + alignment - 1`) from the next
//! size class, and leaves the blocks freed back to the first class where
//! they are: a 192-byte value then lands in a 224-byte block, while the
//! 192-byte blocks just freed, still in the cache, wait for a periodic
//! collection. Every block mimalloc hands out is aligned to a machine word,
//! so an alignment no larger than that goes through `mi_malloc`, whose slow
//! path takes those freed blocks back first; larger alignments (hash tables'
//! 16, tokio's 128) stay with `mi_malloc_aligned`.

use std::alloc::{GlobalAlloc, Layout};

use libmimalloc_sys as mi;

/// mimalloc aligns every block to a machine word (`MI_INTPTR_SIZE`).
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, with word-aligned requests on its plain entry points.
pub struct Mimalloc;

// SAFETY: each method hands the layout's size (and, above a word, its
// alignment) to the mimalloc function that honours them, and frees or
// resizes only blocks mimalloc allocated; mimalloc is thread-safe.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v3's `mimalloc.h`).
pub const PURGE_DELAY: mi::mi_option_t = 15;

/// Memory freed is given back to the system at once rather than a second
/// later, so a server's resident size is what it uses; `MIMALLOC_PURGE_DELAY`
/// (milliseconds) still chooses otherwise.
pub fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which it reads on each purge.
        unsafe { mi::mi_option_set(PURGE_DELAY, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_named() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets mimalloc options.
        unsafe {
            // mimalloc v3's default purge delay, 1000 ms: a wrong index reads another option
            assert_eq!(mi::mi_option_get(PURGE_DELAY), 1000);
            purge_freed_memory_at_once();
            assert_eq!(mi::mi_option_get(PURGE_DELAY), 0);
        }
    }

    /// Fills and empties a page's worth of `size`-byte blocks, then asks for
    /// one more: the usable size of the block it gets.
    fn after_a_page_freed(size: usize, alloc: impl Fn() -> *mut u8) -> usize {
        let blocks: Vec<*mut u8> = (0..2_000).map(|_| alloc()).collect();
        // SAFETY: each block came from mimalloc and is freed once.
        unsafe {
            for b in blocks {
                mi::mi_free(b.cast());
            }
            let b = alloc();
            assert!(!b.is_null());
            let usable = mi::mi_usable_size(b.cast());
            mi::mi_free(b.cast());
            assert!(usable >= size);
            usable
        }
    }

    #[test]
    fn a_word_aligned_block_reuses_its_size_class() {
        let layout = Layout::from_size_align(192, 8).unwrap();
        // SAFETY: a layout of non-zero size.
        let ours = after_a_page_freed(192, || unsafe { Mimalloc.alloc(layout) });
        assert_eq!(ours, 192);
        // why: mimalloc's aligned entry point goes to the next class instead
        // SAFETY: as above.
        let aligned = after_a_page_freed(192, || unsafe { mi::mi_malloc_aligned(192, 8).cast() });
        assert_eq!(aligned, 224);
    }

    /// Writes 0, 1, 2, … into the first `n` bytes of `p`.
    unsafe fn fill(p: *mut u8, n: usize) {
        for i in 0..n {
            *p.add(i) = i as u8;
        }
    }

    unsafe fn filled(p: *const u8, n: usize) -> bool {
        (0..n).all(|i| *p.add(i) == i as u8)
    }

    #[test]
    fn every_block_has_its_alignment_and_keeps_its_bytes() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 192, 200, 632, 1000, 5000, 70_000] {
                let size = size.max(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is written within its
                // size and freed once, with the layout it has at that time.
                unsafe {
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "{size}/{align}");
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    Mimalloc.dealloc(zeroed, layout);

                    for new_size in [size * 3, size.div_ceil(2)] {
                        let p = Mimalloc.alloc(layout);
                        assert_eq!(p as usize % align, 0, "{size}/{align}");
                        fill(p, size);
                        let q = Mimalloc.realloc(p, layout, new_size);
                        assert_eq!(q as usize % align, 0, "{size}/{align} -> {new_size}");
                        assert!(
                            filled(q, size.min(new_size)),
                            "{size}/{align} -> {new_size}"
                        );
                        Mimalloc.dealloc(q, Layout::from_size_align(new_size, align).unwrap());
                    }
                }
            }
        }
    }
}
