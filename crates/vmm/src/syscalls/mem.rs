//! brk, mmap, munmap, mprotect, mremap, madvise on the program's arena.
//!
//! The arena is the RAM between the end of the program image and the stack guard, mapped
//! read-write once at boot (see [`crate::paging`] for why mappings are never changed later).
//! So these calls are bookkeeping: `brk` grows up from the image, anonymous `mmap` allocates
//! top-down below the stack, like Linux.  What the bookkeeping guarantees:
//! - fresh memory reads as zeros: ranges that were used and released are zeroed before they
//!   are handed out again (`released`);
//! - no two allocations overlap, and nothing is handed out beyond the arena: that refusal
//!   (ENOMEM) is the VM's memory cap.
//!
//! Known differences from Linux, none of which the host depends on: released memory stays
//! accessible to the program until it is reused; `mprotect` records but does not enforce
//! reduced rights; the arena is executable only for programs that need it (dynamically
//! linked ones: ld.so maps libraries there), never otherwise (W^X).  File mappings are copies
//! of the file's bytes made at `mmap` time.

use std::collections::BTreeMap;

use super::{Ctx, Errno, SysResult};
use crate::guest::PAGE_SIZE;

/// A set of disjoint half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> =
            self.ranges.range(..=end).filter(|&(_, &e)| e >= start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `[start, end)` and returns the parts that were in the set.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        if start >= end {
            return Vec::new();
        }
        let hits: Vec<(u64, u64)> =
            self.ranges.range(..end).filter(|&(_, &e)| e > start).map(|(&s, &e)| (s, e)).collect();
        let mut taken = Vec::new();
        for (s, e) in hits {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
            taken.push((s.max(start), e.min(end)));
        }
        taken
    }

    /// Whether any part of `[start, end)` is in the set.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < end && self.ranges.range(..end).any(|(_, &e)| e > start)
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }
}

/// The arena's bookkeeping.
///
/// Invariant: `brk_start <= brk`, `page_up(brk) <=` every mapping start, every mapping ends
/// at or below `top`, mappings are disjoint.
#[derive(Debug, Clone)]
pub struct MemoryState {
    /// Lowest value of the break (end of the image).
    pub brk_start: u64,
    /// Current break.
    pub brk: u64,
    /// End of the arena (the stack guard page).
    pub top: u64,
    /// Anonymous mappings: start → (end, prot).
    pub mappings: BTreeMap<u64, (u64, u32)>,
    /// Ranges the program may have written and then released: zeroed before reuse.
    pub released: RangeSet,
    /// Extent of the image and the stack, for mprotect.
    pub fixed: Vec<(u64, u64)>,
}

fn page_up(v: u64) -> Option<u64> {
    v.checked_next_multiple_of(PAGE_SIZE)
}

impl MemoryState {
    /// The arena `[brk_start, top)`; `fixed` lists other mapped ranges (image, stack).
    pub fn new(brk_start: u64, top: u64, fixed: Vec<(u64, u64)>) -> MemoryState {
        MemoryState { brk_start, brk: brk_start, top, mappings: BTreeMap::new(), released: RangeSet::default(), fixed }
    }

    fn floor(&self) -> u64 {
        page_up(self.brk).unwrap_or(self.top)
    }

    /// Bytes of the arena handed out: the break's pages and every mapping.
    pub fn committed(&self) -> u64 {
        let heap = page_up(self.brk).unwrap_or(self.brk).saturating_sub(self.brk_start);
        heap + self.mappings.iter().map(|(s, (e, _))| e - s).sum::<u64>()
    }

    /// Size of the arena: the program's memory for brk, mmap and (counted here too) /tmp.
    pub fn arena_size(&self) -> u64 {
        self.top.saturating_sub(self.brk_start)
    }

    fn lowest_mapping(&self) -> u64 {
        self.mappings.keys().next().copied().unwrap_or(self.top)
    }

    fn is_free(&self, start: u64, end: u64) -> bool {
        start >= self.floor()
            && end <= self.top
            && start < end
            && !self.mappings.range(..end).any(|(_, &(e, _))| e > start)
    }

    /// Highest free range of `len` bytes (top-down, like Linux's mmap).
    fn find_free(&self, len: u64) -> Option<u64> {
        let mut end = self.top;
        for (&s, &(e, _)) in self.mappings.iter().rev() {
            if end >= e && end - e >= len {
                return Some(end - len);
            }
            end = s;
        }
        let floor = self.floor();
        (end >= floor && end - floor >= len).then(|| end - len)
    }

    /// Removes `[start, end)` from the mappings; returns the parts that were mapped.
    fn unmap(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let hits: Vec<(u64, u64, u32)> =
            self.mappings.range(..end).filter(|&(_, &(e, _))| e > start).map(|(&s, &(e, p))| (s, e, p)).collect();
        let mut removed = Vec::new();
        for (s, e, p) in hits {
            self.mappings.remove(&s);
            if s < start {
                self.mappings.insert(s, (start, p));
            }
            if e > end {
                self.mappings.insert(end, (e, p));
            }
            removed.push((s.max(start), e.min(end)));
        }
        removed
    }
}

/// Zeroes the parts of `[start, end)` that were released earlier.
fn zero_released(ctx: &mut Ctx<'_>, start: u64, end: u64) {
    for (s, e) in ctx.proc.mem.released.take(start, end) {
        let gpa = ctx.mem.map.ram_gpa(s);
        // The arena is inside RAM by construction; a failure here would be a loader bug.
        ctx.mem.ram.zero(gpa, e - s).expect("arena lies inside guest RAM");
    }
}

fn out_of_memory(ctx: &mut Ctx<'_>) -> Errno {
    ctx.memory_exhausted = true;
    Errno::ENOMEM
}

/// brk(addr): returns the new break, or the old one if it cannot move there.
pub fn sys_brk(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let want = a[0];
    let m = &ctx.proc.mem;
    let old = m.brk;
    if want < m.brk_start {
        return Ok(old);
    }
    let Some(want_page) = page_up(want) else { return Ok(old) };
    let old_page_end = page_up(old).unwrap_or(old);
    let grows = want_page.saturating_sub(old_page_end);
    let tmp = ctx.proc.files.tmp.used();
    if want_page > m.lowest_mapping().min(m.top) || m.committed() + grows + tmp > m.arena_size() {
        ctx.memory_exhausted = true;
        return Ok(old);
    }
    let old_page = page_up(old).unwrap_or(old);
    if want_page > old_page {
        zero_released(ctx, old_page, want_page);
    } else if want_page < old_page {
        ctx.proc.mem.released.insert(want_page, old_page);
    }
    // Linux zeroes the tail of the last page when the break moves down and back up.
    if want > old && old % PAGE_SIZE != 0 {
        let gpa = ctx.mem.map.ram_gpa(old);
        let len = (old_page - old).min(want - old);
        ctx.mem.ram.zero(gpa, len).expect("brk lies inside guest RAM");
    }
    ctx.proc.mem.brk = want;
    Ok(want)
}

const PROT_ALL: u64 = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
const PROT_GROWS: u64 = (libc::PROT_GROWSDOWN | libc::PROT_GROWSUP) as u64;

/// mmap(addr, len, prot, flags, fd, offset): anonymous memory only.
pub fn sys_mmap(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len, prot, flags, fd, offset) = (a[0], a[1], a[2], a[3] as i32, a[4] as i32, a[5]);
    if len == 0 || prot & !(PROT_ALL | PROT_GROWS) != 0 {
        return Err(Errno::EINVAL);
    }
    let kind = flags & (libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_SHARED_VALIDATE);
    if kind == 0 {
        return Err(Errno::EINVAL);
    }
    if offset % PAGE_SIZE != 0 {
        return Err(Errno::EINVAL);
    }
    // A file mapping is a copy of the file's bytes (MAP_SHARED included: files are read-only
    // or private to this VM, so nobody else could see a difference except through writes,
    // which mapped_bytes refuses for shared mappings).
    let file = if flags & libc::MAP_ANONYMOUS == 0 {
        let shared_write = kind != libc::MAP_PRIVATE && prot & libc::PROT_WRITE as u64 != 0;
        Some(super::fs::mapped_bytes(ctx, fd as u32 as u64, offset, len, shared_write)?)
    } else {
        None
    };
    let len = page_up(len).ok_or(Errno::ENOMEM)?;
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    // The files in /tmp live in the same budget as the arena (see guest-abi.md).  A fixed
    // mapping usually replaces one, so only new mappings are checked.
    let m = &ctx.proc.mem;
    if !fixed && m.committed() + len + ctx.proc.files.tmp.used() > m.arena_size() {
        return Err(out_of_memory(ctx));
    }
    let start = if fixed {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        let m = &ctx.proc.mem;
        if addr < m.floor() || end > m.top {
            return Err(out_of_memory(ctx));
        }
        if flags & libc::MAP_FIXED_NOREPLACE != 0 && !m.is_free(addr, end) {
            return Err(Errno::EEXIST);
        }
        for (s, e) in ctx.proc.mem.unmap(addr, end) {
            ctx.proc.mem.released.insert(s, e);
        }
        addr
    } else {
        let hint = addr / PAGE_SIZE * PAGE_SIZE;
        match hint.checked_add(len) {
            Some(end) if hint != 0 && ctx.proc.mem.is_free(hint, end) => hint,
            _ => match ctx.proc.mem.find_free(len) {
                Some(s) => s,
                None => return Err(out_of_memory(ctx)),
            },
        }
    };
    zero_released(ctx, start, start + len);
    if let Some(bytes) = file {
        // Beyond the end of the file the mapping reads zeros (it was zeroed above, or is
        // untouched arena).
        let gpa = ctx.mem.map.ram_gpa(start);
        ctx.mem.ram.write(gpa, &bytes).expect("arena lies inside guest RAM");
    }
    ctx.proc.mem.mappings.insert(start, (start + len, prot as u32));
    Ok(start)
}

/// munmap(addr, len)
pub fn sys_munmap(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len) = (a[0], a[1]);
    if addr % PAGE_SIZE != 0 || len == 0 {
        return Err(Errno::EINVAL);
    }
    let end = page_up(len).and_then(|l| addr.checked_add(l)).ok_or(Errno::EINVAL)?;
    if end > crate::guest::layout::USER_VA_LIMIT {
        return Err(Errno::EINVAL);
    }
    for (s, e) in ctx.proc.mem.unmap(addr, end) {
        ctx.proc.mem.released.insert(s, e);
    }
    Ok(0)
}

fn covered(m: &MemoryState, start: u64, end: u64) -> bool {
    let mut cursor = start;
    while cursor < end {
        let brk_end = page_up(m.brk).unwrap_or(m.brk);
        let next = if cursor >= m.brk_start && cursor < brk_end {
            brk_end
        } else if let Some((_, &(e, _))) = m.mappings.range(..=cursor).next_back().filter(|(_, &(e, _))| e > cursor) {
            e
        } else if let Some(&(_, e)) = m.fixed.iter().find(|&&(s, e)| cursor >= s && cursor < e) {
            e
        } else {
            return false;
        };
        cursor = next;
    }
    true
}

/// mprotect(addr, len, prot): recorded, not enforced (see the module comment).
pub fn sys_mprotect(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len, prot) = (a[0], a[1], a[2]);
    if addr % PAGE_SIZE != 0 || prot & !(PROT_ALL | PROT_GROWS) != 0 {
        return Err(Errno::EINVAL);
    }
    let end = page_up(len).and_then(|l| addr.checked_add(l)).ok_or(Errno::ENOMEM)?;
    if !covered(&ctx.proc.mem, addr, end) {
        return Err(Errno::ENOMEM);
    }
    let m = &mut ctx.proc.mem;
    let pieces: Vec<(u64, u64)> = m.unmap(addr, end);
    for (s, e) in pieces {
        m.mappings.insert(s, (e, prot as u32));
    }
    Ok(0)
}

/// mremap(old, old_len, new_len, flags, new_addr)
pub fn sys_mremap(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (old, old_len, new_len, flags, new_addr) = (a[0], a[1], a[2], a[3] as i32, a[4]);
    let known = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP;
    if old % PAGE_SIZE != 0 || new_len == 0 || flags & !known != 0 {
        return Err(Errno::EINVAL);
    }
    if flags & libc::MREMAP_FIXED != 0 && flags & libc::MREMAP_MAYMOVE == 0 {
        return Err(Errno::EINVAL);
    }
    if flags & libc::MREMAP_DONTUNMAP != 0 {
        return Err(Errno::EINVAL);
    }
    let old_len = page_up(old_len).ok_or(Errno::EINVAL)?;
    let new_len = page_up(new_len).ok_or(Errno::EINVAL)?;
    let old_end = old.checked_add(old_len).ok_or(Errno::EFAULT)?;
    let m = &ctx.proc.mem;
    let (&start, &(end, prot)) = m.mappings.range(..=old).next_back().ok_or(Errno::EFAULT)?;
    if old_end > end || old < start || old_len == 0 {
        return Err(Errno::EFAULT);
    }
    if flags & libc::MREMAP_FIXED == 0 {
        if new_len <= old_len {
            for (s, e) in ctx.proc.mem.unmap(old + new_len, old_end) {
                ctx.proc.mem.released.insert(s, e);
            }
            return Ok(old);
        }
        let grow_end = old.checked_add(new_len).ok_or(Errno::ENOMEM)?;
        if old_end == end && ctx.proc.mem.is_free(old_end, grow_end) {
            zero_released(ctx, old_end, grow_end);
            ctx.proc.mem.unmap(old, old_end);
            ctx.proc.mem.mappings.insert(old, (grow_end, prot));
            return Ok(old);
        }
        if flags & libc::MREMAP_MAYMOVE == 0 {
            return Err(out_of_memory(ctx));
        }
    }
    let target = if flags & libc::MREMAP_FIXED != 0 {
        if new_addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let end = new_addr.checked_add(new_len).ok_or(Errno::EINVAL)?;
        if new_addr < old_end && end > old {
            return Err(Errno::EINVAL);
        }
        if new_addr < ctx.proc.mem.floor() || end > ctx.proc.mem.top {
            return Err(out_of_memory(ctx));
        }
        for (s, e) in ctx.proc.mem.unmap(new_addr, end) {
            ctx.proc.mem.released.insert(s, e);
        }
        new_addr
    } else {
        ctx.proc.mem.find_free(new_len).ok_or_else(|| out_of_memory(ctx))?
    };
    zero_released(ctx, target, target + new_len);
    let keep = old_len.min(new_len);
    let (src, dst) = (ctx.mem.map.ram_gpa(old), ctx.mem.map.ram_gpa(target));
    ctx.mem.ram.copy_within(src, dst, keep).expect("arena lies inside guest RAM");
    for (s, e) in ctx.proc.mem.unmap(old, old_end) {
        ctx.proc.mem.released.insert(s, e);
    }
    if new_len > keep {
        // The grown tail must read as zeros even if the source had data there.
        let gpa = ctx.mem.map.ram_gpa(target + keep);
        ctx.mem.ram.zero(gpa, new_len - keep).expect("arena lies inside guest RAM");
    }
    ctx.proc.mem.mappings.insert(target, (target + new_len, prot));
    Ok(target)
}

/// madvise(addr, len, advice): MADV_DONTNEED zeroes (anonymous private semantics); the rest
/// are hints.
pub fn sys_madvise(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len, advice) = (a[0], a[1], a[2] as i32);
    if addr % PAGE_SIZE != 0 {
        return Err(Errno::EINVAL);
    }
    let end = page_up(len).and_then(|l| addr.checked_add(l)).ok_or(Errno::EINVAL)?;
    if !(0..=25).contains(&advice) && advice != libc::MADV_HWPOISON {
        return Err(Errno::EINVAL);
    }
    if advice == libc::MADV_DONTNEED && addr < end {
        if !covered(&ctx.proc.mem, addr, end) {
            return Err(Errno::ENOMEM);
        }
        let m = &ctx.proc.mem;
        let (lo, hi) = (addr.max(m.brk_start), end.min(m.top));
        if lo < hi {
            let gpa = ctx.mem.map.ram_gpa(lo);
            ctx.mem.ram.zero(gpa, hi - lo).expect("arena lies inside guest RAM");
        }
    }
    Ok(0)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(MemoryState { brk_start, brk, top, mappings, released, fixed });

impl crate::persist::Persist for RangeSet {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        self.iter().collect::<Vec<_>>().save(e)
    }
    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        let mut set = Self::default();
        for (s, end) in Vec::<(u64, u64)>::load(d)? {
            set.insert(s, end);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_merges_and_takes() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 30);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(r.take(15, 25), vec![(15, 25)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 15), (25, 40)]);
        assert!(r.overlaps(14, 16) && !r.overlaps(15, 25));
        assert_eq!(r.take(0, 100), vec![(10, 15), (25, 40)]);
        assert_eq!(r.iter().count(), 0);
    }

    #[test]
    fn free_space_is_found_top_down() {
        let mut m = MemoryState::new(0x1000, 0x10_0000, vec![]);
        assert_eq!(m.find_free(0x1000), Some(0xf_f000));
        m.mappings.insert(0xf_f000, (0x10_0000, 3));
        m.mappings.insert(0xf_0000, (0xf_e000, 3));
        assert_eq!(m.find_free(0x1000), Some(0xf_e000));
        assert_eq!(m.find_free(0x2000), Some(0xe_e000));
        assert_eq!(m.find_free(0x20_0000), None);
        assert!(m.is_free(0xf_e000, 0xf_f000));
        assert!(!m.is_free(0xf_d000, 0xf_f000));
    }
}
