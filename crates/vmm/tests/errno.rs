//! The errno values emulated system calls return, pinned: a guest program (the isolation
//! probe's `/syscalls` path, apps/examples/isolate.c) makes raw system calls and each result
//! must be the Linux value.  Cases whose answer does not depend on the process's state are
//! also made on the host, natively, and must agree with it.

mod common;

use common::probe::{syscalls_request, words, SCRATCH};
use common::{require_kvm, tenant};

/// An address no program has mapped.
const BAD: u64 = 0x10;
const NO_FD: u64 = 1000;

struct Case {
    what: &'static str,
    call: [u64; 7],
    errno: i32,
    /// The host's kernel gives the same answer to the same call (no fd or process state).
    native: bool,
}

fn case(what: &'static str, call: [u64; 7], errno: i32, native: bool) -> Case {
    Case { what, call, errno, native }
}

fn cases() -> Vec<Case> {
    use libc::*;
    let nr = |n: c_long| n as u64;
    let s = SCRATCH;
    vec![
        // Bad file descriptors.
        case("read(no fd)", [nr(SYS_read), NO_FD, s, 1, 0, 0, 0], EBADF, true),
        case("write(no fd)", [nr(SYS_write), NO_FD, s, 1, 0, 0, 0], EBADF, true),
        case("close(no fd)", [nr(SYS_close), NO_FD, 0, 0, 0, 0, 0], EBADF, true),
        case("dup(no fd)", [nr(SYS_dup), NO_FD, 0, 0, 0, 0, 0], EBADF, true),
        case("dup2(1, -1)", [nr(SYS_dup2), 1, u64::MAX, 0, 0, 0, 0], EBADF, true),
        case("fstat(no fd)", [nr(SYS_fstat), NO_FD, s, 0, 0, 0, 0], EBADF, true),
        case("lseek(no fd)", [nr(SYS_lseek), NO_FD, 0, 0, 0, 0, 0], EBADF, true),
        case("read(stdout)", [nr(SYS_read), 1, s, 1, 0, 0, 0], EBADF, false),
        case("write(stdin)", [nr(SYS_write), 0, s, 1, 0, 0, 0], EBADF, false),
        case("mmap(file of no fd)", [nr(SYS_mmap), 0, 4096, 1, MAP_PRIVATE as u64, NO_FD, 0], EBADF, true),
        // Bad pointers.
        case("uname(bad)", [nr(SYS_uname), BAD, 0, 0, 0, 0, 0], EFAULT, true),
        case("fstat(1, bad)", [nr(SYS_fstat), 1, BAD, 0, 0, 0, 0], EFAULT, true),
        case("write(1, bad)", [nr(SYS_write), 1, BAD, 1, 0, 0, 0], EFAULT, true),
        case("clock_gettime(REALTIME, bad)", [nr(SYS_clock_gettime), 0, BAD, 0, 0, 0, 0], EFAULT, true),
        case("clock_gettime(PROCESS_CPUTIME, bad)", [nr(SYS_clock_gettime), 2, BAD, 0, 0, 0, 0], EFAULT, true),
        case("gettimeofday(bad)", [nr(SYS_gettimeofday), BAD, 0, 0, 0, 0, 0], EFAULT, true),
        case("getrandom(bad)", [nr(SYS_getrandom), BAD, 16, 0, 0, 0, 0], EFAULT, true),
        case("rt_sigprocmask(bad set)", [nr(SYS_rt_sigprocmask), 0, BAD, 0, 8, 0, 0], EFAULT, true),
        case("sched_getaffinity(bad)", [nr(SYS_sched_getaffinity), 0, 8, BAD, 0, 0, 0], EFAULT, true),
        case("prlimit64(old bad)", [nr(SYS_prlimit64), 0, RLIMIT_STACK as u64, 0, BAD, 0, 0], EFAULT, true),
        case("open(bad path)", [nr(SYS_open), BAD, 0, 0, 0, 0, 0], EFAULT, true),
        // Bad flags and values.
        case(
            "mmap(no MAP_PRIVATE/SHARED)",
            [nr(SYS_mmap), 0, 4096, 3, MAP_ANONYMOUS as u64, u64::MAX, 0],
            EINVAL,
            true,
        ),
        case("mmap(len 0)", [nr(SYS_mmap), 0, 0, 3, (MAP_PRIVATE | MAP_ANONYMOUS) as u64, u64::MAX, 0], EINVAL, true),
        case("munmap(unaligned)", [nr(SYS_munmap), 1, 4096, 0, 0, 0, 0], EINVAL, true),
        case("munmap(len 0)", [nr(SYS_munmap), 0x10000, 0, 0, 0, 0, 0], EINVAL, true),
        case("mprotect(unaligned)", [nr(SYS_mprotect), 1, 4096, 1, 0, 0, 0], EINVAL, true),
        case("clock_gettime(99)", [nr(SYS_clock_gettime), 99, s, 0, 0, 0, 0], EINVAL, true),
        case("clock_getres(99)", [nr(SYS_clock_getres), 99, s, 0, 0, 0, 0], EINVAL, true),
        case("getrandom(bad flags)", [nr(SYS_getrandom), s, 1, 0x100, 0, 0, 0], EINVAL, true),
        case("rt_sigprocmask(how 99)", [nr(SYS_rt_sigprocmask), 99, s, 0, 8, 0, 0], EINVAL, true),
        case("rt_sigprocmask(size 7)", [nr(SYS_rt_sigprocmask), 0, 0, s, 7, 0, 0], EINVAL, true),
        case("rt_sigaction(0)", [nr(SYS_rt_sigaction), 0, 0, s, 8, 0, 0], EINVAL, true),
        case("rt_sigaction(SIGKILL, act)", [nr(SYS_rt_sigaction), SIGKILL as u64, s, 0, 8, 0, 0], EINVAL, true),
        case("rt_sigaction(65)", [nr(SYS_rt_sigaction), 65, 0, s, 8, 0, 0], EINVAL, true),
        case("sched_getaffinity(len 3)", [nr(SYS_sched_getaffinity), 0, 3, s, 0, 0, 0], EINVAL, true),
        case("prlimit64(resource 999)", [nr(SYS_prlimit64), 0, 999, 0, s, 0, 0], EINVAL, true),
        case("getrlimit(resource 999)", [nr(SYS_getrlimit), 999, s, 0, 0, 0, 0], EINVAL, true),
        case("fcntl(1, 9999)", [nr(SYS_fcntl), 1, 9999, 0, 0, 0, 0], EINVAL, true),
        case("dup3(1, 1, 0)", [nr(SYS_dup3), 1, 1, 0, 0, 0, 0], EINVAL, true),
        // Not a terminal, not seekable, not there.
        case("lseek(stdout)", [nr(SYS_lseek), 1, 0, 0, 0, 0, 0], ESPIPE, false),
        case("ioctl(stdout, TCGETS)", [nr(SYS_ioctl), 1, TCGETS, s, 0, 0, 0], ENOTTY, false),
        case("sched_getaffinity(no such pid)", [nr(SYS_sched_getaffinity), 0x3fff_fff0, 8, s, 0, 0, 0], ESRCH, true),
        // Unknown system calls.
        case("syscall 400", [400, 0, 0, 0, 0, 0, 0], ENOSYS, true),
        case("syscall 9999", [9999, 0, 0, 0, 0, 0, 0], ENOSYS, true),
        case("syscall 0x10003 (above the API)", [0x10003, 0, 0, 0, 0, 0, 0], ENOSYS, true),
    ]
}

fn errno_of(ret: u64) -> Option<i32> {
    let r = ret as i64;
    (-4095..0).contains(&r).then_some(-r as i32)
}

/// The same call on the host, with SCRATCH pointing into a buffer of ours.
fn native(call: [u64; 7], scratch: &mut [u8]) -> Option<i32> {
    let base = scratch.as_mut_ptr() as u64;
    let a: Vec<u64> =
        call[1..].iter().map(|&v| if v >> 32 == SCRATCH >> 32 { base + (v & 0xffff) } else { v }).collect();
    // SAFETY: every call in the native cases fails before acting (bad fd, bad pointer, bad
    // flags, unknown number); pointers we pass are into `scratch` (64 KiB) or unmapped.
    let r = unsafe { libc::syscall(call[0] as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5]) };
    (r == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn system_calls_fail_with_the_errno_linux_gives() {
    require_kvm();
    let t = tenant("isolate", |_| {});
    let mut inst = t.instance().unwrap();
    let cases = cases();
    let calls: Vec<[u64; 7]> = cases.iter().map(|c| c.call).collect();
    // All in one request, then each alone: a call must not depend on what ran before it.
    let together = words(&inst.call(&syscalls_request(&calls, false)).unwrap().response.body);
    assert_eq!(together.len(), cases.len());
    let mut scratch = vec![0u8; 1 << 16];
    let mut wrong = Vec::new();
    for (c, &ret) in cases.iter().zip(&together) {
        let alone = words(&inst.call(&syscalls_request(&[c.call], false)).unwrap().response.body)[0];
        for (how, got) in [("in a request of all cases", ret), ("alone", alone)] {
            if errno_of(got) != Some(c.errno) {
                wrong.push(format!("{}: {how} returned {}, Linux gives -{}", c.what, got as i64, c.errno));
            }
        }
        if c.native {
            let host = native(c.call, &mut scratch);
            if host != Some(c.errno) {
                wrong.push(format!("{}: the host's kernel gives {host:?}, the case expects {}", c.what, c.errno));
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong:\n{}", wrong.len(), wrong.join("\n"));
    // None of it disturbed the instance: it serves, and an unknown number was counted.
    assert!(inst.stats().syscalls.unsupported.get(&400).copied().unwrap_or(0) >= 2);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn successful_calls_return_what_linux_returns() {
    require_kvm();
    let t = tenant("isolate", |_| {});
    let mut inst = t.instance().unwrap();
    let s = SCRATCH;
    use libc::*;
    let calls = [
        [SYS_uname as u64, s, 0, 0, 0, 0, 0],
        [SYS_sched_getaffinity as u64, 0, 128, s, 0, 0, 0],
        [SYS_getrandom as u64, s, 100, 0, 0, 0, 0],
        [SYS_dup as u64, 1, 0, 0, 0, 0, 0],
        [SYS_close as u64, 3, 0, 0, 0, 0, 0],
        [SYS_close as u64, 3, 0, 0, 0, 0, 0],
        [SYS_getcwd as u64, s, 64, 0, 0, 0, 0],
        [SYS_getcwd as u64, s, 1, 0, 0, 0, 0],
    ];
    let got = words(&inst.call(&syscalls_request(&calls, false)).unwrap().response.body);
    let want = [
        0,
        8,                      // bytes of the affinity mask written: one CPU, one word
        100,                    // bytes of randomness
        3,                      // the lowest free descriptor
        0,                      // closing it
        (-EBADF) as i64 as u64, // closing it again
        2,                      // "/" and its NUL
        (-ERANGE) as i64 as u64,
    ];
    assert_eq!(got, want);
}
