//! The program's address space, as the VMM checks it.
//!
//! Every address a program passes to a system call is resolved here before the host touches
//! memory: the whole range must lie in areas that grant the access, or the call fails with
//! EFAULT.  Areas never change after boot (see [`crate::paging`] for why the page tables are
//! built once), so this map is also exactly what the page tables say.
//!
//! ```text
//!  lower half (user)                                    where it lives
//!  0 .. image start            unmapped (null pointers fault)
//!  image start .. image end    program segments (r-x / r-- / rw-)    RAM, VA = GPA + offset
//!  image end .. guard          arena: brk grows up, mmap grows down  RAM
//!  guard page                  unmapped (stack overflow faults)
//!  stack .. top of RAM         initial stack                         RAM
//!  SHARED_VA ..                tenant shared memory (rw-)            slot 2
//!  REQUEST_VA ..               request area (r--)                    slot 1
//! ```

use crate::guest::layout::{GPA_SHARED, GPA_VCPU, VC_REQUEST};

/// Access rights of an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perm {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Perm {
    /// r--
    pub const R: Perm = Perm { read: true, write: false, exec: false };
    /// rw-
    pub const RW: Perm = Perm { read: true, write: true, exec: false };
    /// r-x
    pub const RX: Perm = Perm { read: true, write: false, exec: true };

    /// The union of two sets of rights.
    pub fn union(self, other: Perm) -> Perm {
        Perm { read: self.read || other.read, write: self.write || other.write, exec: self.exec || other.exec }
    }
}

/// Where an area's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Guest RAM (slot 0): GPA = VA - ram_offset.
    Ram,
    /// The request area in the vCPU area (slot 1).
    Request,
    /// Tenant shared memory (slot 2).
    Shared,
}

/// One mapped range of the program's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// First byte (page-aligned).
    pub start: u64,
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// Rights.
    pub perm: Perm,
    /// Where the bytes are.
    pub backing: Backing,
}

/// A resolved user range: where its bytes are and at which offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Which memory.
    pub backing: Backing,
    /// GPA for [`Backing::Ram`], offset inside the region otherwise.
    pub offset: u64,
}

/// The program's address space.
///
/// Invariant: `areas` are sorted, non-overlapping and page-aligned; RAM areas map linearly
/// with `va = gpa + ram_offset`.
#[derive(Debug, Clone, Default)]
pub struct UserMap {
    areas: Vec<Area>,
    ram_offset: u64,
    request_va: u64,
    shared_va: u64,
}

impl UserMap {
    /// An empty map whose RAM areas use `va = gpa + ram_offset` (wrapping arithmetic).
    pub fn new(ram_offset: u64) -> UserMap {
        UserMap { areas: Vec::new(), ram_offset, request_va: 0, shared_va: 0 }
    }

    /// VA − GPA of RAM areas.
    pub fn ram_offset(&self) -> u64 {
        self.ram_offset
    }

    /// GPA of a RAM virtual address (no checks).
    pub fn ram_gpa(&self, va: u64) -> u64 {
        va.wrapping_sub(self.ram_offset)
    }

    /// Adds an area; panics if it overlaps another (the loader's bug, not the program's).
    pub fn add(&mut self, area: Area) {
        assert!(area.start < area.end && area.start % 4096 == 0 && area.end % 4096 == 0, "bad area {area:?}");
        let at = self.areas.partition_point(|a| a.start < area.start);
        assert!(at == 0 || self.areas[at - 1].end <= area.start, "overlapping areas");
        assert!(at == self.areas.len() || area.end <= self.areas[at].start, "overlapping areas");
        match area.backing {
            Backing::Request => self.request_va = area.start,
            Backing::Shared => self.shared_va = area.start,
            Backing::Ram => {}
        }
        self.areas.insert(at, area);
    }

    /// All areas, sorted.
    pub fn areas(&self) -> &[Area] {
        &self.areas
    }

    /// Resolves `[va, va + len)` for reading (`write == false`) or writing.  The range must be
    /// covered, without holes, by areas of one backing that all grant the access.  An empty
    /// range resolves anywhere mapped-or-not to offset 0 of RAM (nothing will be accessed).
    pub fn resolve(&self, va: u64, len: u64, write: bool) -> Option<Resolved> {
        if len == 0 {
            return Some(Resolved { backing: Backing::Ram, offset: 0 });
        }
        let end = va.checked_add(len)?;
        let mut i = self.areas.partition_point(|a| a.end <= va);
        let first = self.areas.get(i)?;
        let mut cursor = va;
        while cursor < end {
            let a = self.areas.get(i)?;
            let allowed = if write { a.perm.write } else { a.perm.read };
            if a.start > cursor || a.backing != first.backing || !allowed {
                return None;
            }
            cursor = a.end;
            i += 1;
        }
        let offset = match first.backing {
            Backing::Ram => self.ram_gpa(va),
            Backing::Request => va - self.request_va,
            Backing::Shared => va - self.shared_va,
        };
        Some(Resolved { backing: first.backing, offset })
    }

    /// Guest-physical address of an offset inside a non-RAM backing (for page tables).
    pub fn backing_gpa(backing: Backing) -> u64 {
        match backing {
            Backing::Ram => 0,
            Backing::Request => GPA_VCPU + VC_REQUEST,
            Backing::Shared => GPA_SHARED,
        }
    }
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(UserMap { areas, ram_offset, request_va, shared_va });
crate::persist::persist_fields!(Perm { read, write, exec });
crate::persist::persist_fields!(Area { start, end, perm, backing });

impl crate::persist::Persist for Backing {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        use Backing::*;
        e.u64(match self {
            Ram => 0,
            Request => 1,
            Shared => 2,
        });
        Ok(())
    }
    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use Backing::*;
        Ok([Ram, Request, Shared][d.tag("memory backing", 3)? as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> UserMap {
        let mut m = UserMap::new(0x20_0000);
        m.add(Area { start: 0x40_0000, end: 0x40_2000, perm: Perm::RX, backing: Backing::Ram });
        m.add(Area { start: 0x40_2000, end: 0x40_3000, perm: Perm::RW, backing: Backing::Ram });
        m.add(Area { start: 0x40_3000, end: 0x50_0000, perm: Perm::RW, backing: Backing::Ram });
        m.add(Area { start: 0x7f00_0000_0000, end: 0x7f00_0001_0000, perm: Perm::R, backing: Backing::Request });
        m
    }

    #[test]
    fn resolves_inside_and_across_adjacent_areas() {
        let m = map();
        assert_eq!(m.resolve(0x40_0010, 16, false), Some(Resolved { backing: Backing::Ram, offset: 0x20_0010 }));
        assert_eq!(m.resolve(0x40_2ff0, 0x20, true).map(|r| r.offset), Some(0x20_2ff0));
        assert_eq!(m.resolve(0x7f00_0000_0008, 8, false).map(|r| (r.backing, r.offset)), Some((Backing::Request, 8)));
    }

    #[test]
    fn refuses_holes_rights_overflow_and_mixed_backings() {
        let m = map();
        assert_eq!(m.resolve(0x40_0000, 8, true), None, "text is not writable");
        assert_eq!(m.resolve(0x3f_fff8, 16, false), None, "starts before the first area");
        assert_eq!(m.resolve(0x4f_fff8, 16, false), None, "runs past the last RAM area");
        assert_eq!(m.resolve(u64::MAX - 4, 16, false), None, "wraps around");
        assert_eq!(m.resolve(0, 1, false), None);
        assert_eq!(m.resolve(0x7f00_0000_0000, 8, true), None, "request area is read-only");
    }

    #[test]
    #[should_panic(expected = "overlapping")]
    fn overlapping_areas_are_a_loader_bug() {
        let mut m = map();
        m.add(Area { start: 0x40_1000, end: 0x40_2000, perm: Perm::R, backing: Backing::Ram });
    }
}
