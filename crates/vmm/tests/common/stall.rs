//! A host stall on purpose: CPU time charged to the calling thread while it runs a guest, as a
//! nested host's hypervisor or the kernel's interrupt handling charge it.
//!
//! A one-shot POSIX timer sends `SIGUSR2` to the calling thread after `delay`; its handler
//! spins until the thread has been charged `cpu` more CPU time.  When the signal lands while
//! the thread is inside `KVM_RUN`, the ioctl returns (`EINTR`) only once the handler is done:
//! to the VMM that `KVM_RUN` took the handler's time, all of it charged to the thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

/// The handler's CPU time to burn, in ns.
static BURN_NS: AtomicU64 = AtomicU64::new(0);

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec on this frame; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

extern "C" fn burn(_: libc::c_int) {
    let until = thread_cpu_ns() + BURN_NS.load(Ordering::Relaxed);
    while thread_cpu_ns() < until {
        std::hint::spin_loop();
    }
}

/// An armed stall; the timer is deleted on drop (whether or not it went off).
pub struct Stall(libc::timer_t);

impl Stall {
    /// Arms the stall: after `delay`, the calling thread is kept busy for `cpu` of CPU time.
    pub fn after(delay: Duration, cpu: Duration) -> Stall {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            // SAFETY: a zeroed sigaction is "no flags, empty mask"; `burn` is an
            // `extern "C" fn(c_int)` as sa_sigaction expects without SA_SIGINFO.  No
            // SA_RESTART: the interrupted ioctl returns EINTR, as for the VMM's own signal.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = burn as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
            }
        });
        BURN_NS.store(cpu.as_nanos() as u64, Ordering::Relaxed);
        // SAFETY: a zeroed sigevent is valid; the fields set select delivery of SIGUSR2 to
        // this thread.  The timer is armed once (it_interval zero) and deleted by Drop.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGUSR2;
            sev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            assert_eq!(libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer), 0);
            let ns = delay.as_nanos().max(1) as i64;
            let spec = libc::itimerspec {
                it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: libc::timespec { tv_sec: ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000 },
            };
            assert_eq!(libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()), 0);
            Stall(timer)
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        // SAFETY: deleting the timer this value created.
        unsafe { libc::timer_delete(self.0) };
    }
}
