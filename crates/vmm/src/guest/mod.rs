//! The guest side of the VM, seen from the host: the memory layout and guest-kernel ABI
//! (generated from `guest/layout.h`) and the guest kernel image (built from `guest/kernel.S`
//! and `guest/kernel.c` by build.rs).
//!
//! Everything the host and the guest kernel must agree on is in `layout.h`; this module only
//! re-exports it with Rust types and adds the few derived values the host needs.

/// Constants from `guest/layout.h` (addresses, offsets, ports, selectors).
pub mod layout {
    include!(concat!(env!("OUT_DIR"), "/layout.rs"));
}

/// The guest kernel image and its symbols.
pub mod kernel {
    /// Flat image, loaded at GPA [`super::layout::GPA_KCODE`].
    pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernel.bin"));

    /// Global symbols of the guest kernel (virtual addresses in the kernel half).
    pub mod sym {
        include!(concat!(env!("OUT_DIR"), "/kernel_syms.rs"));
    }

    /// Guest-virtual address of the exception stub for `vector`.
    pub fn exception_stub(vector: u64) -> u64 {
        sym::EXCEPTION_BASE + 32 * vector
    }
}

use layout::*;

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large (2 MiB) guest page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Custom system call numbers of the tenantvm guest API (see docs/guest-abi.md).
pub mod api {
    /// Base of the tenantvm system call numbers, far above Linux's.
    pub const BASE: u64 = 0x1_0000;
    /// `wait_for_request()`: returns the address of the next request.
    pub const WAIT_FOR_REQUEST: u64 = BASE;
    /// `respond(status, headers, nheaders, body, body_len)`.
    pub const RESPOND: u64 = BASE + 1;
    /// `respond_and_wait(status, headers, nheaders, body, body_len)`: respond, then wait for
    /// the next request (returns its address) — one exit per request in stateful mode too.
    pub const RESPOND_AND_WAIT: u64 = BASE + 2;
    /// No-op that always exits to the host: used to measure the exit round trip.
    pub const NOP: u64 = BASE + 0xff;
}

/// Guest-physical address of a KDATA field.
pub const fn kdata(field: u64) -> u64 {
    GPA_KDATA + field
}

/// Offset inside the vCPU area of a VCD field.
pub const fn vcd(field: u64) -> u64 {
    VC_DATA + field
}
