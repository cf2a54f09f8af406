//! brk, mmap, munmap, mprotect, mremap, madvise: the program's memory map.
//!
//! The bookkeeping here says which ranges are mapped and with which rights; the page tables
//! say which of their pages exist ([`crate::pages`]).  A mapping costs address space
//! only: its pages come from the pool (the VM's memory cap) when they are first touched, so
//! a `PROT_NONE` reservation of gigabytes costs nothing, and running out of memory is a
//! fault on a page the pool cannot give (the typed out-of-memory failure), as Linux's
//! overcommit makes it an OOM kill.
//!
//! ```text
//!  lower half of the address space
//!  image(s) | heap: brk grows up, within the VM's memory size | guard | stack
//!  ... mappings anywhere else below USER_VA_LIMIT, allocated top-down from it ...
//! ```
//!
//! Rights are enforced by the page tables, as on Linux: a write to read-only memory, any
//! access to `PROT_NONE` memory, execution of non-executable memory is a fault.  Programs
//! that may map code (dynamically linked ones: ld.so maps libraries, JITs) may have
//! executable mappings; others never (W^X).  Differences from Linux: file mappings are
//! copies of the file's bytes made at `mmap` time (`MADV_DONTNEED` then gives zeros, not the
//! file); `mprotect` of the image, the stack and the heap is recorded nowhere and changes
//! nothing.

use std::collections::BTreeMap;

use super::{Ctx, Errno, SysResult};
use crate::guest::layout::USER_VA_LIMIT;
use crate::guest::PAGE_SIZE;
use crate::pages::{Lookup, Op, PagesError, Rights};

/// Lowest address a mapping may have (Linux's default `vm.mmap_min_addr`).
pub const MMAP_MIN: u64 = 0x10000;

/// The memory map's bookkeeping.
///
/// Invariant: `brk_start <= brk`, `page_up(brk) <= top`, mappings are disjoint, page aligned,
/// inside `[MMAP_MIN, USER_VA_LIMIT)`, and overlap neither `fixed` nor the heap.
#[derive(Debug, Clone)]
pub struct MemoryState {
    /// Lowest value of the break (end of the image).
    pub brk_start: u64,
    /// Current break.
    pub brk: u64,
    /// Highest end of the heap (the stack guard page).
    pub top: u64,
    /// Mappings: start → (end, prot).
    pub mappings: BTreeMap<u64, (u64, u32)>,
    /// Extent of the image(s) and the stack.
    pub fixed: Vec<(u64, u64)>,
    /// Mappings may be executable.
    pub exec: bool,
}

fn page_up(v: u64) -> Option<u64> {
    v.checked_next_multiple_of(PAGE_SIZE)
}

impl MemoryState {
    /// A heap from `brk_start` up to `top` at most; `fixed` lists the other mapped ranges
    /// (image, stack); `exec`: mappings may be executable.
    pub fn new(brk_start: u64, top: u64, fixed: Vec<(u64, u64)>, exec: bool) -> MemoryState {
        MemoryState { brk_start, brk: brk_start, top, mappings: BTreeMap::new(), fixed, exec }
    }

    fn heap_end(&self) -> u64 {
        page_up(self.brk).unwrap_or(self.top)
    }

    /// Ranges nothing may be mapped over: the image, the stack, the heap's whole zone.
    fn obstacles(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.fixed.clone();
        v.push((self.brk_start / PAGE_SIZE * PAGE_SIZE, self.top));
        v.extend(self.mappings.iter().map(|(&s, &(e, _))| (s, e)));
        v.sort_unstable();
        v
    }

    fn is_free(&self, start: u64, end: u64) -> bool {
        start >= MMAP_MIN
            && end <= USER_VA_LIMIT
            && start < end
            && !self.obstacles().iter().any(|&(s, e)| s < end && e > start)
    }

    /// Highest free range of `len` bytes (top-down, like Linux's mmap).
    fn find_free(&self, len: u64) -> Option<u64> {
        let mut end = USER_VA_LIMIT;
        for (s, e) in self.obstacles().into_iter().rev() {
            if e <= end && end - e >= len {
                return Some(end - len);
            }
            end = end.min(s);
        }
        (end >= MMAP_MIN && end - MMAP_MIN >= len).then(|| end - len)
    }

    /// Removes `[start, end)` from the mappings; returns the parts that were mapped.
    fn unmap(&mut self, start: u64, end: u64) -> Vec<(u64, u64, u32)> {
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
            removed.push((s.max(start), e.min(end), p));
        }
        removed
    }

    /// The page rights of `prot`.
    fn rights(&self, prot: u64) -> Rights {
        let p = prot as i32;
        Rights {
            access: p & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) != 0,
            write: p & libc::PROT_WRITE != 0,
            exec: self.exec && p & libc::PROT_EXEC != 0,
        }
    }
}

/// The errno of a page-table change that could not be made (and the cap is to blame).
fn no_memory(ctx: &mut Ctx<'_>, _e: PagesError) -> Errno {
    ctx.memory_exhausted = true;
    Errno::ENOMEM
}

/// Applies `op` to `[lo, hi)` of the page tables.
fn apply(ctx: &mut Ctx<'_>, lo: u64, hi: u64, op: Op) -> Result<(), Errno> {
    if lo >= hi {
        return Ok(());
    }
    ctx.mem.pages().apply(lo, hi, op).map_err(|e| no_memory(ctx, e))
}

const RW: Rights = Rights { access: true, write: true, exec: false };

/// brk(addr): returns the new break, or the old one if it cannot move there.
pub fn sys_brk(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let want = a[0];
    let m = &ctx.proc.mem;
    let old = m.brk;
    if want < m.brk_start {
        return Ok(old);
    }
    let Some(want_page) = page_up(want) else { return Ok(old) };
    let old_page = m.heap_end();
    if want_page > m.top {
        ctx.memory_exhausted = true;
        return Ok(old);
    }
    if want_page > old_page && m.mappings.range(..want_page).any(|(_, &(e, _))| e > old_page) {
        return Ok(old);
    }
    if want_page > old_page {
        if apply(ctx, old_page, want_page, Op::Fresh(RW)).is_err() {
            return Ok(old);
        }
    } else if want_page < old_page {
        let _ = apply(ctx, want_page, old_page, Op::Unmap);
    }
    // Linux zeroes the tail of the last page when the break moves down and back up.
    if want > old && old % PAGE_SIZE != 0 {
        let len = (old_page - old).min(want - old);
        if let Lookup::Frame { gpa, .. } = crate::pages::lookup(ctx.mem.ram, old) {
            ctx.mem.ram.zero(gpa, len).expect("the frame lies inside guest RAM");
        }
    }
    ctx.proc.mem.brk = want;
    Ok(want)
}

const PROT_ALL: u64 = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
const PROT_GROWS: u64 = (libc::PROT_GROWSDOWN | libc::PROT_GROWSUP) as u64;

/// Copies `bytes` to `va`, whatever the rights there (the contents of a file mapping).
fn fill(ctx: &mut Ctx<'_>, va: u64, bytes: &[u8]) -> Result<(), Errno> {
    for (i, chunk) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
        let at = va + i as u64 * PAGE_SIZE;
        let gpa = match ctx.mem.pages().translate(at, false) {
            Ok(Some(gpa)) => gpa,
            Ok(None) => return Err(Errno::EFAULT),
            Err(e) => return Err(no_memory(ctx, e)),
        };
        ctx.mem.ram.write(gpa, chunk).expect("the frame lies inside guest RAM");
    }
    Ok(())
}

/// mmap(addr, len, prot, flags, fd, offset)
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
    let start = if fixed {
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        let m = &ctx.proc.mem;
        if addr < MMAP_MIN || end > USER_VA_LIMIT {
            return Err(Errno::ENOMEM);
        }
        if m.fixed.iter().chain(std::iter::once(&(m.brk_start, m.heap_end()))).any(|&(s, e)| s < end && e > addr) {
            return Err(Errno::ENOMEM);
        }
        if flags & libc::MAP_FIXED_NOREPLACE != 0 && m.mappings.range(..end).any(|(_, &(e, _))| e > addr) {
            return Err(Errno::EEXIST);
        }
        ctx.proc.mem.unmap(addr, end);
        addr
    } else {
        let hint = addr / PAGE_SIZE * PAGE_SIZE;
        match hint.checked_add(len) {
            Some(end) if hint != 0 && ctx.proc.mem.is_free(hint, end) => hint,
            _ => ctx.proc.mem.find_free(len).ok_or(Errno::ENOMEM)?,
        }
    };
    let rights = ctx.proc.mem.rights(prot);
    let end = start + len;
    match file {
        Some(bytes) if !bytes.is_empty() => {
            // The bytes go in through readable pages; PROT_NONE keeps them for later.
            apply(ctx, start, end, Op::Fresh(Rights { access: true, ..rights }))?;
            fill(ctx, start, &bytes)?;
            if !rights.access {
                apply(ctx, start, end, Op::Protect(rights))?;
            }
        }
        _ => apply(ctx, start, end, Op::Fresh(rights))?,
    }
    ctx.proc.mem.mappings.insert(start, (end, prot as u32));
    Ok(start)
}

/// munmap(addr, len)
pub fn sys_munmap(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len) = (a[0], a[1]);
    if addr % PAGE_SIZE != 0 || len == 0 {
        return Err(Errno::EINVAL);
    }
    let end = page_up(len).and_then(|l| addr.checked_add(l)).ok_or(Errno::EINVAL)?;
    if end > USER_VA_LIMIT {
        return Err(Errno::EINVAL);
    }
    for (s, e, _) in ctx.proc.mem.unmap(addr, end) {
        apply(ctx, s, e, Op::Unmap)?;
    }
    Ok(0)
}

fn covered(m: &MemoryState, start: u64, end: u64) -> bool {
    let mut cursor = start;
    while cursor < end {
        let next = if cursor >= m.brk_start && cursor < m.heap_end() {
            m.heap_end()
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

/// mprotect(addr, len, prot): enforced on mappings (see the module comment).
pub fn sys_mprotect(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len, prot) = (a[0], a[1], a[2]);
    if addr % PAGE_SIZE != 0 || prot & !(PROT_ALL | PROT_GROWS) != 0 {
        return Err(Errno::EINVAL);
    }
    let end = page_up(len).and_then(|l| addr.checked_add(l)).ok_or(Errno::ENOMEM)?;
    if !covered(&ctx.proc.mem, addr, end) {
        return Err(Errno::ENOMEM);
    }
    let rights = ctx.proc.mem.rights(prot);
    let pieces = ctx.proc.mem.unmap(addr, end);
    for &(s, e, _) in &pieces {
        ctx.proc.mem.mappings.insert(s, (e, prot as u32));
    }
    for (s, e, _) in pieces {
        apply(ctx, s, e, Op::Protect(rights))?;
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
    let rights = m.rights(u64::from(prot));
    if flags & libc::MREMAP_FIXED == 0 {
        if new_len <= old_len {
            ctx.proc.mem.unmap(old + new_len, old_end);
            apply(ctx, old + new_len, old_end, Op::Unmap)?;
            return Ok(old);
        }
        let grow_end = old.checked_add(new_len).ok_or(Errno::ENOMEM)?;
        if old_end == end && ctx.proc.mem.is_free(old_end, grow_end) {
            apply(ctx, old_end, grow_end, Op::Fresh(rights))?;
            ctx.proc.mem.unmap(old, old_end);
            ctx.proc.mem.mappings.insert(old, (grow_end, prot));
            return Ok(old);
        }
        if flags & libc::MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
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
        let m = &ctx.proc.mem;
        if new_addr < MMAP_MIN
            || end > USER_VA_LIMIT
            || m.fixed
                .iter()
                .chain(std::iter::once(&(m.brk_start, m.heap_end())))
                .any(|&(s, e)| s < end && e > new_addr)
        {
            return Err(Errno::ENOMEM);
        }
        for (s, e, _) in ctx.proc.mem.unmap(new_addr, end) {
            apply(ctx, s, e, Op::Unmap)?;
        }
        new_addr
    } else {
        ctx.proc.mem.find_free(new_len).ok_or(Errno::ENOMEM)?
    };
    let keep = old_len.min(new_len);
    if let Err(e) = ctx.mem.pages().relocate(old, target, keep) {
        return Err(no_memory(ctx, e));
    }
    apply(ctx, target + keep, target + new_len, Op::Fresh(rights))?;
    ctx.proc.mem.unmap(old, old_end);
    apply(ctx, old, old_end, Op::Unmap)?;
    ctx.proc.mem.mappings.insert(target, (target + new_len, prot));
    Ok(target)
}

/// madvise(addr, len, advice): MADV_DONTNEED gives the pages back (they read as zeros
/// afterwards: anonymous private semantics); the rest are hints.
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
        let mut fresh: Vec<(u64, u64, Rights)> = m
            .mappings
            .range(..end)
            .filter(|(_, &(e, _))| e > addr)
            .map(|(&s, &(e, p))| (s.max(addr), e.min(end), m.rights(u64::from(p))))
            .collect();
        let (hs, he) = (addr.max(m.brk_start.next_multiple_of(PAGE_SIZE)), end.min(m.heap_end()));
        if hs < he {
            fresh.push((hs, he, RW));
        }
        for (s, e, r) in fresh {
            apply(ctx, s, e, Op::Fresh(r))?;
        }
    }
    Ok(0)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(MemoryState { brk_start, brk, top, mappings, fixed, exec });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_found_top_down_around_the_image_heap_and_mappings() {
        let mut m = MemoryState::new(0x40_1000, 0x80_0000, vec![(0x40_0000, 0x40_1000), (0x80_1000, 0x90_0000)], false);
        assert_eq!(m.find_free(0x1000), Some(USER_VA_LIMIT - 0x1000));
        m.mappings.insert(USER_VA_LIMIT - 0x1000, (USER_VA_LIMIT, 3));
        m.mappings.insert(USER_VA_LIMIT - 0x10_0000, (USER_VA_LIMIT - 0x2000, 3));
        assert_eq!(m.find_free(0x1000), Some(USER_VA_LIMIT - 0x2000));
        assert_eq!(m.find_free(0x2000), Some(USER_VA_LIMIT - 0x10_2000));
        assert!(m.is_free(0x100_0000, 0x200_0000));
        assert!(!m.is_free(0x40_0000, 0x40_2000), "the image");
        assert!(!m.is_free(0x50_0000, 0x50_1000), "the heap's zone");
        assert!(!m.is_free(0x1000, 0x2000), "below mmap_min_addr");
        let huge = 1u64 << 46;
        assert_eq!(m.find_free(huge).map(|s| s + huge <= USER_VA_LIMIT - 0x10_0000), Some(true));
    }
}
