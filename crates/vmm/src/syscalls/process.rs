//! The process itself: identity, exit, limits, scheduling, thread registrations, randomness.
//!
//! A tenantvm program is one process (threads: [`super::thread`]).  Its ids are fixed (pid 2,
//! its parent "init" pid 1, uid/gid 1000) so that a reset VM and a fresh VM look the same.

use crate::host::fill_random;
use crate::linux::fdtable::MAX_FDS;
use crate::linux::threads::RunState;

use super::signal::{self, Target};
use super::{Ctx, Errno, Sched, Stop, SysResult};

/// Who the program is and what it may use.
#[derive(Debug, Clone)]
pub struct Identity {
    /// pid and tid.
    pub pid: u64,
    /// Parent pid.
    pub ppid: u64,
    /// uid = euid.
    pub uid: u64,
    /// gid = egid.
    pub gid: u64,
    /// What `readlink("/proc/self/exe")` returns.
    pub exe: Vec<u8>,
    /// RLIMIT_STACK.
    pub stack_limit: u64,
    /// RLIMIT_AS / RLIMIT_DATA: the guest's memory.
    pub memory_limit: u64,
    /// prctl(PR_SET_NAME).
    pub name: [u8; 16],
}

/// exit(status): ends the calling thread; the last thread's exit ends the process.  A thread
/// with a clear-child-tid address gets 0 written there and one futex waiter woken (how
/// `pthread_join` learns of the exit).
pub fn sys_exit(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if !ctx.proc.threads.multi() {
        return sys_exit_group(ctx, a);
    }
    let clear = ctx.proc.threads.current().clear_child_tid;
    if clear != 0 && ctx.mem.write(clear, &0u32.to_le_bytes()).is_ok() {
        ctx.proc.threads.futex_wake(clear, u32::MAX, 1);
    }
    ctx.proc.threads.current_mut().state = RunState::Exited;
    ctx.sched = Some(Sched::Switch);
    Ok(0)
}

/// exit_group(status): ends every thread.
pub fn sys_exit_group(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    ctx.stop = Some(Stop::Exited((a[0] & 0xff) as i32));
    Ok(0)
}

/// getpid()
pub fn sys_getpid(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    Ok(ctx.proc.identity.pid)
}

/// gettid(): the first thread's is the pid.
pub fn sys_gettid(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    Ok(ctx.proc.threads.current().tid)
}

/// getppid()
pub fn sys_getppid(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    Ok(ctx.proc.identity.ppid)
}

/// getuid() / geteuid()
pub fn sys_getuid(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    Ok(ctx.proc.identity.uid)
}

/// getgid() / getegid()
pub fn sys_getgid(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    Ok(ctx.proc.identity.gid)
}

/// uname(buf)
pub fn sys_uname(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let fields: [&[u8]; 6] = [b"Linux", b"tenantvm", b"6.1.0-tenantvm", b"#1 SMP tenantvm", b"x86_64", b"(none)"];
    let mut buf = [0u8; 6 * 65];
    for (i, f) in fields.iter().enumerate() {
        buf[i * 65..i * 65 + f.len()].copy_from_slice(f);
    }
    ctx.mem.write(a[0], &buf)?;
    Ok(0)
}

/// arch_prctl(code, addr).  The guest kernel answers ARCH_SET/GET_FS/GS itself (it owns the
/// segment bases); only its declined cases (a bad pointer) and other codes get here.
pub fn sys_arch_prctl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const ARCH_GET_FS: u64 = 0x1003;
    const ARCH_GET_GS: u64 = 0x1004;
    const ARCH_GET_CPUID: u64 = 0x1011;
    match a[0] {
        ARCH_GET_FS | ARCH_GET_GS => {
            ctx.mem.write_u64(a[1], 0)?;
            Err(Errno::EFAULT)
        }
        ARCH_GET_CPUID => Ok(1),
        _ => Err(Errno::EINVAL),
    }
}

/// set_tid_address(tidptr): returns the caller's tid.
pub fn sys_set_tid_address(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let me = ctx.proc.threads.current_mut();
    me.clear_child_tid = a[0];
    Ok(me.tid)
}

/// set_robust_list(head, len)
pub fn sys_set_robust_list(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[1] != 24 {
        return Err(Errno::EINVAL);
    }
    ctx.proc.threads.current_mut().robust_list = a[0];
    Ok(0)
}

/// rseq(area, len, flags, sig): registration succeeds and the area reports CPU 0, which stays
/// true (one vCPU); restartable sequences are never interrupted by migration.
pub fn sys_rseq(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const RSEQ_FLAG_UNREGISTER: u64 = 1;
    let (area, len, flags, sig) = (a[0], a[1] as u32, a[2], a[3] as u32);
    if flags & RSEQ_FLAG_UNREGISTER != 0 {
        let registered = ctx.proc.threads.current().rseq;
        return match registered {
            Some((r, l, s)) if r == area && l == len && s == sig => {
                ctx.proc.threads.current_mut().rseq = None;
                Ok(0)
            }
            Some(_) => Err(Errno::EPERM),
            None => Err(Errno::EINVAL),
        };
    }
    if flags != 0 || len < 32 || area % 32 != 0 {
        return Err(Errno::EINVAL);
    }
    if let Some((r, l, s)) = ctx.proc.threads.current().rseq {
        return Err(if r == area && l == len && s == sig { Errno(libc::EBUSY) } else { Errno::EINVAL });
    }
    // cpu_id_start, cpu_id = 0; rseq_cs untouched; node_id, mm_cid = 0.
    ctx.mem.write(area, &[0u8; 8])?;
    ctx.mem.write(area + 20, &[0u8; 8])?;
    ctx.proc.threads.current_mut().rseq = Some((area, len, sig));
    Ok(0)
}

fn limit_of(ctx: &Ctx<'_>, resource: u64) -> Result<(u64, u64), Errno> {
    const INFINITY: u64 = u64::MAX;
    let id = &ctx.proc.identity;
    Ok(match resource as u32 {
        libc::RLIMIT_STACK => (id.stack_limit, id.stack_limit),
        libc::RLIMIT_AS | libc::RLIMIT_DATA => (id.memory_limit, id.memory_limit),
        libc::RLIMIT_NOFILE => (MAX_FDS as u64, MAX_FDS as u64),
        libc::RLIMIT_NPROC => (1, 1),
        libc::RLIMIT_CORE => (0, 0),
        r if r < 16 => (INFINITY, INFINITY),
        _ => return Err(Errno::EINVAL),
    })
}

/// prlimit64(pid, resource, new, old): limits are fixed by the VM; setting is accepted and
/// ignored (the VM enforces its own).
pub fn sys_prlimit64(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] != 0 && a[0] != ctx.proc.identity.pid {
        return Err(Errno::ESRCH);
    }
    let (cur, max) = limit_of(ctx, a[1])?;
    if a[2] != 0 {
        ctx.mem.read_vec(a[2], 16)?;
    }
    if a[3] != 0 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&cur.to_le_bytes());
        b[8..].copy_from_slice(&max.to_le_bytes());
        ctx.mem.write(a[3], &b)?;
    }
    Ok(0)
}

/// getrlimit(resource, rlim)
pub fn sys_getrlimit(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    sys_prlimit64(ctx, [0, a[0], 0, a[1], 0, 0])
}

/// sched_getaffinity(pid, len, mask): one CPU.  `pid` may be any of the program's threads
/// (glibc's pthread_getattr_np asks for the calling thread's).
pub fn sys_sched_getaffinity(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] != 0 && a[0] != ctx.proc.identity.pid && !ctx.proc.threads.contains(a[0]) {
        return Err(Errno::ESRCH);
    }
    if a[1] < 8 || a[1] % 8 != 0 {
        return Err(Errno::EINVAL);
    }
    ctx.mem.write_u64(a[2], 1)?;
    Ok(8)
}

/// sched_yield(): lets another runnable thread run, if there is one.
pub fn sys_sched_yield(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    if ctx.proc.threads.others_runnable() {
        ctx.proc.threads.current_mut().state = RunState::Runnable;
        ctx.sched = Some(Sched::Switch);
    }
    Ok(0)
}

/// getrandom(buf, len, flags): from the host's kernel RNG.
pub fn sys_getrandom(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const GRND_ALL: u64 = 0x7;
    if a[2] & !GRND_ALL != 0 {
        return Err(Errno::EINVAL);
    }
    let len = a[1].min(32 << 20) as usize;
    ctx.mem.check(a[0], len as u64, true)?;
    let mut done = 0;
    let mut chunk = [0u8; 4096];
    while done < len {
        let n = (len - done).min(chunk.len());
        fill_random(&mut chunk[..n]);
        ctx.mem.write(a[0] + done as u64, &chunk[..n])?;
        done += n;
    }
    Ok(len as u64)
}

/// kill(pid, sig): the program's own pid (or 0, -1, -pid: its group, everyone it may
/// signal, which is only itself); ESRCH for any other pid.
pub fn sys_kill(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let pid = a[0] as i64;
    let me = ctx.proc.identity.pid as i64;
    if pid == 0 || pid == -1 || pid == me || pid == -me {
        return signal::send(ctx, Target::Process, a[1]);
    }
    Err(Errno::ESRCH)
}

/// tgkill(tgid, tid, sig): to one of the program's own threads.
pub fn sys_tgkill(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if (a[0] as i64) <= 0 || (a[1] as i64) <= 0 {
        return Err(Errno::EINVAL);
    }
    if a[0] != ctx.proc.identity.pid {
        return Err(Errno::ESRCH);
    }
    signal::send(ctx, Target::Thread(a[1]), a[2])
}

/// tkill(tid, sig): to one of the program's own threads.
pub fn sys_tkill(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if (a[0] as i64) <= 0 {
        return Err(Errno::EINVAL);
    }
    signal::send(ctx, Target::Thread(a[0]), a[1])
}

/// prctl(option, ...): the harmless subset.
pub fn sys_prctl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    match a[0] as i32 {
        libc::PR_SET_NAME => {
            let name = ctx.mem.read_cstr(a[1], 4096)?;
            let mut buf = [0u8; 16];
            let n = name.len().min(15);
            buf[..n].copy_from_slice(&name[..n]);
            ctx.proc.identity.name = buf;
            Ok(0)
        }
        libc::PR_GET_NAME => {
            let name = ctx.proc.identity.name;
            ctx.mem.write(a[1], &name)?;
            Ok(0)
        }
        libc::PR_GET_DUMPABLE => Ok(0),
        libc::PR_SET_DUMPABLE | libc::PR_SET_PDEATHSIG | libc::PR_SET_NO_NEW_PRIVS | libc::PR_SET_THP_DISABLE => Ok(0),
        libc::PR_GET_NO_NEW_PRIVS => Ok(1),
        0x5356_4d41 => Ok(0), // PR_SET_VMA (naming anonymous memory)
        _ => Err(Errno::EINVAL),
    }
}

/// getrusage(who, usage): no accounting is kept; all zeros.
pub fn sys_getrusage(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let who = a[0] as i32;
    if who != libc::RUSAGE_SELF && who != libc::RUSAGE_CHILDREN && who != libc::RUSAGE_THREAD {
        return Err(Errno::EINVAL);
    }
    ctx.mem.write(a[1], &[0u8; 144])?;
    Ok(0)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(Identity { pid, ppid, uid, gid, exe, stack_limit, memory_limit, name });
