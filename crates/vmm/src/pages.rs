//! The program's memory on demand: its page tables at run time, and the pool of RAM pages
//! they hand out.
//!
//! The image and the initial stack are mapped once at boot (see [`crate::loader`]).  Every
//! other byte of the program's memory (brk, mmap) is a range of the page tables that has no
//! page until it is touched, so an address space can be far larger than RAM: a 16 GiB
//! `PROT_NONE` reservation costs no RAM and no page table at all, an untouched read-write
//! mapping one page-table entry per block.
//!
//! ```text
//!  entry (not present)      meaning
//!  0                        nothing mapped (a fault is the program's)
//!  PTE_LAZY | W? | NX?      "give me a page on first touch" with those rights; at the PD or
//!                           PDPT level: for every page of the 2 MiB / 1 GiB block
//!  PTE_KEEP | frame         a page made PROT_NONE that keeps its contents
//! ```
//!
//! Pages come from a pool of RAM whose state is in KDATA (next never-used page, a list of
//! freed pages, pages in use, the limit).  The guest kernel's page-fault handler (`lazy_fault`
//! in guest/kernel.c) takes pages without an exit; the VMM takes them the same way when a
//! system call touches such memory, and gives them back on munmap.  The pool is the memory
//! cap: a fault it cannot serve is the typed out-of-memory failure.
//!
//! Two rules keep the guest's view right on PVM, where the shadow MMU only notices the
//! guest's own writes to page tables (docs/platform.md):
//! - every entry changed after boot is logged (entry, a virtual address under it, old value)
//!   in the vCPU area; entries the VMM changed are written again by the guest kernel, with an
//!   `invlpg`, before it returns to the program (`sync_ptes`), so a page unmapped here is
//!   unmapped there;
//! - a reset undoes the log in the guest (newest first), and the VMM's own reset leaves the
//!   snapshot's page tables alone (they keep their Dirty bits, which the in-guest resets read).
//!   Entries logged inside tables the request created are dropped before that: the VMM's
//!   reset gives those pages their snapshot contents (they were free then).

use crate::guest::layout::*;
use crate::guest::PAGE_SIZE;
use crate::memory::{GuestMemory, Mapping};
use crate::paging::Pte;

/// The software bits of not-present entries (guest/layout.h).
const LAZY: u64 = PTE_LAZY;
const KEEP: u64 = PTE_KEEP;
/// Bits of an entry that links a table.
const TABLE_BITS: u64 = Pte::PRESENT | Pte::WRITABLE | Pte::USER | Pte::ACCESSED;

/// Rights of program memory, as page-table bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    /// Any access (false: PROT_NONE).
    pub access: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Rights {
    fn bits(self) -> u64 {
        (if self.write { Pte::WRITABLE } else { 0 }) | (if self.exec { 0 } else { Pte::NO_EXEC })
    }
}

/// Why a change of the page tables could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PagesError {
    /// The pool has no page left (the memory cap).
    #[error("out of memory")]
    NoMemory,
    /// The change log is full (too many page-table changes in one request).
    #[error("page-table change log full")]
    LogFull,
}

/// The change log's header fields, in the vCPU area.
fn vcd_field(vcpu: &Mapping, field: u64) -> u64 {
    let mut b = [0u8; 8];
    vcpu.read(VC_DATA + field, &mut b).expect("VCD lies in the vCPU area");
    u64::from_le_bytes(b)
}

fn set_vcd_field(vcpu: &Mapping, field: u64, v: u64) {
    vcpu.write(VC_DATA + field, &v.to_le_bytes()).expect("VCD lies in the vCPU area");
}

/// Sets up an empty change log of `capacity` entries at `offset` of the vCPU area.
pub fn init_log(vcpu: &Mapping, offset: u64, capacity: u64) {
    for (f, v) in [(VCD_PTLOG_COUNT, 0), (VCD_PTLOG_DONE, 0), (VCD_PTLOG_CAP, capacity), (VCD_PTLOG_OFF, offset)] {
        set_vcd_field(vcpu, f, v);
    }
}

/// Forgets the log when nothing in it is pending and no reset will undo it (a machine that
/// is not an instance): its entries only matter to a reset.
pub fn truncate_log(vcpu: &Mapping) {
    let count = vcd_field(vcpu, VCD_PTLOG_COUNT);
    if count != 0 && vcd_field(vcpu, VCD_PTLOG_DONE) == count {
        set_vcd_field(vcpu, VCD_PTLOG_COUNT, 0);
        set_vcd_field(vcpu, VCD_PTLOG_DONE, 0);
    }
}

/// Drops the logged entries that lie in pages `keep` says no (tables the request created:
/// the VMM's reset gives them their snapshot contents).  Called by the VMM's reset, before
/// the guest undoes the rest.  An entry dropped that linked a table becomes a "forget only"
/// entry naming the table it links now (in `ram`): the guest kernel makes the shadow MMU
/// forget it (see `keep_unlinked_tables`).
pub fn filter_log(vcpu: &Mapping, ram: &GuestMemory, keep: impl Fn(u64) -> bool) {
    let count = vcd_field(vcpu, VCD_PTLOG_COUNT);
    let off = vcd_field(vcpu, VCD_PTLOG_OFF);
    let mut kept = 0;
    let mut entry = [0u8; PTLOG_ENTRY as usize];
    for i in 0..count {
        vcpu.read(off + i * PTLOG_ENTRY, &mut entry).expect("the log lies in the vCPU area");
        let slot = u64::from_le_bytes(entry[..8].try_into().unwrap());
        let va = u64::from_le_bytes(entry[8..16].try_into().unwrap());
        let linked = ram.read_u64(slot).unwrap_or(0);
        if !keep(slot / PAGE_SIZE) && va & PTLOG_LINKS_TABLE != 0 && linked & Pte::PRESENT != 0 {
            entry[8..16].copy_from_slice(&(va | PTLOG_FORGET_ONLY).to_le_bytes());
            entry[16..24].copy_from_slice(&linked.to_le_bytes());
            vcpu.write(off + kept * PTLOG_ENTRY, &entry).expect("the log lies in the vCPU area");
            kept += 1;
        } else if keep(slot / PAGE_SIZE) {
            if kept != i {
                vcpu.write(off + kept * PTLOG_ENTRY, &entry).expect("the log lies in the vCPU area");
            }
            kept += 1;
        }
    }
    set_vcd_field(vcpu, VCD_PTLOG_COUNT, kept);
    set_vcd_field(vcpu, VCD_PTLOG_DONE, kept);
}

/// The pool's fields in KDATA, in order (guest/layout.h).
pub const POOL_FIELDS: [u64; 5] = [KD_POOL_NEXT, KD_POOL_END, KD_POOL_FREE, KD_POOL_USED, KD_POOL_LIMIT];

/// The program's page tables and the page pool, for the VMM's changes.
pub struct Pages<'a> {
    ram: &'a mut GuestMemory,
    vcpu: &'a Mapping,
    /// Log changes of entries that were not present too (a reset will undo them).
    keep_log: bool,
}

/// What to do with the pages of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Nothing mapped any more (pages given back).
    Unmap,
    /// Fresh memory with these rights: pages given back, lazy markers (or nothing for
    /// PROT_NONE).
    Fresh(Rights),
    /// Same pages, new rights.
    Protect(Rights),
}

fn kd(field: u64) -> u64 {
    GPA_KDATA + field
}

impl<'a> Pages<'a> {
    /// The page tables in `ram`, the log in `vcpu`.
    pub fn new(ram: &'a mut GuestMemory, vcpu: &'a Mapping, keep_log: bool) -> Pages<'a> {
        Pages { ram, vcpu, keep_log }
    }

    fn read(&self, gpa: u64) -> u64 {
        self.ram.read_u64(gpa).expect("page tables lie in RAM")
    }

    fn write(&mut self, gpa: u64, v: u64) {
        self.ram.write_u64(gpa, v).expect("page tables lie in RAM");
    }

    /// Pages handed out.
    pub fn used(&self) -> u64 {
        self.read(kd(KD_POOL_USED))
    }

    /// Pages the pool holds in all.
    pub fn capacity(&self) -> u64 {
        (self.read(kd(KD_POOL_END)) - self.read(kd(KD_POOL_START))) / PAGE_SIZE
    }

    /// Sets the most pages that may be in use.
    pub fn set_limit(&mut self, pages: u64) {
        self.write(kd(KD_POOL_LIMIT), pages);
    }

    fn alloc(&mut self) -> Result<u64, PagesError> {
        let used = self.read(kd(KD_POOL_USED));
        if used >= self.read(kd(KD_POOL_LIMIT)) {
            return Err(PagesError::NoMemory);
        }
        let free = self.read(kd(KD_POOL_FREE));
        let page = if free != 0 {
            let next = self.read(free);
            self.write(kd(KD_POOL_FREE), next);
            self.ram.zero(free, PAGE_SIZE).expect("pool pages lie in RAM");
            free
        } else {
            // Never handed out since boot: still zero.
            let next = self.read(kd(KD_POOL_NEXT));
            if next >= self.read(kd(KD_POOL_END)) {
                return Err(PagesError::NoMemory);
            }
            self.write(kd(KD_POOL_NEXT), next + PAGE_SIZE);
            next
        };
        self.write(kd(KD_POOL_USED), used + 1);
        Ok(page)
    }

    fn free(&mut self, page: u64) {
        let head = self.read(kd(KD_POOL_FREE));
        self.write(page, head);
        self.write(kd(KD_POOL_FREE), page);
        let used = self.read(kd(KD_POOL_USED));
        self.write(kd(KD_POOL_USED), used.saturating_sub(1));
    }

    fn log_room(&self, n: u64) -> bool {
        vcd_field(self.vcpu, VCD_PTLOG_COUNT) + n <= vcd_field(self.vcpu, VCD_PTLOG_CAP)
    }

    /// Sets the entry at `slot` (a GPA) covering `va`, logging the change.
    fn set(&mut self, slot: u64, va: u64, value: u64) -> Result<(), PagesError> {
        let old = self.read(slot);
        if old == value {
            return Ok(());
        }
        if old & Pte::PRESENT != 0 || self.keep_log {
            if !self.log_room(1) {
                return Err(PagesError::LogFull);
            }
            let n = vcd_field(self.vcpu, VCD_PTLOG_COUNT);
            let off = vcd_field(self.vcpu, VCD_PTLOG_OFF) + n * PTLOG_ENTRY;
            let mut e = [0u8; PTLOG_ENTRY as usize];
            e[..8].copy_from_slice(&slot.to_le_bytes());
            e[8..16].copy_from_slice(&va.to_le_bytes());
            e[16..24].copy_from_slice(&old.to_le_bytes());
            self.vcpu.write(off, &e).expect("the log lies in the vCPU area");
            set_vcd_field(self.vcpu, VCD_PTLOG_COUNT, n + 1);
        }
        self.write(slot, value);
        Ok(())
    }

    /// The PDPT under PML4 entry `index`, created if missing (in both PML4s: PVM runs the
    /// program on the one at GPA_UPML4).
    fn pdpt(&mut self, va: u64) -> Result<u64, PagesError> {
        let index = (va >> 39) & 511;
        let e = self.read(GPA_KPML4 + 8 * index);
        if e & Pte::PRESENT != 0 {
            return Ok(e & Pte::ADDRESS_MASK);
        }
        let page = self.alloc()?;
        self.set(GPA_KPML4 + 8 * index, va | PTLOG_LINKS_TABLE, page | TABLE_BITS)?;
        self.set(GPA_UPML4 + 8 * index, va | PTLOG_LINKS_TABLE, page | TABLE_BITS)?;
        Ok(page)
    }

    /// The table an entry links, made from a block entry (marker or nothing) if needed.
    fn split(&mut self, slot: u64, va: u64) -> Result<u64, PagesError> {
        let e = self.read(slot);
        if e & Pte::PRESENT != 0 {
            return Ok(e & Pte::ADDRESS_MASK);
        }
        let page = self.alloc()?;
        if e != 0 {
            for i in 0..512 {
                self.write(page + 8 * i, e);
            }
        }
        self.set(slot, va | PTLOG_LINKS_TABLE, page | TABLE_BITS)?;
        Ok(page)
    }

    /// Gives back every page under the table at `table` (level 1: a page table) and the
    /// table itself, unless tables are kept (below).
    fn release_table(&mut self, table: u64, level: u32) {
        for i in 0..512 {
            let e = self.read(table + 8 * i);
            if e & Pte::PRESENT != 0 && level > 1 && e & Pte::LARGE == 0 {
                self.release_table(e & Pte::ADDRESS_MASK, level - 1);
            } else if (e & Pte::PRESENT != 0 || e & KEEP != 0) && level == 1 {
                self.free(e & Pte::ADDRESS_MASK);
            }
        }
        if !self.keep_unlinked_tables() {
            self.free(table);
        }
    }

    /// Whether a table page must not go back to the pool when it is unlinked: in an
    /// instance (whose log a reset will undo), none does.
    ///
    /// - A table the snapshot holds is linked again by the reset: the VMM's reset leaves the
    ///   snapshot's tables alone and the guest's undo log puts back only the entries that were
    ///   changed in them, so the page must keep its contents (reused by the request, as a
    ///   table or as data, the next request would see the snapshot's memory through what it
    ///   left there).
    /// - A table the request made may still have a shadow copy in a shadow MMU (PVM), which
    ///   only the guest's own writes keep in step: reused as a table in the same request and
    ///   filled by the VMM (`split`), it would be translated through the stale copy.  After
    ///   the reset the guest kernel makes the shadow MMU forget the tables the request linked
    ///   (`forget_table` in guest/kernel.c), so the pool may hand them out again then.
    ///
    /// The pages kept are given back by the reset (the pool is put back as at the snapshot);
    /// a stateful instance keeps them until its next reset.
    fn keep_unlinked_tables(&self) -> bool {
        self.keep_log
    }

    /// The new value of a leaf entry `e` under `op`; frees its page when the page goes.
    fn leaf(&mut self, e: u64, op: Op) -> u64 {
        let has_page = e & Pte::PRESENT != 0 || e & KEEP != 0;
        match op {
            Op::Unmap | Op::Fresh(_) => {
                if has_page {
                    self.free(e & Pte::ADDRESS_MASK);
                }
                match op {
                    Op::Fresh(r) if r.access => LAZY | r.bits(),
                    _ => 0,
                }
            }
            Op::Protect(r) if has_page => {
                let frame = e & Pte::ADDRESS_MASK;
                if r.access {
                    frame | Pte::PRESENT | Pte::USER | Pte::ACCESSED | (e & Pte::DIRTY) | r.bits()
                } else {
                    frame | KEEP
                }
            }
            Op::Protect(r) => {
                if r.access {
                    LAZY | r.bits()
                } else {
                    0
                }
            }
        }
    }

    /// Applies `op` to every page of `[lo, hi)` (page aligned, in the lower half).
    pub fn apply(&mut self, lo: u64, hi: u64, op: Op) -> Result<(), PagesError> {
        let mut va = lo;
        while va < hi {
            let pdpt = self.pdpt(va)?;
            let end = hi.min(((va >> 39) + 1) << 39);
            self.apply_level(pdpt, 3, va, end, op)?;
            va = end;
        }
        Ok(())
    }

    fn apply_level(&mut self, table: u64, level: u32, lo: u64, hi: u64, op: Op) -> Result<(), PagesError> {
        let shift = 12 + 9 * (level - 1);
        let size = 1u64 << shift;
        let mut va = lo;
        while va < hi {
            let block = va & !(size - 1);
            let end = hi.min(block + size);
            let slot = table + 8 * ((va >> shift) & 511);
            let e = self.read(slot);
            let whole = va == block && end == block + size;
            if level == 1 {
                let v = self.leaf(e, op);
                self.set(slot, va, v)?;
            } else if e & Pte::PRESENT != 0 && e & Pte::LARGE != 0 {
                // Large pages are the image's, which this never changes.
            } else if e & Pte::PRESENT == 0 {
                let v = Self::block_value(op);
                if whole {
                    self.set(slot, va, v)?;
                } else if v != e {
                    let child = self.split(slot, va)?;
                    self.apply_level(child, level - 1, va, end, op)?;
                }
            } else if whole && !matches!(op, Op::Protect(_)) {
                self.set(slot, va, Self::block_value(op))?;
                self.release_table(e & Pte::ADDRESS_MASK, level - 1);
            } else {
                self.apply_level(e & Pte::ADDRESS_MASK, level - 1, va, end, op)?;
            }
            va = end;
        }
        Ok(())
    }

    /// The value of a block entry (no page under it) under `op`.
    fn block_value(op: Op) -> u64 {
        match op {
            Op::Unmap => 0,
            Op::Fresh(r) | Op::Protect(r) => {
                if r.access {
                    LAZY | r.bits()
                } else {
                    0
                }
            }
        }
    }

    /// The RAM address of user address `va` for an access by the VMM, giving lazy memory
    /// its page now; `None` when the program could not make that access itself.
    pub fn translate(&mut self, va: u64, write: bool) -> Result<Option<u64>, PagesError> {
        if va >= USER_VA_LIMIT {
            return Ok(None);
        }
        let mut table = GPA_KPML4;
        let mut shift = 39;
        loop {
            let slot = table + 8 * ((va >> shift) & 511);
            let e = self.read(slot);
            if e & Pte::PRESENT != 0 {
                if shift == 12 || (shift == 21 && e & Pte::LARGE != 0) {
                    if e & Pte::USER == 0 || (write && e & Pte::WRITABLE == 0) {
                        return Ok(None);
                    }
                    let gpa = (e & Pte::ADDRESS_MASK) + (va & ((1 << shift) - 1));
                    return Ok((gpa < self.ram.size()).then_some(gpa));
                }
                table = e & Pte::ADDRESS_MASK;
                shift -= 9;
                continue;
            }
            if e & LAZY == 0 || shift == 39 || (write && e & Pte::WRITABLE == 0) {
                return Ok(None);
            }
            if !self.log_room(4) {
                return Err(PagesError::LogFull);
            }
            if shift > 12 {
                table = self.split(slot, va)?;
                shift -= 9;
                continue;
            }
            let page = self.alloc()?;
            self.set(slot, va, page | Pte::PRESENT | Pte::USER | Pte::ACCESSED | (e & (Pte::WRITABLE | Pte::NO_EXEC)))?;
            return Ok(Some(page + (va & (PAGE_SIZE - 1))));
        }
    }

    /// Whether `va` is lazy memory that has no page yet (a fault there is for the pool).
    pub fn is_lazy(&self, va: u64) -> bool {
        if va >= USER_VA_LIMIT {
            return false;
        }
        let mut table = GPA_KPML4;
        let mut shift = 39;
        loop {
            let e = self.read(table + 8 * ((va >> shift) & 511));
            if e & Pte::PRESENT == 0 {
                return e & LAZY != 0 && shift < 39;
            }
            if shift == 12 || e & Pte::LARGE != 0 {
                return false;
            }
            table = e & Pte::ADDRESS_MASK;
            shift -= 9;
        }
    }

    /// Moves the pages (and markers) of `[from, from + len)` to `[to, to + len)`, which must
    /// be unmapped; the old range is left unmapped.
    pub fn relocate(&mut self, from: u64, to: u64, len: u64) -> Result<(), PagesError> {
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            let e = self.leaf_entry(from + off);
            if e == 0 {
                continue;
            }
            let dst = self.leaf_slot(to + off)?;
            self.set(dst, to + off, e)?;
            let src = self.leaf_slot(from + off)?;
            self.set(src, from + off, 0)?;
        }
        Ok(())
    }

    /// The leaf entry for `va` (a block entry counts for each of its pages; 0 if none).
    fn leaf_entry(&self, va: u64) -> u64 {
        let mut table = GPA_KPML4;
        let mut shift = 39;
        loop {
            let e = self.read(table + 8 * ((va >> shift) & 511));
            if e & Pte::PRESENT == 0 {
                return if shift < 39 { e } else { 0 };
            }
            if shift == 12 || e & Pte::LARGE != 0 {
                return e;
            }
            table = e & Pte::ADDRESS_MASK;
            shift -= 9;
        }
    }

    /// The page-table entry for `va`, tables made as needed.
    fn leaf_slot(&mut self, va: u64) -> Result<u64, PagesError> {
        let mut table = self.pdpt(va)?;
        for shift in [30u32, 21] {
            table = self.split(table + 8 * ((va >> shift) & 511), va)?;
        }
        Ok(table + 8 * ((va >> 12) & 511))
    }

    /// The GPA of every table under the lower half (for the reset: the snapshot's tables).
    pub fn tables(ram: &GuestMemory) -> Vec<u64> {
        let mut out = Vec::new();
        let read = |gpa: u64| ram.read_u64(gpa).unwrap_or(0);
        for i in 0..256 {
            let e4 = read(GPA_KPML4 + 8 * i);
            if e4 & Pte::PRESENT == 0 {
                continue;
            }
            let pdpt = e4 & Pte::ADDRESS_MASK;
            out.push(pdpt);
            for j in 0..512 {
                let e3 = read(pdpt + 8 * j);
                if e3 & Pte::PRESENT == 0 || e3 & Pte::LARGE != 0 {
                    continue;
                }
                let pd = e3 & Pte::ADDRESS_MASK;
                out.push(pd);
                for k in 0..512 {
                    let e2 = read(pd + 8 * k);
                    if e2 & Pte::PRESENT != 0 && e2 & Pte::LARGE == 0 {
                        out.push(e2 & Pte::ADDRESS_MASK);
                    }
                }
            }
        }
        out
    }
}

/// What the page tables say about one user address, without changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A page of RAM at this GPA (of the byte), with its rights.
    Frame {
        /// Guest-physical address of the byte.
        gpa: u64,
        /// Writable.
        write: bool,
    },
    /// A page of the program's file (slot 4, read-only): the byte's offset in the file.
    File {
        /// Offset of the byte in the file.
        offset: u64,
    },
    /// Lazy memory without a page yet: reads as zeros.
    Lazy {
        /// Writable once it has a page.
        write: bool,
    },
    /// Nothing the program may access.
    Nothing,
}

/// Looks `va` up in the program's page tables in `ram`.
pub fn lookup(ram: &GuestMemory, va: u64) -> Lookup {
    if va >= USER_VA_LIMIT {
        return Lookup::Nothing;
    }
    let mut table = GPA_KPML4;
    let mut shift = 39u32;
    loop {
        let Ok(e) = ram.read_u64(table + 8 * ((va >> shift) & 511)) else { return Lookup::Nothing };
        if e & Pte::PRESENT == 0 {
            return if e & LAZY != 0 && shift < 39 {
                Lookup::Lazy { write: e & Pte::WRITABLE != 0 }
            } else {
                Lookup::Nothing
            };
        }
        if shift == 12 || (shift == 21 && e & Pte::LARGE != 0) {
            let gpa = (e & Pte::ADDRESS_MASK) + (va & ((1u64 << shift) - 1));
            if e & Pte::USER == 0 {
                return Lookup::Nothing;
            }
            if gpa >= GPA_IMAGE && e & Pte::WRITABLE == 0 {
                return Lookup::File { offset: gpa - GPA_IMAGE };
            }
            if gpa >= ram.size() {
                return Lookup::Nothing;
            }
            return Lookup::Frame { gpa, write: e & Pte::WRITABLE != 0 };
        }
        table = e & Pte::ADDRESS_MASK;
        shift -= 9;
    }
}
