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

/// Custom system call numbers of the tenantvm guest API (see docs/guest-abi.md), from
/// `layout.h`.
pub mod api {
    use super::layout;

    /// Base of the tenantvm system call numbers, far above Linux's.
    pub const BASE: u64 = layout::API_WAIT_FOR_REQUEST;
    /// `wait_for_request()`: returns the address of the next request.
    pub const WAIT_FOR_REQUEST: u64 = layout::API_WAIT_FOR_REQUEST;
    /// `respond(status, headers, nheaders, body, body_len)`.
    pub const RESPOND: u64 = layout::API_RESPOND;
    /// `respond_and_wait(status, headers, nheaders, body, body_len)`: respond, then wait for
    /// the next request (returns its address) — one exit per request in stateful mode too.
    pub const RESPOND_AND_WAIT: u64 = layout::API_RESPOND_AND_WAIT;
    /// No-op that always exits to the host: used to measure the exit round trip.
    pub const NOP: u64 = layout::API_NOP;
    /// `kv_get(key, key_len, buf, buf_len)`: the value's length (docs/guest-abi.md).
    pub const KV_GET: u64 = layout::API_KV_GET;
    /// `kv_set(key, key_len, value, value_len, ttl_ms)`.
    pub const KV_SET: u64 = layout::API_KV_SET;
    /// `kv_incr(key, key_len, delta, result)`.
    pub const KV_INCR: u64 = layout::API_KV_INCR;
    /// `kv_delete(key, key_len)`.
    pub const KV_DELETE: u64 = layout::API_KV_DELETE;
    /// Every call with its name (as `tenantvm_<name>`), for reports.
    pub const NAMES: [(u64, &str); 8] = [
        (WAIT_FOR_REQUEST, "tenantvm_wait_for_request"),
        (RESPOND, "tenantvm_respond"),
        (RESPOND_AND_WAIT, "tenantvm_respond_and_wait"),
        (NOP, "tenantvm_nop"),
        (KV_GET, "tenantvm_kv_get"),
        (KV_SET, "tenantvm_kv_set"),
        (KV_INCR, "tenantvm_kv_incr"),
        (KV_DELETE, "tenantvm_kv_delete"),
    ];
}

/// Guest-physical address of a KDATA field.
pub const fn kdata(field: u64) -> u64 {
    GPA_KDATA + field
}

/// Offset inside the vCPU area of a VCD field.
pub const fn vcd(field: u64) -> u64 {
    VC_DATA + field
}

#[cfg(test)]
mod tests {
    use super::layout::*;

    /// `#define NAME value` of a C header, with C integer suffixes dropped.
    fn define(header: &str, name: &str) -> u64 {
        let line = header
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name) && l.starts_with("#define"))
            .unwrap_or_else(|| panic!("the SDK header lacks {name}"));
        let value = line.split_whitespace().nth(2).unwrap().trim_end_matches(['U', 'L', 'u', 'l']);
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => value.parse().unwrap(),
        }
    }

    #[test]
    fn the_sdk_header_agrees_with_layout_h() {
        let sdk = include_str!("../../../../apps/sdk/tenantvm.h");
        assert_eq!(define(sdk, "TVM_SYS_WAIT_FOR_REQUEST"), API_WAIT_FOR_REQUEST);
        assert_eq!(define(sdk, "TVM_SYS_RESPOND"), API_RESPOND);
        assert_eq!(define(sdk, "TVM_SYS_RESPOND_AND_WAIT"), API_RESPOND_AND_WAIT);
        assert_eq!(define(sdk, "TVM_REQUEST_VA"), REQUEST_VA);
        assert_eq!(define(sdk, "TVM_SHARED_VA"), SHARED_VA);
        assert_eq!(define(sdk, "TVM_SYS_KV_GET"), API_KV_GET);
        assert_eq!(define(sdk, "TVM_SYS_KV_SET"), API_KV_SET);
        assert_eq!(define(sdk, "TVM_SYS_KV_INCR"), API_KV_INCR);
        assert_eq!(define(sdk, "TVM_SYS_KV_DELETE"), API_KV_DELETE);
        let size_assert = |what: &str| {
            let line = sdk.lines().find(|l| l.contains(&format!("sizeof(struct {what})"))).unwrap();
            line.split("==").nth(1).unwrap().split(',').next().unwrap().trim().parse::<u64>().unwrap()
        };
        assert_eq!(size_assert("tvm_request"), REQUEST_HEADER_SIZE);
        assert_eq!(size_assert("tvm_header"), REQUEST_ENTRY_SIZE);
    }
}
