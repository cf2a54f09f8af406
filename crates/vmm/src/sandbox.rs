//! Seccomp filters for the host threads that run guests.
//!
//! A guest that found a bug in the VMM (or in KVM) would run with the rights of the thread
//! that called `KVM_RUN`.  Once a server has booted its pools, [`restrict_current_thread`]
//! limits that thread to the system calls it needs from then on:
//!
//! - driving VMs: KVM ioctls (type 0xAE) only, memory management without `PROT_EXEC`, the
//!   deadline timer and its signal, clocks, randomness, futexes;
//! - being a Python thread that also runs an asyncio loop (the app runs short guest calls
//!   inline): I/O on descriptors it already has (read/write/send/recv/epoll/poll), creating
//!   threads (`clone` with `CLONE_THREAD` only; `clone3` answers ENOSYS so that glibc falls
//!   back to `clone`, whose flags the filter can check), closing descriptors.
//!
//! Everything else — opening files, new sockets, `execve`, creating processes, `ptrace`,
//! `kill`ing other processes, mounting, loading modules, `bpf`, ... — fails with `EPERM`.  The
//! filter is per thread (no TSYNC) and cannot be removed.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// Failure to build or install a filter.
fn err(what: &'static str) -> impl FnOnce(seccompiler::Error) -> Error {
    move |e| Error::Os { op: what, source: std::io::Error::other(e.to_string()) }
}

fn cond(arg: u8, op: Op, value: u64) -> Cond {
    Cond::new(arg, Len::Qword, op, value).expect("valid seccomp condition")
}

fn rule(conds: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(conds).expect("valid seccomp rule")
}

/// System calls allowed without conditions.
const ALLOWED: &[i64] = &[
    // I/O on descriptors the thread already has
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_ftruncate,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // memory (mmap/mprotect are conditional: no PROT_EXEC)
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mincore,
    // synchronisation, time, randomness, identity
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    // signals and the deadline timer
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_delete,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

const KVMIO: u64 = 0xAE;

fn allow_list() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let no_exec = |arg| vec![rule(vec![cond(arg, Op::MaskedEq(libc::PROT_EXEC as u64), 0)])];
    rules.insert(libc::SYS_mmap, no_exec(2));
    rules.insert(libc::SYS_mprotect, no_exec(2));
    // ioctl: KVM's requests (type byte 0xAE), and the harmless descriptor queries Python and
    // asyncio make.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Op::MaskedEq(0xff00), KVMIO << 8)]),
            rule(vec![cond(1, Op::Eq, libc::FIONBIO)]),
            rule(vec![cond(1, Op::Eq, libc::FIONREAD)]),
            rule(vec![cond(1, Op::Eq, libc::TCGETS)]),
        ],
    );
    // Threads, never processes.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, Op::MaskedEq(libc::CLONE_THREAD as u64), libc::CLONE_THREAD as u64)])],
    );
    // Installing further filters (only ever more restrictive): needed to stack the clone3
    // filter after this one, harmless to allow.
    rules.insert(libc::SYS_prctl, vec![rule(vec![cond(0, Op::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)])]);
    rules.insert(libc::SYS_seccomp, vec![rule(vec![cond(0, Op::Eq, libc::SECCOMP_SET_MODE_FILTER as u64)])]);
    // Signals to this process's own threads only.
    let pid = std::process::id() as u64;
    rules.insert(libc::SYS_tgkill, vec![rule(vec![cond(0, Op::Eq, pid)])]);
    rules
}

struct Filters {
    allow: BpfProgram,
    no_clone3: BpfProgram,
}

fn filters() -> Result<&'static Filters> {
    static FILTERS: OnceLock<std::result::Result<Filters, String>> = OnceLock::new();
    let built = FILTERS.get_or_init(|| {
        let arch = TargetArch::x86_64;
        let allow =
            SeccompFilter::new(allow_list(), SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch)
                .and_then(BpfProgram::try_from)
                .map_err(|e| e.to_string())?;
        let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        let no_clone3 =
            SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
                .and_then(BpfProgram::try_from)
                .map_err(|e| e.to_string())?;
        Ok(Filters { allow, no_clone3 })
    });
    built
        .as_ref()
        .map_err(|e| Error::Os { op: "building the seccomp filter", source: std::io::Error::other(e.clone()) })
}

/// Restricts the calling thread to the system calls a guest-running thread needs (see the
/// module documentation).  Irreversible; calling it again on the same thread is harmless.
pub fn restrict_current_thread() -> Result<()> {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if DONE.with(std::cell::Cell::get) {
        return Ok(());
    }
    // Make sure everything the VMM opens lazily exists before the door closes.
    crate::kvm::host()?;
    let f = filters()?;
    // Installed last, so evaluated first: for clone3 its ENOSYS wins over the EPERM of the
    // allow-list (seccomp keeps the first result among actions of equal precedence).
    seccompiler::apply_filter(&f.allow).map_err(err("installing the seccomp filter"))?;
    seccompiler::apply_filter(&f.no_clone3).map_err(err("installing the seccomp filter"))?;
    DONE.with(|d| d.set(true));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(filters().is_ok());
    }

    #[test]
    #[allow(unsafe_code)] // fork and _exit, to show that fork is refused
    fn a_restricted_thread_is_refused_what_it_does_not_need() {
        std::thread::spawn(|| {
            restrict_current_thread().unwrap();
            // Allowed: clocks, memory, threads.
            let t = std::time::Instant::now();
            let v = vec![1u8; 1 << 20];
            assert_eq!(v.len(), 1 << 20);
            std::thread::spawn(|| 7).join().map(|x| assert_eq!(x, 7)).unwrap();
            assert!(t.elapsed().as_secs() < 60);
            // Refused: files, sockets, processes.
            let e = std::fs::File::create("/tmp/tenantvm-seccomp-test").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            let e = std::net::TcpListener::bind("127.0.0.1:0").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            let e = std::process::Command::new("/bin/true").status().unwrap_err();
            assert!(matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)), "{e:?}");
            // SAFETY: fork is refused; if it were not, the child exits at once.
            let pid = unsafe { libc::syscall(libc::SYS_fork) };
            if pid == 0 {
                // SAFETY: the child (which must not exist) leaves immediately.
                unsafe { libc::_exit(0) };
            }
            assert_eq!(pid, -1);
        })
        .join()
        .unwrap();
        // The filter stayed on that thread: this one can still open files.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }
}
