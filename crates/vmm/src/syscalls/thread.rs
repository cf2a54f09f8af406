//! Creating threads: `clone` and `clone3` for threads that share everything (what
//! `pthread_create`, Rust's `std::thread` and Go's runtime ask for).  New processes (`fork`,
//! `vfork`, `clone` without `CLONE_VM | CLONE_THREAD`) do not exist in a VM: ENOSYS.
//!
//! The handler adds the thread to the table and asks the scheduler (`crate::machine::sched`) to give
//! it the caller's CPU state; the caller keeps running and gets the new tid.

use super::{Ctx, Errno, Sched, SysResult};

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x1_0000;
const CLONE_SYSVSEM: u64 = 0x4_0000;
const CLONE_SETTLS: u64 = 0x8_0000;
const CLONE_PARENT_SETTID: u64 = 0x10_0000;
const CLONE_CHILD_CLEARTID: u64 = 0x20_0000;
const CLONE_DETACHED: u64 = 0x40_0000;
const CLONE_UNTRACED: u64 = 0x80_0000;
const CLONE_CHILD_SETTID: u64 = 0x100_0000;

/// What a thread must share: memory, files, cwd, signal handlers, and be in the same group.
const THREAD: u64 = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD;
/// Flags accepted besides [`THREAD`].
const OPTIONAL: u64 = CLONE_SYSVSEM
    | CLONE_SETTLS
    | CLONE_PARENT_SETTID
    | CLONE_CHILD_CLEARTID
    | CLONE_DETACHED
    | CLONE_UNTRACED
    | CLONE_CHILD_SETTID;

/// A validated thread-creation request.
struct Request {
    flags: u64,
    stack: u64,
    parent_tid: u64,
    child_tid: u64,
    tls: u64,
}

fn create(ctx: &mut Ctx<'_>, r: Request) -> SysResult {
    let flags = r.flags;
    if flags & (CLONE_VM | CLONE_THREAD) != CLONE_VM | CLONE_THREAD || flags & CLONE_VFORK != 0 {
        // A new process (fork, vfork, posix_spawn): there is only this one.
        return Err(Errno::ENOSYS);
    }
    if flags & THREAD != THREAD || flags & !(THREAD | OPTIONAL) != 0 {
        return Err(Errno::EINVAL);
    }
    let tls = (flags & CLONE_SETTLS != 0).then_some(r.tls);
    if tls.is_some_and(|t| t >= crate::guest::layout::USER_VA_LIMIT) {
        return Err(Errno::EPERM);
    }
    for (flag, addr) in [(CLONE_PARENT_SETTID, r.parent_tid), (CLONE_CHILD_SETTID, r.child_tid)] {
        if flags & flag != 0 && ctx.mem.check(addr, 4, true).is_err() {
            return Err(Errno::EFAULT);
        }
    }
    let (index, tid) = ctx.proc.threads.spawn()?;
    // As Linux: the new thread has its creator's signal mask, nothing pending and no
    // alternate stack.
    let mask = ctx.proc.threads.current().sig_mask;
    ctx.proc.threads.get_mut(index).sig_mask = mask;
    if flags & CLONE_PARENT_SETTID != 0 {
        ctx.mem.write(r.parent_tid, &(tid as u32).to_le_bytes())?;
    }
    if flags & CLONE_CHILD_SETTID != 0 {
        ctx.mem.write(r.child_tid, &(tid as u32).to_le_bytes())?;
    }
    if flags & CLONE_CHILD_CLEARTID != 0 {
        ctx.proc.threads.get_mut(index).clear_child_tid = r.child_tid;
    }
    ctx.sched = Some(Sched::Spawn { index, stack: r.stack, tls });
    Ok(tid)
}

/// clone(flags, stack, parent_tid, child_tid, tls)
pub fn sys_clone(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    // The low byte is the exit signal, meaningless for threads.
    let flags = a[0] & !0xff;
    create(ctx, Request { flags, stack: a[1], parent_tid: a[2], child_tid: a[3], tls: a[4] })
}

/// clone3(args, size)
pub fn sys_clone3(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const VER0: u64 = 64;
    let size = a[1];
    if !(VER0..=4096).contains(&size) {
        return Err(Errno::EINVAL);
    }
    let b = ctx.mem.read_vec(a[0], size as usize)?;
    let w =
        |i: usize| if (i + 1) * 8 <= b.len() { u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()) } else { 0 };
    // Fields past the ones this kernel knows must be zero.
    if b.len() > 88 && b[88..].iter().any(|&x| x != 0) {
        return Err(Errno(libc::E2BIG));
    }
    let (flags, exit_signal, stack, stack_size, set_tid_size) = (w(0), w(4), w(5), w(6), w(9));
    if exit_signal != 0 && flags & CLONE_THREAD != 0 {
        return Err(Errno::EINVAL);
    }
    if set_tid_size != 0 || (stack == 0) != (stack_size == 0) {
        return Err(Errno::EINVAL);
    }
    let stack = if stack == 0 { 0 } else { stack.checked_add(stack_size).ok_or(Errno::EINVAL)? };
    create(ctx, Request { flags, stack, parent_tid: w(3), child_tid: w(2), tls: w(7) })
}
