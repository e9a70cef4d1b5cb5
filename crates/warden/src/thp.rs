//! Transparent huge pages off for `warden serve`, from before the first allocation.
//!
//! A server lives long and its resident memory is what it costs the operator. The
//! allocator (mimalloc) asks for huge pages for its arena (`MADV_HUGEPAGE`), and a huge
//! page is resident in full however little of it is used: with them, a serving
//! process's RSS was 49 MiB and its slowest starts 200-390 ms (the kernel zeroing 2 MiB
//! pages). `prctl(PR_SET_THP_DISABLE)` stops that, but only for pages not yet faulted
//! in, and mimalloc takes its first ones in its own constructor, before `main`: set
//! from `main`, 6 MiB of huge pages stayed (RSS 36.4 against 32.0 MiB, BENCHMARKS.md). So
//! it is set here, by a constructor that runs before mimalloc's (a prioritized
//! `.init_array` entry runs before the unprioritized ones). Like any prctl flag it is
//! inherited by the processes `serve` starts (stdio upstreams), as it was from `main`.
//!
//! Short commands keep huge pages: they would pay in page faults for memory they give
//! back within a second. `serve` is recognised as any argument equal to "serve": a
//! false positive (a file named "serve") costs only those page faults. It must never do
//! more than set this one flag (it runs before the Rust runtime is set up).

/// glibc calls `.init_array` entries with `(argc, argv, envp)`, as Rust's own std
/// relies on for its arguments.
type Init = extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

#[used]
#[unsafe(link_section = ".init_array.00101")]
static SERVE_WITHOUT_HUGE_PAGES: Init = serve_without_huge_pages;

extern "C" fn serve_without_huge_pages(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    if argv.is_null() || argc <= 1 {
        return;
    }
    // SAFETY: glibc passes the process's own argc and argv, which stay valid for its
    // life; each non-null entry is a NUL-terminated string.
    let args = unsafe { std::slice::from_raw_parts(argv, argc as usize) };
    let serve = args[1..].iter().any(|&arg| {
        !arg.is_null() && unsafe { std::ffi::CStr::from_ptr(arg) }.to_bytes() == b"serve"
    });
    if serve {
        // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
