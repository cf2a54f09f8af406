//! The restore view (slot 3): what the guest kernel copies back between batched requests.
//!
//! An in-guest reset (`reset_memory` in `guest/kernel.c`) restores every page the last request
//! wrote from the snapshot.  Handing the guest the whole snapshot RAM as a memory slot would
//! cost every instance KVM bookkeeping for every page of RAM (PVM's shadow MMU keeps a
//! reverse map of 8 bytes per page per slot, plus write tracking: ~2.5 KiB per MiB of RAM),
//! though only writable pages can be dirtied, and most of those were still zero at the
//! snapshot.  The view holds only what a reset can need, compacted:
//!
//! ```text
//!  view page 0 ..     index: one u32 per page of RAM; 0 = the page was zero at the snapshot
//!                     (the kernel zero-fills it), else the view page holding its contents
//!  then               the contents of every writable page that held data, in RAM order
//! ```
//!
//! One view per tenant, built at the freeze and shared read-only by all its instances.  The
//! guest maps [`max_size`] bytes at `KSNAP` (the page tables are built before the snapshot,
//! so before the view's size is known); it reads only the index and the pages it names.

use crate::error::Result;
use crate::guest::{LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::memory::{Mapping, Memfd, ReadOnlyMapping};

/// Bytes of the index for `memory` bytes of RAM (page aligned).
pub fn index_size(memory: u64) -> u64 {
    (memory / PAGE_SIZE * 4).next_multiple_of(PAGE_SIZE)
}

/// The largest view `memory` bytes of RAM can need (every page holding data), rounded up to
/// a large page: what the guest page tables map at `KSNAP`.
pub fn max_size(memory: u64) -> u64 {
    (index_size(memory) + memory).next_multiple_of(LARGE_PAGE_SIZE)
}

/// Builds the view of snapshot RAM `ram` (a mapping of the whole RAM): `writable` are the
/// program's writable ranges of RAM as guest-physical `[start, end)` pairs (page aligned);
/// `resident` says which pages of `ram` hold memory at all (holes read as zero, and are
/// not read here: reading a hole of a shared memfd would allocate it).
pub fn build(
    ram: &ReadOnlyMapping,
    writable: &[(u64, u64)],
    resident: impl Fn(u64) -> bool,
) -> Result<ReadOnlyMapping> {
    let memory = ram.len() as u64;
    let index_pages = index_size(memory) / PAGE_SIZE;
    let mut index = vec![0u32; (memory / PAGE_SIZE) as usize];
    let mut data: Vec<u64> = Vec::new();
    let mut page = [0u8; PAGE_SIZE as usize];
    for &(start, end) in writable {
        for gpa in (start..end.min(memory)).step_by(PAGE_SIZE as usize) {
            let n = gpa / PAGE_SIZE;
            if !resident(n) || ram.read(gpa, &mut page).is_none() || page.iter().all(|&b| b == 0) {
                continue;
            }
            // At most index_pages + memory pages: fits u32 for any RAM below 16 TiB.
            index[n as usize] = (index_pages + data.len() as u64) as u32;
            data.push(gpa);
        }
    }
    let size = (index_pages + data.len() as u64) * PAGE_SIZE;
    let file = Memfd::new("tenantvm-restore-view", size)?;
    {
        let out = Mapping::shared(&file, size as usize)?;
        let bytes: Vec<u8> = index.iter().flat_map(|i| i.to_le_bytes()).collect();
        let written = out.write(0, &bytes).and_then(|()| {
            data.iter().enumerate().try_for_each(|(i, &gpa)| {
                ram.read(gpa, &mut page)?;
                out.write((index_pages + i as u64) * PAGE_SIZE, &page)
            })
        });
        written.expect("the view was sized for the index and every page");
    }
    ReadOnlyMapping::of(&file, size as usize)
}

/// The pages of RAM whose contents the view holds, in view order, as runs `(first page,
/// pages)`: what a snapshot file stores instead of the view (the view's pages are those RAM
/// pages, which the file holds already).  None if `view` is not one [`build`] made (its
/// index does not name its pages in order).
pub fn ram_runs(view: &ReadOnlyMapping, memory: u64) -> Option<Vec<(u64, u64)>> {
    let index_pages = index_size(memory) / PAGE_SIZE;
    let mut index = vec![0u8; (memory / PAGE_SIZE * 4) as usize];
    view.read(0, &mut index)?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut next = index_pages;
    for (page, entry) in index.chunks_exact(4).enumerate() {
        let entry = u64::from(u32::from_le_bytes(entry.try_into().expect("4 bytes")));
        if entry == 0 {
            continue;
        }
        if entry != next {
            return None;
        }
        next += 1;
        match runs.last_mut() {
            Some((start, n)) if *start + *n == page as u64 => *n += 1,
            _ => runs.push((page as u64, 1)),
        }
    }
    (next * PAGE_SIZE == view.len() as u64).then_some(runs)
}

/// The view whose pages are the pages `runs` of `ram` (a snapshot file's RAM, `memory`
/// bytes), as [`ram_runs`] gave them: its index is made anew in a memfd, and the pages are
/// mapped from `ram` itself, not copied (the same page-cache pages instances start from).
/// The runs must be ascending, apart and inside RAM (the caller checks: a file's state).
pub fn from_pages(ram: &Memfd, memory: u64, runs: &[(u64, u64)]) -> Result<ReadOnlyMapping> {
    let index_bytes = index_size(memory);
    let index_pages = index_bytes / PAGE_SIZE;
    let index = Memfd::new("tenantvm-restore-view-index", index_bytes)?;
    {
        let out = Mapping::shared(&index, index_bytes as usize)?;
        let mut next = index_pages;
        for &(start, n) in runs {
            // Only the index pages with entries are written (the rest stay holes: zero).
            let entries: Vec<u8> = (next..next + n).flat_map(|e| (e as u32).to_le_bytes()).collect();
            out.write(start * 4, &entries).expect("the runs lie inside RAM");
            next += n;
        }
    }
    let mut pieces = vec![(&index, 0, index_bytes)];
    pieces.extend(runs.iter().map(|&(start, n)| (ram, start * PAGE_SIZE, n * PAGE_SIZE)));
    ReadOnlyMapping::composed(&pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(view: &ReadOnlyMapping, index_entry: u32) -> Vec<u8> {
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        view.read(u64::from(index_entry) * PAGE_SIZE, &mut buf).unwrap();
        buf
    }

    fn entry(view: &ReadOnlyMapping, page: u64) -> u32 {
        let mut b = [0u8; 4];
        view.read(page * 4, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn only_writable_pages_with_data_are_kept_and_indexed() {
        let memory = 4 << 20;
        let file = Memfd::new("t", memory).unwrap();
        let ram = Mapping::shared(&file, memory as usize).unwrap();
        ram.fill(0x1000, 4096, 0xaa).unwrap(); // writable, data
        ram.fill(0x3000 + 4095, 1, 0x01).unwrap(); // writable, one byte of data at the end
        ram.fill(0x5000, 4096, 0xbb).unwrap(); // data, but not writable
                                               // 0x2000 (writable, zero) and 0x4000 (writable, never touched) stay zero.
        let writable = [(0x1000, 0x5000), (0x20_0000, 0x20_2000)];
        ram.fill(0x20_1000, 8, 0xcc).unwrap();
        let ram = ReadOnlyMapping::of(&file, memory as usize).unwrap();
        let view = build(&ram, &writable, |_| true).unwrap();
        let first = (index_size(memory) / PAGE_SIZE) as u32;
        assert_eq!(view.len() as u64, (u64::from(first) + 3) * PAGE_SIZE);
        assert_eq!(entry(&view, 1), first);
        assert_eq!(entry(&view, 2), 0);
        assert_eq!(entry(&view, 3), first + 1);
        assert_eq!(entry(&view, 4), 0);
        assert_eq!(entry(&view, 5), 0, "not writable: never restored, not kept");
        assert_eq!(entry(&view, 0x201), first + 2);
        assert_eq!(page_of(&view, first), vec![0xaa; 4096]);
        assert_eq!(page_of(&view, first + 1)[4095], 1);
        assert_eq!(&page_of(&view, first + 2)[..9], &[0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0]);
        // Pages said not resident are not read (they are holes: zero).
        let view = build(&ram, &writable, |n| n != 1).unwrap();
        assert_eq!((view.len() as u64, entry(&view, 1)), ((u64::from(first) + 2) * PAGE_SIZE, 0));
    }

    #[test]
    fn a_view_made_from_the_pages_of_ram_is_the_view_built_by_copying() {
        let memory = 4 << 20;
        let file = Memfd::new("t", memory).unwrap();
        let ram = Mapping::shared(&file, memory as usize).unwrap();
        // Runs of writable pages with data, a zero page between two of them, data outside
        // the writable ranges, a run across two writable ranges that touch.
        for (gpa, byte) in [(0x1000, 1u8), (0x2000, 2), (0x4000, 4), (0x9000, 9), (0xa000, 10), (0x30_0000, 0x30)] {
            ram.fill(gpa, 4096, byte).unwrap();
        }
        let writable = [(0x1000, 0x9000), (0x9000, 0xb000), (0x20_0000, 0x20_1000)];
        let ram = ReadOnlyMapping::of(&file, memory as usize).unwrap();
        let built = build(&ram, &writable, |_| true).unwrap();
        let runs = ram_runs(&built, memory).unwrap();
        assert_eq!(runs, [(1, 2), (4, 1), (9, 2)]);
        let made = from_pages(&file, memory, &runs).unwrap();
        assert_eq!(made.len(), built.len());
        let (mut a, mut b) = (vec![0u8; built.len()], vec![0u8; built.len()]);
        built.read(0, &mut a).unwrap();
        made.read(0, &mut b).unwrap();
        assert!(a == b, "the views differ");
        // An index that does not name the view's pages in order is not a view of this kind.
        let other = Memfd::new("v", built.len() as u64).unwrap();
        let m = Mapping::shared(&other, built.len()).unwrap();
        m.write(0, &a).unwrap();
        m.write(4, &(index_size(memory) as u32 / 4096 + 1).to_le_bytes()).unwrap();
        assert_eq!(ram_runs(&ReadOnlyMapping::of(&other, built.len()).unwrap(), memory), None);
    }

    #[test]
    fn sizes_cover_the_worst_case() {
        for memory in [2u64 << 20, 16 << 20, 1 << 30] {
            assert!(max_size(memory) >= index_size(memory) + memory);
            assert_eq!(max_size(memory) % LARGE_PAGE_SIZE, 0);
            assert!(index_size(memory) >= memory / PAGE_SIZE * 4);
        }
    }
}
