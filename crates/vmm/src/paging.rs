//! x86-64 4-level page tables for the guest, built by the host before the first `KVM_RUN`.
//!
//! Why once, up front: on PVM hosts the guest runs on shadow page tables, and the host's own
//! edits of guest page-table memory are not noticed by the shadow MMU (only the guest's writes
//! are trapped), so a host that changed a PTE later could not be sure the guest sees it.
//! Building everything before the guest first runs sidesteps that on every platform.
//!
//! Every leaf has Accessed (and, if writable, Dirty) preset: otherwise the CPU or KVM would
//! set them on first use, and page-table pages would show up as dirty after every request.

use crate::guest::{LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::memory::{GuestMemory, OutOfRange};

/// Page-table entry bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pte(pub u64);

impl Pte {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const WRITABLE: u64 = 1 << 1;
    /// User-accessible.
    pub const USER: u64 = 1 << 2;
    /// Accessed.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty.
    pub const DIRTY: u64 = 1 << 6;
    /// Large page (2 MiB at the PD level).
    pub const LARGE: u64 = 1 << 7;
    /// No-execute.
    pub const NO_EXEC: u64 = 1 << 63;
    /// Bits that hold the physical address.
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// What a leaf mapping allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafFlags {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Reachable from user mode.
    pub user: bool,
    /// Map with 4 KiB pages only, Dirty clear: the guest kernel tracks writes to these pages
    /// through their Dirty bits (in-guest resets), which needs one PTE per page.
    pub track: bool,
}

impl LeafFlags {
    fn bits(self) -> u64 {
        let mut b = Pte::PRESENT | Pte::ACCESSED;
        if self.write {
            b |= Pte::WRITABLE;
            if !self.track {
                b |= Pte::DIRTY;
            }
        }
        if !self.exec {
            b |= Pte::NO_EXEC;
        }
        if self.user {
            b |= Pte::USER;
        }
        b
    }
}

/// Failure to build page tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    /// The table pool is exhausted.
    #[error("page-table pool exhausted after {0} tables (mapping too fragmented or too large)")]
    PoolExhausted(u64),
    /// A range is not page-aligned.
    #[error("unaligned mapping va={va:#x} gpa={gpa:#x} len={len:#x}")]
    Unaligned {
        /// Virtual start.
        va: u64,
        /// Physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A virtual address is already mapped (a loader bug).
    #[error("virtual address {0:#x} is mapped twice")]
    AlreadyMapped(u64),
    /// The tables would live outside guest memory.
    #[error(transparent)]
    Memory(#[from] OutOfRange),
}

/// Allocates table pages from a pool in guest memory and fills them.
pub struct PageTables<'a> {
    mem: &'a mut GuestMemory,
    next: u64,
    end: u64,
    allocated: u64,
    /// Set U on kernel-half intermediate entries too (PVM requires every entry to be U=1).
    all_user: bool,
}

impl<'a> PageTables<'a> {
    /// Tables will be taken from `[pool_start, pool_end)`, which must be zeroed.
    pub fn new(mem: &'a mut GuestMemory, pool_start: u64, pool_end: u64, all_user: bool) -> PageTables<'a> {
        PageTables { mem, next: pool_start, end: pool_end, allocated: 0, all_user }
    }

    /// Number of table pages allocated so far.
    #[cfg(test)]
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    fn alloc(&mut self) -> Result<u64, PagingError> {
        if self.next + PAGE_SIZE > self.end {
            return Err(PagingError::PoolExhausted(self.allocated));
        }
        let page = self.next;
        self.next += PAGE_SIZE;
        self.allocated += 1;
        Ok(page)
    }

    /// The table the entry `index` of table `table` points to, created if missing.
    fn child(&mut self, table: u64, index: u64, user: bool) -> Result<u64, PagingError> {
        let slot = table + index * 8;
        let entry = self.mem.read_u64(slot)?;
        if entry & Pte::PRESENT != 0 {
            if entry & Pte::LARGE != 0 {
                return Err(PagingError::AlreadyMapped(index));
            }
            return Ok(entry & Pte::ADDRESS_MASK);
        }
        let page = self.alloc()?;
        let mut bits = Pte::PRESENT | Pte::WRITABLE | Pte::ACCESSED;
        if user || self.all_user {
            bits |= Pte::USER;
        }
        self.mem.write_u64(slot, page | bits)?;
        Ok(page)
    }

    /// Maps `[va, va + len)` to `[gpa, gpa + len)` under the PML4 at `root`.  Uses 2 MiB pages
    /// wherever both addresses and the remaining length allow, 4 KiB pages elsewhere.
    pub fn map(&mut self, root: u64, va: u64, gpa: u64, len: u64, flags: LeafFlags) -> Result<(), PagingError> {
        if va % PAGE_SIZE != 0 || gpa % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(PagingError::Unaligned { va, gpa, len });
        }
        let leaf = flags.bits() | if self.all_user { Pte::USER } else { 0 };
        let mut off = 0;
        while off < len {
            let (v, p) = (va.wrapping_add(off), gpa + off);
            let idx = |shift: u32| (v >> shift) & 0x1ff;
            let pdpt = self.child(root, idx(39), flags.user)?;
            let pd = self.child(pdpt, idx(30), flags.user)?;
            let large =
                !flags.track && v % LARGE_PAGE_SIZE == 0 && p % LARGE_PAGE_SIZE == 0 && len - off >= LARGE_PAGE_SIZE;
            if large {
                let slot = pd + idx(21) * 8;
                if self.mem.read_u64(slot)? & Pte::PRESENT != 0 {
                    return Err(PagingError::AlreadyMapped(v));
                }
                self.mem.write_u64(slot, p | leaf | Pte::LARGE)?;
                off += LARGE_PAGE_SIZE;
            } else {
                let pt = self.child(pd, idx(21), flags.user)?;
                let slot = pt + idx(12) * 8;
                if self.mem.read_u64(slot)? & Pte::PRESENT != 0 {
                    return Err(PagingError::AlreadyMapped(v));
                }
                self.mem.write_u64(slot, p | leaf)?;
                off += PAGE_SIZE;
            }
        }
        Ok(())
    }

    /// Clears the Dirty bit of every 4 KiB leaf of RAM in the lower half under `root`, before
    /// any vCPU uses the tables (a snapshot's tables, so that in-guest resets start clean),
    /// walking only the tables that exist (the address space is sparse).  Returns how many
    /// were cleared.
    pub fn clear_dirty_tables(mem: &mut GuestMemory, root: u64) -> Result<u64, OutOfRange> {
        let mut cleared = 0;
        let present = |e: u64| e & Pte::PRESENT != 0 && e & Pte::LARGE == 0;
        for i in 0..256 {
            let e4 = mem.read_u64(root + 8 * i)?;
            if !present(e4) {
                continue;
            }
            for j in 0..512 {
                let e3 = mem.read_u64((e4 & Pte::ADDRESS_MASK) + 8 * j)?;
                if !present(e3) {
                    continue;
                }
                for k in 0..512 {
                    let e2 = mem.read_u64((e3 & Pte::ADDRESS_MASK) + 8 * k)?;
                    if !present(e2) {
                        continue;
                    }
                    let pt = e2 & Pte::ADDRESS_MASK;
                    for l in 0..512 {
                        let e1 = mem.read_u64(pt + 8 * l)?;
                        let ram = (e1 & Pte::ADDRESS_MASK) < mem.size();
                        if e1 & Pte::PRESENT != 0 && e1 & Pte::DIRTY != 0 && ram {
                            mem.write_u64(pt + 8 * l, e1 & !Pte::DIRTY)?;
                            cleared += 1;
                        }
                    }
                }
            }
        }
        Ok(cleared)
    }

    /// Walks the tables under `root` like the CPU would: the GPA and leaf bits of `va`.
    #[cfg(test)]
    pub fn translate(mem: &GuestMemory, root: u64, va: u64) -> Option<(u64, u64)> {
        let mut table = root;
        for shift in [39u32, 30, 21, 12] {
            let entry = mem.read_u64(table + ((va >> shift) & 0x1ff) * 8).ok()?;
            if entry & Pte::PRESENT == 0 {
                return None;
            }
            if shift == 21 && entry & Pte::LARGE != 0 {
                return Some(((entry & Pte::ADDRESS_MASK) + (va & (LARGE_PAGE_SIZE - 1)), entry));
            }
            if shift == 12 {
                return Some(((entry & Pte::ADDRESS_MASK) + (va & (PAGE_SIZE - 1)), entry));
            }
            table = entry & Pte::ADDRESS_MASK;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW_USER: LeafFlags = LeafFlags { write: true, exec: false, user: true, track: false };

    #[test]
    fn maps_with_large_pages_where_aligned_and_small_pages_elsewhere() {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        let mut pt = PageTables::new(&mut mem, 0x1000, 0x10_0000, false);
        // 0x3ff000 .. 0x801000: one small page, two large pages, one small page
        pt.map(0, 0x3f_f000, 0x1f_f000, 0x40_2000, RW_USER).unwrap();
        // PDPT + PD + 2 PTs (one for each unaligned edge)
        assert_eq!(pt.allocated(), 4);
        let (gpa, bits) = PageTables::translate(&mem, 0, 0x40_1234).unwrap();
        assert_eq!(gpa, 0x20_1234);
        assert!(bits & Pte::LARGE != 0 && bits & Pte::USER != 0 && bits & Pte::NO_EXEC != 0);
        let (gpa, bits) = PageTables::translate(&mem, 0, 0x80_0010).unwrap();
        assert_eq!(gpa, 0x60_0010);
        assert_eq!(bits & Pte::LARGE, 0);
        assert!(PageTables::translate(&mem, 0, 0x80_1000).is_none());
        assert!(PageTables::translate(&mem, 0, 0x3f_e000).is_none());
    }

    #[test]
    fn read_only_executable_leaf_and_kernel_half() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut pt = PageTables::new(&mut mem, 0x1000, 0x8000, false);
        let rx = LeafFlags { write: false, exec: true, user: false, track: false };
        pt.map(0, 0xffff_ffff_8000_0000, 0x10_0000, 0x1000, rx).unwrap();
        let (_, bits) = PageTables::translate(&mem, 0, 0xffff_ffff_8000_0000).unwrap();
        assert_eq!(bits & (Pte::WRITABLE | Pte::NO_EXEC | Pte::USER | Pte::DIRTY), 0);
        assert!(bits & Pte::ACCESSED != 0);
    }

    #[test]
    fn errors_are_reported() {
        let mut mem = GuestMemory::new(4 << 20).unwrap();
        let mut pt = PageTables::new(&mut mem, 0x1000, 0x4000, false);
        assert!(matches!(pt.map(0, 0x1001, 0, 0x1000, RW_USER), Err(PagingError::Unaligned { .. })));
        pt.map(0, 0x40_0000, 0x10_0000, 0x1000, RW_USER).unwrap();
        assert_eq!(pt.map(0, 0x40_0000, 0x10_0000, 0x1000, RW_USER), Err(PagingError::AlreadyMapped(0x40_0000)));
        assert!(matches!(pt.map(0, 0x4000_0000, 0x10_0000, 0x1000, RW_USER), Err(PagingError::PoolExhausted(_))));
    }
}
