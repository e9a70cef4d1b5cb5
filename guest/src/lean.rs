//! A minimal runtime for `#![no_std]` components, for policies that must start fast.
//!
//! warden runs every decision in a fresh instance, so memory is never reused: a bump
//! allocator that never frees is both correct and the cheapest possible. A component
//! built this way imports no WASI at all (no stdio, no environment), which is what
//! makes its instantiation cheap. Use [`lean_runtime!`](crate::lean_runtime) once in
//! the component's crate.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

const PAGE: usize = 64 * 1024;

/// Bump allocator over the component's linear memory, growing it as needed.
pub struct Bump {
    next: AtomicUsize,
}

impl Bump {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Bump {
        Bump {
            next: AtomicUsize::new(0),
        }
    }
}

#[cfg(target_arch = "wasm32")]
unsafe extern "C" {
    static __heap_base: u8;
}

#[cfg(target_arch = "wasm32")]
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut next = self.next.load(Ordering::Relaxed);
        if next == 0 {
            next = core::ptr::addr_of!(__heap_base) as usize;
        }
        let start = (next + layout.align() - 1) & !(layout.align() - 1);
        let Some(end) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        let have = core::arch::wasm32::memory_size(0) * PAGE;
        if end > have {
            let pages = (end - have).div_ceil(PAGE);
            if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return core::ptr::null_mut();
            }
        }
        self.next.store(end, Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Growing the most recent allocation (a Vec or String being built) happens in place.
        let end = ptr as usize + layout.size();
        if end == self.next.load(Ordering::Relaxed) && new_size >= layout.size() {
            let have = core::arch::wasm32::memory_size(0) * PAGE;
            let new_end = ptr as usize + new_size;
            if new_end <= have
                || core::arch::wasm32::memory_grow(0, (new_end - have).div_ceil(PAGE)) != usize::MAX
            {
                self.next.store(new_end, Ordering::Relaxed);
                return ptr;
            }
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract for realloc; the new block is at least as large
        // as what is copied.
        unsafe {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            }
            new
        }
    }
}

/// `cabi_realloc` over `alloc`, for [`lean_runtime!`](crate::lean_runtime).
///
/// # Safety
/// As `GlobalAlloc::realloc` when `old_len > 0`, else as `GlobalAlloc::alloc`.
#[cfg(target_arch = "wasm32")]
pub unsafe fn cabi_realloc(
    alloc: &Bump,
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    // SAFETY: the canonical ABI passes a power-of-two alignment and, for a
    // reallocation, the pointer and size it was given before.
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc.alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            alloc.realloc(
                old,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}

/// Define the global allocator and panic handler of a `#![no_std]` component: a
/// [`Bump`] allocator, and a panic that traps (warden reports a trap in a policy as a
/// deny), `cabi_realloc`, and the C memory routines. Invoke once, at the crate root.
#[macro_export]
macro_rules! lean_runtime {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::lean::Bump = $crate::lean::Bump::new();

        #[panic_handler]
        fn panic(_: &core::panic::PanicInfo) -> ! {
            core::arch::wasm32::unreachable()
        }

        /// The canonical ABI's allocator (std provides it on wasm32-wasip2; no_std must).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn cabi_realloc(
            old: *mut u8,
            old_len: usize,
            align: usize,
            new_len: usize,
        ) -> *mut u8 {
            // SAFETY: forwarded verbatim; the canonical ABI upholds realloc's contract.
            unsafe { $crate::lean::cabi_realloc(&ALLOCATOR, old, old_len, align, new_len) }
        }

        // memcpy, memcmp and friends come from the target's libc (wasi-libc), which
        // std would otherwise link; they need no WASI imports.
        #[link(name = "c")]
        unsafe extern "C" {}
    };
}
