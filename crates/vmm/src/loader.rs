//! Builds a guest's initial RAM: the guest kernel and its tables, the page tables, the
//! program image and its stack.
//!
//! The program's memory is one linear window of RAM (VA = GPA + offset, the offset a multiple
//! of 2 MiB so that large pages line up):
//!
//! ```text
//!  GPA 0         2 MiB           user_base                                     memory
//!  | kernel area |  (unused gap  | image | arena: brk ->    <- mmap | guard | stack |
//!                 up to the image's offset inside its 2 MiB page)
//! ```

use crate::elf::ElfImage;
use crate::error::{Error, Result};
use crate::guest::kernel::{self, sym};
use crate::guest::layout::*;
use crate::guest::{kdata, LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::kvm::Host;
use crate::memory::user::{Area, Backing, Perm, UserMap};
use crate::memory::{GuestMemory, ReadOnlyMapping};
use crate::paging::{LeafFlags, PageTables};
use crate::stack::{self, ProcessInfo};
use crate::syscalls::mem::MemoryState;
use crate::vm::VcpuAreaLayout;

/// The kernel area at the bottom of RAM: fixed structures, then the page-table pool, rounded
/// up to 2 MiB.  The pool must hold a page table for every 2 MiB of program memory (writable
/// memory is mapped with 4 KiB pages so that the guest kernel can track writes), the
/// directories above them, and the tables of the kernel half.
pub fn kernel_area(memory: u64) -> u64 {
    let tables = memory.div_ceil(LARGE_PAGE_SIZE) + 2 * memory.div_ceil(1 << 30) + 64;
    (GPA_PT_POOL + tables * PAGE_SIZE).next_multiple_of(LARGE_PAGE_SIZE)
}
/// Smallest arena accepted (room for brk and mmap after the image).
pub const MIN_ARENA: u64 = 1 << 20;
/// Most RAM a VM may have (slot 1 sits above it).
pub const MAX_MEMORY: u64 = GPA_VCPU / 2;
/// Most bytes of arguments and environment.
pub const MAX_ARGS: usize = 2 << 20;

/// The program's identity numbers.
pub const PID: u64 = 2;
/// Its parent's pid.
pub const PPID: u64 = 1;
/// uid and gid.
pub const UID: u64 = 1000;

/// What to load and how big the VM is.
#[derive(Debug, Clone)]
pub struct LoadConfig<'a> {
    /// RAM in bytes (multiple of 2 MiB).
    pub memory: u64,
    /// Stack size in bytes.
    pub stack_size: u64,
    /// argv.
    pub args: &'a [Vec<u8>],
    /// envp.
    pub env: &'a [Vec<u8>],
    /// AT_EXECFN.
    pub execfn: &'a [u8],
    /// Size of the request area mapped at REQUEST_VA (0: none).
    pub request_area: u64,
    /// Size of tenant shared memory mapped at SHARED_VA (0: none).
    pub shared_size: u64,
    /// Let the guest kernel answer clocks, ids, randomness and TLS calls itself.
    pub fast_syscalls: bool,
    /// AT_RANDOM bytes.
    pub random: [u8; 16],
    /// The dynamic linker (already parsed to sit right after the program), if the program
    /// has `PT_INTERP`: loaded too, started first, told where the program is (AT_BASE,
    /// AT_PHDR, AT_ENTRY), as Linux's `execve` does.
    pub interpreter: Option<(&'a ElfImage, &'a [u8])>,
    /// Allow executable mappings: needed by programs that map code (ld.so mapping
    /// libraries, JITs); never for others (W^X).
    pub exec_arena: bool,
    /// The program's file, mapped read-only: its [`file_pages`] are mapped from slot 4
    /// instead of being copied into RAM (one-shot runs; `None` copies everything).
    pub file: Option<&'a ReadOnlyMapping>,
}

/// A loaded program, ready for its vCPU.
#[derive(Debug)]
pub struct Loaded {
    /// Guest RAM with everything in place.
    pub ram: GuestMemory,
    /// The program's address space.
    pub map: UserMap,
    /// Entry point.
    pub entry: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// Initial brk / mmap bookkeeping.
    pub mem_state: MemoryState,
    /// How many pages of the image are pages of the file (slot 4) rather than of RAM.
    pub file_pages: u64,
}

/// Layout of the program's window of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// VA − GPA.
    pub offset: u64,
    /// Start of the arena (= initial brk).
    pub arena: u64,
    /// Guard page (end of the arena).
    pub guard: u64,
    /// Stack bottom (guard + 1 page).
    pub stack: u64,
    /// Stack top (end of RAM in VA).
    pub top: u64,
}

/// Places the images `[start, end)` in RAM of `memory` bytes with a stack of `stack_size`.
pub fn window(start: u64, end: u64, memory: u64, stack_size: u64) -> Result<Window> {
    let user_base = kernel_area(memory) + start % LARGE_PAGE_SIZE;
    let offset = start.wrapping_sub(user_base);
    let top = memory.wrapping_add(offset);
    let stack = top.wrapping_sub(stack_size);
    let guard = stack.wrapping_sub(PAGE_SIZE);
    let needed = user_base + (end - start) + MIN_ARENA + PAGE_SIZE + stack_size;
    if needed > memory {
        return Err(Error::DoesNotFit(format!(
            "the image ({} KiB), a {} KiB stack and a minimal heap need {} MiB of memory, the VM has {} MiB",
            (end - start) >> 10,
            stack_size >> 10,
            needed.div_ceil(1 << 20),
            memory >> 20
        )));
    }
    if top > USER_VA_LIMIT {
        return Err(Error::DoesNotFit(format!(
            "the image at {:#x} leaves no room for {} MiB of memory",
            start,
            memory >> 20
        )));
    }
    Ok(Window { offset, arena: end, guard, stack, top })
}

fn perm_of(s: &crate::elf::Segment) -> Perm {
    Perm { read: s.read || s.exec || s.write, write: s.write, exec: s.exec }
}

/// Rights of each image page: the union of the segments that touch it.
fn image_areas(image: &ElfImage) -> Vec<Area> {
    // A map, not a list searched per page: Deno's image has ~23,000 pages (a linear search
    // per page cost ~150 ms of every boot).
    let mut pages: std::collections::BTreeMap<u64, Perm> = std::collections::BTreeMap::new();
    for s in &image.segments {
        let first = s.vaddr / PAGE_SIZE * PAGE_SIZE;
        let mut page = first;
        while page < s.vaddr + s.mem_len {
            pages.entry(page).and_modify(|perm| *perm = perm.union(perm_of(s))).or_insert_with(|| perm_of(s));
            page += PAGE_SIZE;
        }
    }
    let mut areas: Vec<Area> = Vec::new();
    for (page, perm) in pages {
        match areas.last_mut() {
            Some(a) if a.end == page && a.perm == perm => a.end += PAGE_SIZE,
            _ => areas.push(Area { start: page, end: page + PAGE_SIZE, perm, backing: Backing::Ram }),
        }
    }
    areas
}

/// The pages of `image` that can be the file's own pages (slot 4) rather than copies: every
/// segment touching the page is read-only, takes its bytes at the same file offset as the
/// others (its `file_offset - vaddr`), and has file bytes for the whole page (no bss in it),
/// and the page lies inside the file's first `file_len` bytes.  Such a page reads exactly as
/// Linux's `mmap` of the segment shows it (bytes around a segment that does not start or end
/// on a page boundary are the file's, as on Linux).  Virtual page → its offset in the file.
///
/// Why: a runtime's executable is large and read-only (Deno's ~96 MiB, Node's ~100 MiB):
/// copying it into RAM cost a host page fault and a page copy per 4 KiB at every boot, while
/// the host's page cache already holds it.
pub fn file_pages(image: &ElfImage, file_len: u64) -> std::collections::BTreeMap<u64, u64> {
    // None: some segment touching the page rules it out.
    let mut pages: std::collections::BTreeMap<u64, Option<u64>> = std::collections::BTreeMap::new();
    for s in &image.segments {
        let delta = s.file_offset.wrapping_sub(s.vaddr);
        let file_end = s.vaddr + s.file_len;
        let mut page = s.vaddr / PAGE_SIZE * PAGE_SIZE;
        while page < s.vaddr + s.mem_len {
            let offset = page.wrapping_add(delta);
            let whole = s.file_len == s.mem_len || page + PAGE_SIZE <= file_end;
            let inside = offset % PAGE_SIZE == 0 && offset.checked_add(PAGE_SIZE).is_some_and(|e| e <= file_len);
            let this = (!s.write && whole && inside).then_some(offset);
            pages.entry(page).and_modify(|v| *v = v.filter(|&o| this == Some(o))).or_insert(this);
            page += PAGE_SIZE;
        }
    }
    pages.into_iter().filter_map(|(page, offset)| offset.map(|o| (page, o))).collect()
}

fn write_gdt_idt_tss(ram: &mut GuestMemory, pvm: bool) -> Result<()> {
    let oob = |e: crate::memory::OutOfRange| Error::GuestKernel(e.to_string());
    let gdt: [u64; 8] = [
        0,
        0x00cf_9b00_0000_ffff, // 0x08 32-bit kernel code (unused)
        0x00af_9b00_0000_ffff, // 0x10 64-bit kernel code
        0x00cf_9300_0000_ffff, // 0x18 kernel data
        0x00cf_fb00_0000_ffff, // 0x20 32-bit user code (STAR base for sysret)
        0x00cf_f300_0000_ffff, // 0x28 user data (0x2b)
        0x00af_fb00_0000_ffff, // 0x30 64-bit user code (0x33)
        0,
    ];
    for (i, d) in gdt.iter().enumerate() {
        ram.write_u64(GPA_GDT + 8 * i as u64, *d).map_err(oob)?;
    }
    let tss = KBASE + GPA_TSS;
    let tss_lo = 103 | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((tss >> 24) & 0xff) << 56);
    ram.write_u64(GPA_GDT + 8 * 8, tss_lo).map_err(oob)?;
    ram.write_u64(GPA_GDT + 8 * 9, tss >> 32).map_err(oob)?;
    // TSS: RSP0 and IST1 both point at the exception stack; no I/O bitmap.
    let stack = KVCPU + VC_ISTACK_TOP;
    ram.write(GPA_TSS + 4, &stack.to_le_bytes()).map_err(oob)?;
    ram.write(GPA_TSS + 36, &stack.to_le_bytes()).map_err(oob)?;
    ram.write(GPA_TSS + 102, &104u16.to_le_bytes()).map_err(oob)?;
    // IDT: interrupt gates, DPL 0 (so `int n` from user mode is a #GP) except #BP and #OF,
    // which Linux makes DPL 3 so that `int3`/`into` raise them as on any x86 OS.  On hardware KVM
    // every exception switches to IST1, so even a fault in kernel code with a user-chosen rsp
    // lands on a good stack; PVM always switches to RSP0 and does not use IST.
    let ist = if pvm { 0 } else { 1u64 };
    for v in 0..32u64 {
        let h = kernel::exception_stub(v);
        let gate = if v == 3 || v == 4 { 0xee } else { 0x8e };
        let lo = (h & 0xffff) | (SEL_KCODE << 16) | (ist << 32) | (gate << 40) | (((h >> 16) & 0xffff) << 48);
        ram.write_u64(GPA_IDT + 16 * v, lo).map_err(oob)?;
        ram.write_u64(GPA_IDT + 16 * v + 8, h >> 32).map_err(oob)?;
    }
    Ok(())
}

/// Fills the fast-path tables: which system calls the guest kernel answers itself.
fn write_fast_tables(ram: &mut GuestMemory, enabled: bool) -> Result<()> {
    let oob = |e: crate::memory::OutOfRange| Error::GuestKernel(e.to_string());
    for nr in 0..FAST_SYSCALLS {
        ram.write_u64(GPA_FAST_TABLE + 8 * nr, sym::FORWARD).map_err(oob)?;
    }
    if !enabled {
        return Ok(());
    }
    let constants = [
        (libc::SYS_getpid, PID),
        (libc::SYS_gettid, PID),
        (libc::SYS_getppid, PPID),
        (libc::SYS_getuid, UID),
        (libc::SYS_geteuid, UID),
        (libc::SYS_getgid, UID),
        (libc::SYS_getegid, UID),
        (libc::SYS_sched_yield, 0),
    ];
    for (nr, value) in constants {
        ram.write_u64(GPA_FAST_TABLE + 8 * nr as u64, sym::FAST_CONST).map_err(oob)?;
        ram.write_u64(GPA_FAST_VALUE + 8 * nr as u64, value).map_err(oob)?;
    }
    for nr in
        [libc::SYS_clock_gettime, libc::SYS_gettimeofday, libc::SYS_time, libc::SYS_getrandom, libc::SYS_arch_prctl]
    {
        ram.write_u64(GPA_FAST_TABLE + 8 * nr as u64, sym::FAST_C).map_err(oob)?;
    }
    Ok(())
}

/// The program's areas selected by `keep`, adjacent ones merged.
fn ranges(map: &UserMap, keep: impl Fn(&Area) -> bool) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for a in map.areas().iter().filter(|a| keep(a)) {
        match v.last_mut() {
            Some(last) if last.1 == a.start => last.1 = a.end,
            _ => v.push((a.start, a.end)),
        }
    }
    v
}

/// Splits `[start, end)` into runs of pages that are all RAM (`None`) or consecutive pages of
/// the file (`Some(offset of the run's first page)`), after `from_file` ([`file_pages`]).
fn runs(start: u64, end: u64, from_file: &std::collections::BTreeMap<u64, u64>) -> Vec<(u64, u64, Option<u64>)> {
    if from_file.range(start..end).next().is_none() {
        return vec![(start, end, None)];
    }
    let mut out: Vec<(u64, u64, Option<u64>)> = Vec::new();
    let mut page = start;
    while page < end {
        let here = from_file.get(&page).copied();
        match out.last_mut() {
            Some((s, e, prev)) if *e == page && prev.map(|o| o + (page - *s)) == here => *e += PAGE_SIZE,
            _ => out.push((page, page + PAGE_SIZE, here)),
        }
        page += PAGE_SIZE;
    }
    out
}

/// Builds RAM for `image` (whose bytes are `file`).
pub fn load(host: &Host, image: &ElfImage, file: &[u8], cfg: &LoadConfig<'_>) -> Result<Loaded> {
    if cfg.memory % LARGE_PAGE_SIZE != 0 || cfg.memory < 4 * LARGE_PAGE_SIZE || cfg.memory > MAX_MEMORY {
        return Err(Error::Config(format!(
            "memory must be a multiple of 2 MiB between 8 MiB and {} GiB, got {} bytes",
            MAX_MEMORY >> 30,
            cfg.memory
        )));
    }
    let pvm = host.platform.is_pvm();
    let images: Vec<(&ElfImage, &[u8])> = std::iter::once((image, file)).chain(cfg.interpreter).collect();
    let end = images.iter().map(|(i, _)| i.end).max().unwrap_or(image.end);
    let win = window(image.start, end, cfg.memory, cfg.stack_size)?;
    let mut ram = GuestMemory::new(cfg.memory)?;
    let oob = |e: crate::memory::OutOfRange| Error::GuestKernel(e.to_string());

    ram.write(GPA_KCODE, kernel::IMAGE).map_err(oob)?;
    write_gdt_idt_tss(&mut ram, pvm)?;
    write_fast_tables(&mut ram, cfg.fast_syscalls)?;

    // The address space.
    let mut map = UserMap::new(win.offset);
    for (img, _) in &images {
        for area in image_areas(img) {
            map.add(area);
        }
    }
    map.add(Area { start: win.stack, end: win.top, perm: Perm::RW, backing: Backing::Ram });
    if cfg.shared_size > 0 {
        map.add(Area { start: SHARED_VA, end: SHARED_VA + cfg.shared_size, perm: Perm::RW, backing: Backing::Shared });
    }
    if cfg.request_area > 0 {
        map.add(Area {
            start: REQUEST_VA,
            end: REQUEST_VA + cfg.request_area,
            perm: Perm::R,
            backing: Backing::Request,
        });
    }

    // The program's read-only pages that are the file's own (slot 4), if it is mapped.
    let from_file = match cfg.file {
        Some(f) => file_pages(image, f.len() as u64),
        None => std::collections::BTreeMap::new(),
    };

    // Page tables: the user half from the map, then the kernel half.
    {
        let kernel_area = kernel_area(cfg.memory);
        let mut pt = PageTables::new(&mut ram, GPA_PT_POOL, kernel_area, pvm);
        let paging = |e: crate::paging::PagingError| Error::DoesNotFit(format!("page tables: {e}"));
        for a in map.areas() {
            let track = a.perm.write && a.backing == Backing::Ram;
            let flags = LeafFlags { write: a.perm.write, exec: a.perm.exec, user: true, track };
            if a.backing == Backing::Ram {
                // Runs of pages that are all RAM, or all consecutive pages of the file.
                for (start, end, file_offset) in runs(a.start, a.end, &from_file) {
                    let gpa = file_offset.map_or(map.ram_gpa(start), |o| GPA_IMAGE + o);
                    pt.map(GPA_KPML4, start, gpa, end - start, flags).map_err(paging)?;
                }
                continue;
            }
            let base = if a.backing == Backing::Shared { SHARED_VA } else { REQUEST_VA };
            let gpa = UserMap::backing_gpa(a.backing) + (a.start - base);
            pt.map(GPA_KPML4, a.start, gpa, a.end - a.start, flags).map_err(paging)?;
        }
        // The thread-switch trampoline (see crate::machine::sched): user r-x, outside the UserMap.
        let tramp = LeafFlags { write: false, exec: true, user: true, track: false };
        pt.map(GPA_KPML4, TRAMPOLINE_VA, GPA_VCPU + VC_TRAMPOLINE, crate::guest::PAGE_SIZE, tramp).map_err(paging)?;
        let data = LeafFlags { write: true, exec: false, user: false, track: false };
        let code = LeafFlags { write: false, exec: true, user: false, track: false };
        let snapshot = LeafFlags { write: false, exec: false, user: false, track: false };
        pt.map(GPA_KPML4, KBASE, 0, GPA_KCODE, data).map_err(paging)?;
        pt.map(GPA_KPML4, KBASE + GPA_KCODE, GPA_KCODE, KCODE_SIZE, code).map_err(paging)?;
        let rest = GPA_KCODE + KCODE_SIZE;
        pt.map(GPA_KPML4, KBASE + rest, rest, kernel_area - rest, data).map_err(paging)?;
        // All of RAM for the guest kernel's page-table and pool work (memory on demand).
        pt.map(GPA_KPML4, KPHYS, 0, cfg.memory, data).map_err(paging)?;
        let vcpu = VcpuAreaLayout::new(cfg.request_area, cfg.memory);
        pt.map(GPA_KPML4, KVCPU, GPA_VCPU, vcpu.size, data).map_err(paging)?;
        // The restore view (slot 3, present in instances only), as large as it can get.
        let view = crate::restore_view::max_size(cfg.memory);
        pt.map(GPA_KPML4, KSNAP, GPA_SNAPSHOT, view, snapshot).map_err(paging)?;
    }
    if pvm {
        // PVM runs the program on the page table at CR3 | 0x1000: the same lower half,
        // nothing of the kernel.
        for i in 0..256u64 {
            let e = ram.read_u64(GPA_KPML4 + 8 * i).map_err(oob)?;
            ram.write_u64(GPA_UPML4 + 8 * i, e).map_err(oob)?;
        }
    }

    // Image (what is not mapped from the file) and stack.
    for (img, bytes) in &images {
        for s in &img.segments {
            let mut va = s.vaddr;
            while va < s.vaddr + s.file_len {
                let piece_end = (va / PAGE_SIZE * PAGE_SIZE + PAGE_SIZE).min(s.vaddr + s.file_len);
                if !from_file.contains_key(&(va / PAGE_SIZE * PAGE_SIZE)) || !std::ptr::eq(*img, image) {
                    let at = (s.file_offset + (va - s.vaddr)) as usize;
                    ram.write(map.ram_gpa(va), &bytes[at..at + (piece_end - va) as usize]).map_err(oob)?;
                }
                va = piece_end;
            }
        }
    }
    let info = ProcessInfo {
        args: cfg.args,
        env: cfg.env,
        execfn: cfg.execfn,
        phdr: image.phdr_vaddr,
        phnum: image.phnum,
        entry: image.entry,
        base: cfg.interpreter.map_or(0, |(i, _)| i.start),
        hwcap: u64::from(host.cpu.hwcap),
        hwcap2: if host.cpu.fsgsbase { 2 } else { 0 },
        uid: UID,
        gid: UID,
        random: cfg.random,
    };
    let limit = MAX_ARGS.min((cfg.stack_size / 4) as usize);
    let st = stack::build(&info, win.top, limit).map_err(|e| Error::Config(e.to_string()))?;
    ram.write(map.ram_gpa(st.rsp), &st.bytes).map_err(oob)?;

    // KDATA: platform flags and the writable ranges the fast path may store to (the largest
    // ones if there are too many: a missing range only sends a call to the host).
    let mut writable = ranges(&map, |a| a.perm.write);
    writable.sort_by_key(|&(s, e)| std::cmp::Reverse(e - s));
    writable.truncate(KD_MAX_WRANGES as usize);
    // What in-guest resets restore: every written page of RAM under the whole lower half
    // (the program's memory is anywhere there), and what responses may be copied from.
    let reset = [(0, USER_VA_LIMIT)];
    let mut readable = ranges(&map, |a| a.perm.read);
    readable.sort_by_key(|&(s, e)| std::cmp::Reverse(e - s));
    readable.truncate(KD_MAX_RRANGES as usize);
    let put_ranges = |ram: &mut GuestMemory, count: u64, at: u64, list: &[(u64, u64)]| {
        ram.write_u64(kdata(count), list.len() as u64)?;
        for (i, (lo, hi)) in list.iter().enumerate() {
            ram.write_u64(kdata(at) + 16 * i as u64, *lo)?;
            ram.write_u64(kdata(at) + 16 * i as u64 + 8, *hi)?;
        }
        Ok(())
    };
    put_ranges(&mut ram, KD_NRESET, KD_RESET, &reset).map_err(oob)?;
    put_ranges(&mut ram, KD_NRRANGES, KD_RRANGES, &readable).map_err(oob)?;
    ram.write_u64(kdata(KD_RAM_OFFSET), win.offset).map_err(oob)?;
    ram.write_u64(kdata(KD_RAM_SIZE), cfg.memory).map_err(oob)?;
    // The page pool: the RAM between the image and the stack's guard page.
    let pool = (win.arena.next_multiple_of(PAGE_SIZE).wrapping_sub(win.offset), win.guard.wrapping_sub(win.offset));
    let pool_pages = (pool.1 - pool.0) / PAGE_SIZE;
    for base in [KD_POOL_NEXT, KD_SNAP_POOL] {
        for (i, v) in [pool.0, pool.1, 0, 0, pool_pages].into_iter().enumerate() {
            ram.write_u64(kdata(base) + 8 * i as u64, v).map_err(oob)?;
        }
    }
    ram.write_u64(kdata(KD_POOL_START), pool.0).map_err(oob)?;
    ram.write_u64(kdata(KD_PVM), u64::from(pvm)).map_err(oob)?;
    ram.write_u64(kdata(KD_FSGSBASE), u64::from(host.cpu.fsgsbase)).map_err(oob)?;
    ram.write_u64(kdata(KD_NWRANGES), writable.len() as u64).map_err(oob)?;
    for (i, (lo, hi)) in writable.iter().enumerate() {
        ram.write_u64(kdata(KD_WRANGES) + 16 * i as u64, *lo).map_err(oob)?;
        ram.write_u64(kdata(KD_WRANGES) + 16 * i as u64 + 8, *hi).map_err(oob)?;
    }

    // The stack last: /proc/self/maps names it by that.
    let mut fixed: Vec<(u64, u64)> = images.iter().map(|(i, _)| (i.start, i.end)).collect();
    fixed.push((win.stack, win.top));
    let entry = cfg.interpreter.map_or(image.entry, |(i, _)| i.entry);
    Ok(Loaded {
        ram,
        map,
        entry,
        rsp: st.rsp,
        mem_state: MemoryState::new(win.arena, win.guard, fixed, cfg.exec_arena),
        file_pages: from_file.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{ElfKind, Segment};

    fn seg(vaddr: u64, file_offset: u64, file_len: u64, mem_len: u64, write: bool) -> Segment {
        Segment { vaddr, mem_len, file_offset, file_len, read: true, write, exec: !write }
    }

    fn image(segments: Vec<Segment>) -> ElfImage {
        ElfImage {
            kind: ElfKind::Executable,
            bias: 0,
            entry: 0x40_0000,
            segments,
            phdr_vaddr: 0,
            phnum: 0,
            phentsize: 56,
            interpreter: None,
            start: 0x40_0000,
            end: 0x50_0000,
        }
    }

    #[test]
    fn file_pages_are_whole_read_only_pages_of_the_file_and_nothing_else() {
        let img = image(vec![
            // text: 3 pages from offset 0, ending mid-page
            seg(0x40_0000, 0, 0x2800, 0x2800, false),
            // rodata: starts on text's last page, same offset - vaddr: that page too is the file's
            seg(0x40_2800, 0x2800, 0x1800, 0x1800, false),
            // data: writable, starts mid-page after rodata at another file offset; shares its
            // first page with nothing read-only, then bss
            seg(0x40_5100, 0x4100, 0x100, 0x3000, true),
            // a read-only segment with bss in its second page, and a page past the file
            seg(0x41_0000, 0x5000, 0x1800, 0x2000, false),
            seg(0x42_0000, 0x7000, 0x2000, 0x2000, false),
        ]);
        let got = file_pages(&img, 0x8000);
        let want: Vec<(u64, u64)> = vec![
            (0x40_0000, 0),
            (0x40_1000, 0x1000),
            (0x40_2000, 0x2000),
            (0x40_3000, 0x3000),
            (0x41_0000, 0x5000),
            (0x42_0000, 0x7000),
        ];
        assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn a_page_two_segments_map_from_different_offsets_is_copied() {
        let img = image(vec![seg(0x40_0000, 0, 0x800, 0x800, false), seg(0x40_0800, 0x1800, 0x800, 0x800, false)]);
        assert!(file_pages(&img, 0x4000).is_empty());
        let shared_with_data =
            image(vec![seg(0x40_0000, 0, 0x800, 0x800, false), seg(0x40_0800, 0x800, 0x800, 0x800, true)]);
        assert!(file_pages(&shared_with_data, 0x4000).is_empty(), "a page with writable bytes is RAM");
    }

    #[test]
    fn runs_split_ram_from_consecutive_file_pages() {
        let from_file: std::collections::BTreeMap<u64, u64> =
            [(0x1000, 0x0), (0x2000, 0x1000), (0x3000, 0x5000)].into_iter().collect();
        assert_eq!(
            runs(0x0, 0x5000, &from_file),
            vec![
                (0x0, 0x1000, None),
                (0x1000, 0x3000, Some(0)),
                (0x3000, 0x4000, Some(0x5000)),
                (0x4000, 0x5000, None)
            ]
        );
        assert_eq!(runs(0x8000, 0x9000, &from_file), vec![(0x8000, 0x9000, None)]);
    }
}
