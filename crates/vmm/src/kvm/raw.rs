//! The few KVM ioctls the hot path needs without allocation, which kvm-ioctls either does not
//! wrap (`KVM_CLEAR_DIRTY_LOG`) or wraps with a fresh `Vec` per call (`KVM_GET_DIRTY_LOG`).

use std::io;
use std::os::fd::AsRawFd;

use kvm_bindings::{kvm_clear_dirty_log, kvm_dirty_log};

const KVMIO: u64 = 0xAE;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

const KVM_GET_DIRTY_LOG: u64 = ioc(IOC_WRITE, 0x42, std::mem::size_of::<kvm_dirty_log>());
const KVM_CLEAR_DIRTY_LOG: u64 = ioc(IOC_READ | IOC_WRITE, 0xc0, std::mem::size_of::<kvm_clear_dirty_log>());

/// Reads the dirty bitmap of `slot` into `bitmap` (one bit per 4 KiB page; the slice must
/// cover the whole slot, rounded up to 64 pages).
pub fn get_dirty_log(vm: &impl AsRawFd, slot: u32, bitmap: &mut [u64]) -> io::Result<()> {
    let mut log = kvm_dirty_log { slot, ..Default::default() };
    log.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    // SAFETY: `log` points to `bitmap`, which is writable and, as the caller guarantees,
    // large enough for the slot; KVM writes at most the slot's bitmap size.  The return code
    // is checked.
    let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_GET_DIRTY_LOG as _, &log) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Write-protects again (and clears in the log) the pages of `slot` whose bits are set in
/// `bitmap`, starting at `first_page` (a multiple of 64) for `num_pages` pages.
pub fn clear_dirty_log(
    vm: &impl AsRawFd,
    slot: u32,
    first_page: u64,
    num_pages: u32,
    bitmap: &[u64],
) -> io::Result<()> {
    assert!(first_page % 64 == 0 && bitmap.len() * 64 >= num_pages as usize);
    let mut clear = kvm_clear_dirty_log { slot, num_pages, first_page, ..Default::default() };
    clear.__bindgen_anon_1.dirty_bitmap = bitmap.as_ptr() as *mut _;
    // SAFETY: KVM only reads `num_pages` bits from `bitmap` (checked above to be large
    // enough); the return code is checked.
    let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CLEAR_DIRTY_LOG as _, &clear) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A page for [`first_memory_slot`] (page-aligned, as a slot must be).
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static SLOT_PAGE: Page = Page([0; 4096]);

/// Adds a read-only one-page memory slot to `vm`.  The first memory slot a process adds (to
/// any VM) costs several milliseconds on PVM, later ones tens of microseconds (measured: 6 ms
/// then 20-50 µs); [`super::host`]'s probe pays it, so the first tenant's VM does not.
pub fn first_memory_slot(vm: &kvm_ioctls::VmFd) -> io::Result<()> {
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: kvm_bindings::KVM_MEM_READONLY,
        guest_phys_addr: 0,
        memory_size: std::mem::size_of::<Page>() as u64,
        userspace_addr: std::ptr::addr_of!(SLOT_PAGE) as u64,
    };
    // SAFETY: the slot maps a static page, which outlives every VM, read-only (KVM never
    // writes it); the VM is a probe that never runs.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        // Values from <linux/kvm.h> on x86-64.
        assert_eq!(KVM_GET_DIRTY_LOG, 0x4010_ae42);
        assert_eq!(KVM_CLEAR_DIRTY_LOG, 0xc018_aec0);
    }
}
