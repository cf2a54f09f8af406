//! Linux system-call emulation: the table and the state it works on.
//!
//! [`dispatch`] is the one place that maps a system-call number to its handler; every handler
//! is a `sys_<name>` function in the family module that owns its state:
//!
//! | module      | owns                                            |
//! |-------------|-------------------------------------------------|
//! | [`epoll`]   | epoll instances: interest lists, waiting for readiness |
//! | [`fs`]      | descriptor I/O, stdin/stdout/stderr, pipes, eventfds (state: [`crate::linux`]) |
//! | [`path`]    | calls that take a path, the working directory, changes to `/tmp` |
//! | [`mem`]     | brk, the mmap map, zero-on-reuse bookkeeping    |
//! | [`process`] | identity, exit, limits, scheduling, randomness  |
//! | [`timerfd`] | timers read as descriptors                      |
//! | [`time`]    | clocks and sleeping                             |
//! | [`wait`]    | blocking until another thread acts, or deadlock |
//! | [`signal`]  | signal dispositions, masks, pending signals, sending |
//! | [`socket`]  | `socketpair` (over pipe buffers); no network     |
//! | [`thread`]  | creating threads (`clone`, `clone3`)            |
//! | [`futex`]   | futexes: waits and wakes between threads        |
//! | [`api`]     | the tenantvm request API                        |
//! | [`kv`]      | the request API's key-value calls (store: [`crate::kv`]) |
//!
//! Handlers return `Result<u64, Errno>`; the guest sees `-errno` on error, as from Linux.
//! Unknown numbers return `-ENOSYS` and are counted per number.  A handler never trusts a
//! guest pointer: all guest memory goes through [`UserMemory`], which fails with EFAULT.
//!
//! The guest kernel answers a few calls itself without exiting (see guest/kernel.c); they
//! reach this table only in the cases it declines (bad pointers, unusual clocks, ...).

pub mod api;
pub mod epoll;
pub mod fs;
pub mod futex;
pub mod kv;
pub mod mem;
pub mod path;
pub mod process;
pub mod signal;
pub mod socket;
pub mod thread;
pub mod time;
pub mod timerfd;
pub mod wait;

use std::collections::BTreeMap;
use std::time::Instant;

use crate::memory::user::{Backing, UserMap};
use crate::memory::{GuestMemory, Mapping, ReadOnlyMapping};
use crate::pages;

pub use fs::{Input, Output};

pub use crate::linux::errno::Errno;

/// What a handler returns.
pub type SysResult = Result<u64, Errno>;

/// The program's memory, seen through its address space: every access is resolved against
/// the [`UserMap`] (request area, shared memory) or the page tables (RAM, see
/// [`crate::pages`]) and copied, so a bad pointer is an EFAULT, never a host fault.
pub struct UserMemory<'a> {
    /// The address space.
    pub map: &'a UserMap,
    /// Guest RAM.
    pub ram: &'a mut GuestMemory,
    /// The vCPU area (for the request area).
    pub vcpu_area: &'a Mapping,
    /// Tenant shared memory.
    pub shared: Option<&'a Mapping>,
    /// The program's file, whose pages some of its image's are (slot 4, one-shot runs).
    pub file: Option<&'a ReadOnlyMapping>,
    /// Page-table changes must be logged for a reset (an instance).
    pub keep_log: bool,
    /// Set when memory the program may use could not be given a page (the memory cap).
    pub exhausted: bool,
}

impl UserMemory<'_> {
    fn region(&self, backing: Backing) -> Option<(&Mapping, u64)> {
        use crate::guest::layout::VC_REQUEST;
        match backing {
            Backing::Ram => None,
            Backing::Request => Some((self.vcpu_area, VC_REQUEST)),
            Backing::Shared => self.shared.map(|m| (m, 0)),
        }
    }

    /// The request area or shared memory holding all of `[va, va + len)`, if that is where
    /// it is.
    fn special(&self, va: u64, len: u64, write: bool) -> Option<Result<(&Mapping, u64), Errno>> {
        let r = self.map.resolve(va, len, write)?;
        let (m, base) = self.region(r.backing)?;
        Some(Ok((m, base + r.offset)))
    }

    /// Page-sized pieces of `[va, va + len)`: (address, offset in the buffer, length).
    fn pieces(va: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut done = 0usize;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = va.checked_add(done as u64)?;
            let n = (len - done).min((4096 - at % 4096) as usize);
            let piece = (at, done, n);
            done += n;
            Some(piece)
        })
    }

    /// EFAULT unless the program could read (or write) all of `[va, va + len)`.
    pub fn check(&self, va: u64, len: u64, write: bool) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        va.checked_add(len).ok_or(Errno::EFAULT)?;
        if let Some(r) = self.special(va, len, write) {
            return r.map(|_| ());
        }
        for (at, _, _) in Self::pieces(va, len.min(1 << 40) as usize) {
            match pages::lookup(self.ram, at) {
                pages::Lookup::Frame { write: w, .. } | pages::Lookup::Lazy { write: w } if w || !write => {}
                pages::Lookup::File { .. } if !write => {}
                _ => return Err(Errno::EFAULT),
            }
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes from user address `va`.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if buf.is_empty() {
            return Ok(());
        }
        va.checked_add(buf.len() as u64).ok_or(Errno::EFAULT)?;
        if let Some(r) = self.special(va, buf.len() as u64, false) {
            let (m, off) = r?;
            return m.read(off, buf).ok_or(Errno::EFAULT);
        }
        for (at, from, n) in Self::pieces(va, buf.len()) {
            match pages::lookup(self.ram, at) {
                pages::Lookup::Frame { gpa, .. } => {
                    self.ram.read(gpa, &mut buf[from..from + n]).map_err(|_| Errno::EFAULT)?;
                }
                pages::Lookup::File { offset } => {
                    let file = self.file.ok_or(Errno::EFAULT)?;
                    file.read(offset, &mut buf[from..from + n]).ok_or(Errno::EFAULT)?;
                }
                pages::Lookup::Lazy { .. } => buf[from..from + n].fill(0),
                pages::Lookup::Nothing => return Err(Errno::EFAULT),
            }
        }
        Ok(())
    }

    /// Reads `len` bytes from `va` into a new vector (callers bound `len`).
    pub fn read_vec(&self, va: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut v = vec![0; len];
        self.read(va, &mut v)?;
        Ok(v)
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, va: u64) -> Result<u64, Errno> {
        let mut b = [0; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The program's page tables, for changes.
    pub fn pages(&mut self) -> pages::Pages<'_> {
        pages::Pages::new(self.ram, self.vcpu_area, self.keep_log)
    }

    /// Copies `data` to user address `va` (lazy memory gets its pages now).
    pub fn write(&mut self, va: u64, data: &[u8]) -> Result<(), Errno> {
        if data.is_empty() {
            return Ok(());
        }
        va.checked_add(data.len() as u64).ok_or(Errno::EFAULT)?;
        if let Some(r) = self.special(va, data.len() as u64, true) {
            let (m, off) = r?;
            return m.write(off, data).ok_or(Errno::EFAULT);
        }
        // All or nothing: check first, so that a bad tail does not leave a written head.
        self.check(va, data.len() as u64, true)?;
        for (at, from, n) in Self::pieces(va, data.len()) {
            let gpa = match self.pages().translate(at, true) {
                Ok(Some(gpa)) => gpa,
                Ok(None) => return Err(Errno::EFAULT),
                Err(_) => {
                    self.exhausted = true;
                    return Err(Errno::EFAULT);
                }
            };
            self.ram.write(gpa, &data[from..from + n]).map_err(|_| Errno::EFAULT)?;
        }
        Ok(())
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&mut self, va: u64, v: u64) -> Result<(), Errno> {
        self.write(va, &v.to_le_bytes())
    }

    /// Reads a NUL-terminated string of at most `max` bytes (without the NUL).
    pub fn read_cstr(&self, va: u64, max: usize) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        let mut at = va;
        loop {
            // Read up to the end of the current page so a string that ends just before an
            // unmapped page still works.
            let room = (4096 - at % 4096) as usize;
            let n = room.min(chunk.len());
            self.read(at, &mut chunk[..n])?;
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
            if out.len() > max {
                return Err(Errno::ENAMETOOLONG);
            }
            at += n as u64;
        }
    }
}

/// Per-number counts of system calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyscallCounts {
    /// Calls handled (answered by the host or the guest kernel), by number.
    pub handled: BTreeMap<u64, u64>,
    /// Calls that got -ENOSYS because tenantvm does not emulate them, by number.
    pub unsupported: BTreeMap<u64, u64>,
}

impl SyscallCounts {
    /// Adds another set of counts.
    pub fn merge(&mut self, other: &SyscallCounts) {
        for (k, v) in &other.handled {
            *self.handled.entry(*k).or_default() += v;
        }
        for (k, v) in &other.unsupported {
            *self.unsupported.entry(*k).or_default() += v;
        }
    }

    /// Total number of calls.
    pub fn total(&self) -> u64 {
        self.handled.values().chain(self.unsupported.values()).sum()
    }
}

/// Why the program stopped running (set by a handler; the run loop acts on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// exit/exit_group.
    Exited(i32),
    /// Killed by a signal it sent itself (abort(), raise()).
    Signaled(i32),
    /// It asked to sleep past its deadline.
    Timeout,
    /// `wait_for_request`: the program is ready for the next request.
    WaitForRequest,
    /// `respond`: the response, read out of guest memory.
    Responded(api::Response),
    /// `respond_and_wait`: the response, and the program is ready for the next request.
    RespondedAndWaiting(api::Response),
    /// A tenantvm API call was misused (bad pointer, bad sizes).
    ApiFault(crate::error::GuestFault),
    /// A call would block forever (futex wait with no other thread).
    Deadlock(&'static str),
    /// A batch of requests was served entirely in the guest (see `Instance::call_batch`).
    BatchDone,
}

/// What a handler asks of the scheduler (`crate::machine::sched` acts on it after the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sched {
    /// The running thread waits, exited or yields (its state says which): switch threads.
    Switch,
    /// Nothing the call waits for is ready: make it again after another thread has done
    /// something, or return 0 at the instant if set (`epoll_wait`, `poll`, reads that would
    /// block).
    Retry {
        /// When the call gives up and returns 0.
        until: Option<std::time::Instant>,
        /// When it is made again even if no other thread ran (a timer expires).
        recheck: Option<std::time::Instant>,
    },
    /// `rt_sigreturn`: the registers come back from the signal frame on the stack.
    SigReturn,
    /// Make the same call again (the one thread slept until a timer it waits on expired).
    Again,
    /// `clone` made thread `index`: its CPU state is the caller's, with rax = 0, `stack` as
    /// rsp (if not 0) and `tls` as FS base (if set).
    Spawn {
        /// Index in the thread table.
        index: usize,
        /// The new stack pointer, or 0 to keep the caller's.
        stack: u64,
        /// The new FS base (CLONE_SETTLS).
        tls: Option<u64>,
    },
}

/// The emulated process: everything about the program the host keeps between calls.
/// Cloned into a snapshot and back on reset.
#[derive(Debug, Clone)]
pub struct Process {
    /// brk and mmap.
    pub mem: mem::MemoryState,
    /// Open files, the file-system view, /tmp and the working directory.
    pub files: crate::linux::Files,
    /// Signal dispositions and masks.
    pub signals: signal::SignalState,
    /// pid, uid, executable path, limits.
    pub identity: process::Identity,
    /// The threads, their registrations and saved CPU states.
    pub threads: crate::linux::threads::Threads,
}

/// Everything a handler may use.
pub struct Ctx<'a> {
    /// The program's memory.
    pub mem: UserMemory<'a>,
    /// The emulated process.
    pub proc: &'a mut Process,
    /// stdin/stdout/stderr.
    pub io: &'a mut fs::Io,
    /// When the current run must end.
    pub deadline: Option<Instant>,
    /// Whether the tenantvm request API is available (tenant mode).
    pub api: Option<&'a api::ApiLimits>,
    /// The tenant's key-value store, if it has one (requests only, not boot).
    pub kv: Option<&'a crate::kv::KvAccess>,
    /// KV calls made so far in this request (checked against the limit).
    pub kv_ops: u32,
    /// Set by a handler to stop the run.
    pub stop: Option<Stop>,
    /// Set by a handler that needs the scheduler (threads).
    pub sched: Option<Sched>,
    /// Set when a memory request failed for lack of guest memory.
    pub memory_exhausted: bool,
    /// Time a handler waited on the program's behalf (a sleep, input): charged to its time
    /// limit like running time.
    pub blocked: std::time::Duration,
    /// The calling thread's stack pointer (whether it runs on its alternate signal stack).
    pub user_rsp: u64,
}

/// Runs system call `nr` with arguments `a` and returns the value for rax.
#[allow(non_upper_case_globals)]
pub fn dispatch(ctx: &mut Ctx<'_>, counts: &mut SyscallCounts, nr: u64, a: [u64; 6]) -> u64 {
    use libc::*;
    let Ok(n) = i64::try_from(nr) else {
        *counts.unsupported.entry(nr).or_default() += 1;
        return encode(Err(Errno::ENOSYS));
    };
    let result = match n {
        SYS_read => fs::sys_read(ctx, a),
        SYS_write => fs::sys_write(ctx, a),
        SYS_readv => fs::sys_readv(ctx, a),
        SYS_writev => fs::sys_writev(ctx, a),
        SYS_pread64 => fs::sys_pread64(ctx, a),
        SYS_pwrite64 => fs::sys_pwrite64(ctx, a),
        SYS_preadv | SYS_preadv2 => fs::sys_preadv(ctx, a),
        SYS_pwritev | SYS_pwritev2 => fs::sys_pwritev(ctx, a),
        SYS_lseek => fs::sys_lseek(ctx, a),
        SYS_close => fs::sys_close(ctx, a),
        SYS_close_range => fs::sys_close_range(ctx, a),
        SYS_dup => fs::sys_dup(ctx, a),
        SYS_dup2 => fs::sys_dup2(ctx, a),
        SYS_dup3 => fs::sys_dup3(ctx, a),
        SYS_fcntl => fs::sys_fcntl(ctx, a),
        SYS_ioctl => fs::sys_ioctl(ctx, a),
        SYS_fstat => fs::sys_fstat(ctx, a),
        SYS_poll => fs::sys_poll(ctx, a),
        SYS_ppoll => fs::sys_ppoll(ctx, a),
        SYS_pipe => fs::sys_pipe(ctx, a),
        SYS_pipe2 => fs::sys_pipe2(ctx, a),
        SYS_eventfd => fs::sys_eventfd(ctx, a),
        SYS_eventfd2 => fs::sys_eventfd2(ctx, a),
        SYS_ftruncate => fs::sys_ftruncate(ctx, a),
        SYS_fsync | SYS_fdatasync | SYS_syncfs => fs::sys_fsync(ctx, a),
        SYS_open => path::sys_open(ctx, a),
        SYS_creat => path::sys_creat(ctx, a),
        SYS_openat => path::sys_openat(ctx, a),
        SYS_openat2 => path::sys_openat2(ctx, a),
        SYS_stat => path::sys_stat(ctx, a),
        SYS_lstat => path::sys_lstat(ctx, a),
        SYS_newfstatat => path::sys_newfstatat(ctx, a),
        SYS_statx => path::sys_statx(ctx, a),
        SYS_access => path::sys_access(ctx, a),
        SYS_faccessat => path::sys_faccessat(ctx, a),
        SYS_faccessat2 => path::sys_faccessat2(ctx, a),
        SYS_readlink => path::sys_readlink(ctx, a),
        SYS_readlinkat => path::sys_readlinkat(ctx, a),
        SYS_getdents64 => path::sys_getdents64(ctx, a),
        SYS_getcwd => path::sys_getcwd(ctx, a),
        SYS_chdir => path::sys_chdir(ctx, a),
        SYS_fchdir => path::sys_fchdir(ctx, a),
        SYS_mkdir => path::sys_mkdir(ctx, a),
        SYS_mkdirat => path::sys_mkdirat(ctx, a),
        SYS_unlink => path::sys_unlink(ctx, a),
        SYS_unlinkat => path::sys_unlinkat(ctx, a),
        SYS_rmdir => path::sys_rmdir(ctx, a),
        SYS_rename => path::sys_rename(ctx, a),
        SYS_renameat => path::sys_renameat(ctx, a),
        SYS_renameat2 => path::sys_renameat2(ctx, a),
        SYS_brk => mem::sys_brk(ctx, a),
        SYS_mmap => mem::sys_mmap(ctx, a),
        SYS_munmap => mem::sys_munmap(ctx, a),
        SYS_mprotect => mem::sys_mprotect(ctx, a),
        SYS_mremap => mem::sys_mremap(ctx, a),
        SYS_madvise => mem::sys_madvise(ctx, a),
        SYS_exit => process::sys_exit(ctx, a),
        SYS_exit_group => process::sys_exit_group(ctx, a),
        SYS_getpid => process::sys_getpid(ctx, a),
        SYS_gettid => process::sys_gettid(ctx, a),
        SYS_getppid => process::sys_getppid(ctx, a),
        SYS_getuid | SYS_geteuid => process::sys_getuid(ctx, a),
        SYS_getgid | SYS_getegid => process::sys_getgid(ctx, a),
        SYS_uname => process::sys_uname(ctx, a),
        SYS_arch_prctl => process::sys_arch_prctl(ctx, a),
        SYS_set_tid_address => process::sys_set_tid_address(ctx, a),
        SYS_set_robust_list => process::sys_set_robust_list(ctx, a),
        SYS_rseq => process::sys_rseq(ctx, a),
        SYS_prlimit64 => process::sys_prlimit64(ctx, a),
        SYS_getrlimit => process::sys_getrlimit(ctx, a),
        SYS_sched_getaffinity => process::sys_sched_getaffinity(ctx, a),
        SYS_sched_yield => process::sys_sched_yield(ctx, a),
        SYS_getrandom => process::sys_getrandom(ctx, a),
        SYS_kill => process::sys_kill(ctx, a),
        SYS_tgkill => process::sys_tgkill(ctx, a),
        SYS_tkill => process::sys_tkill(ctx, a),
        SYS_prctl => process::sys_prctl(ctx, a),
        SYS_getrusage => process::sys_getrusage(ctx, a),
        SYS_clock_gettime => time::sys_clock_gettime(ctx, a),
        SYS_clock_getres => time::sys_clock_getres(ctx, a),
        SYS_gettimeofday => time::sys_gettimeofday(ctx, a),
        SYS_time => time::sys_time(ctx, a),
        SYS_nanosleep => time::sys_nanosleep(ctx, a),
        SYS_clock_nanosleep => time::sys_clock_nanosleep(ctx, a),
        SYS_rt_sigaction => signal::sys_rt_sigaction(ctx, a),
        SYS_rt_sigreturn => signal::sys_rt_sigreturn(ctx, a),
        SYS_rt_sigprocmask => signal::sys_rt_sigprocmask(ctx, a),
        SYS_rt_sigpending => signal::sys_rt_sigpending(ctx, a),
        SYS_sigaltstack => signal::sys_sigaltstack(ctx, a),
        SYS_futex => futex::sys_futex(ctx, a),
        SYS_epoll_create => epoll::sys_epoll_create(ctx, a),
        SYS_epoll_create1 => epoll::sys_epoll_create1(ctx, a),
        SYS_epoll_ctl => epoll::sys_epoll_ctl(ctx, a),
        SYS_epoll_wait => epoll::sys_epoll_wait(ctx, a),
        SYS_epoll_pwait => epoll::sys_epoll_pwait(ctx, a),
        SYS_socketpair => socket::sys_socketpair(ctx, a),
        SYS_recvfrom => socket::sys_recvfrom(ctx, a),
        SYS_sendto => socket::sys_sendto(ctx, a),
        SYS_recvmsg => socket::sys_recvmsg(ctx, a),
        SYS_sendmsg => socket::sys_sendmsg(ctx, a),
        SYS_shutdown => socket::sys_shutdown(ctx, a),
        SYS_timerfd_create => timerfd::sys_timerfd_create(ctx, a),
        SYS_timerfd_settime => timerfd::sys_timerfd_settime(ctx, a),
        SYS_timerfd_gettime => timerfd::sys_timerfd_gettime(ctx, a),
        SYS_clone => thread::sys_clone(ctx, a),
        SYS_clone3 => thread::sys_clone3(ctx, a),
        _ if nr == crate::guest::api::WAIT_FOR_REQUEST && ctx.api.is_some() => api::sys_wait_for_request(ctx, a),
        _ if nr == crate::guest::api::RESPOND && ctx.api.is_some() => api::sys_respond(ctx, a),
        _ if nr == crate::guest::api::RESPOND_AND_WAIT && ctx.api.is_some() => api::sys_respond_and_wait(ctx, a),
        _ if nr == crate::guest::api::NOP => Ok(0),
        _ if nr == crate::guest::api::KV_GET => kv::sys_kv_get(ctx, a),
        _ if nr == crate::guest::api::KV_SET => kv::sys_kv_set(ctx, a),
        _ if nr == crate::guest::api::KV_INCR => kv::sys_kv_incr(ctx, a),
        _ if nr == crate::guest::api::KV_DELETE => kv::sys_kv_delete(ctx, a),
        _ => {
            *counts.unsupported.entry(nr).or_default() += 1;
            return encode(Err(Errno::ENOSYS));
        }
    };
    *counts.handled.entry(nr).or_default() += 1;
    encode(result)
}

/// Whether the host's system calls are printed on the host's stderr (`TENANTVM_TRACE_SYSCALLS`
/// set: a debugging aid to find what a program asks of the VMM).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TENANTVM_TRACE_SYSCALLS").is_some())
}

/// The rax value for a result: the value, or `-errno`.
pub fn encode(r: SysResult) -> u64 {
    match r {
        Ok(v) => v,
        Err(Errno(e)) => (-i64::from(e)) as u64,
    }
}
