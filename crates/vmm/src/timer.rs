//! Wall-clock limits: a per-thread POSIX timer interrupts `KVM_RUN` from outside (and a
//! second one, on the thread's CPU-time clock, ends a guest thread's time slice).
//!
//! Each thread that runs guests owns one timer (created on first use, deleted when the thread
//! exits) that delivers [`deadline_signal()`] to that very thread (`SIGEV_THREAD_ID`).  The
//! handler sets `kvm_run.immediate_exit` of the vCPU the thread is running, so `KVM_RUN`
//! returns `EINTR` whether the signal lands while the guest runs or just before the ioctl is
//! entered.  No helper thread per call, no polling.

use std::cell::{Cell, RefCell};
use std::sync::Once;
use std::time::Instant;

use kvm_bindings::kvm_run;

use crate::error::{Error, Result};

thread_local! {
    /// The kvm_run of the vCPU this thread is running, or null.  Read by the signal handler:
    /// a `const` thread-local without destructor is a plain TLS slot, safe to read there.
    static CURRENT_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
    static TIMER: RefCell<Option<ThreadTimer>> = const { RefCell::new(None) };
    /// The time-slice timer: CPU time of this thread (guest time included), same signal.
    static SLICE: RefCell<Option<ThreadTimer>> = const { RefCell::new(None) };
}

/// The real-time signal used for deadlines (SIGRTMIN + 6, clear of glibc's reserved ones).
pub fn deadline_signal() -> i32 {
    libc::SIGRTMIN() + 6
}

extern "C" fn on_deadline(_: libc::c_int) {
    let run = CURRENT_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: CURRENT_RUN is non-null only between `Deadline::arm` and its drop, while the
        // vCPU's kvm_run mapping is alive (the `Deadline` borrows the vCPU).  A volatile byte
        // store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn install_handler() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is
        // an `extern "C" fn(c_int)` as sa_sigaction expects without SA_SIGINFO.  No
        // SA_RESTART: the interrupted ioctl must return EINTR.
        let ret = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_deadline as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(deadline_signal(), &sa, std::ptr::null_mut())
        };
        if ret != 0 {
            result = Err(Error::last_os("sigaction(deadline signal)"));
        }
    });
    result
}

struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    fn new() -> Result<ThreadTimer> {
        Self::on(libc::CLOCK_MONOTONIC)
    }

    fn on(clock: libc::clockid_t) -> Result<ThreadTimer> {
        install_handler()?;
        // SAFETY: a zeroed sigevent is valid; the fields set below select thread-directed
        // delivery to the calling thread.  timer_create's result is checked.
        let timer = unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = deadline_signal();
            sev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(clock, &mut sev, &mut timer) != 0 {
                return Err(Error::last_os("timer_create"));
            }
            timer
        };
        // The thread may have inherited a mask that blocks the signal (some runtimes block
        // everything in worker threads); unblock it here, where it is needed.
        // SAFETY: a local sigset with one signal, applied to this thread only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, deadline_signal());
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        Ok(ThreadTimer(timer))
    }

    fn set(&self, after: std::time::Duration) {
        // A zero it_value would disarm; keep at least 1 ns.
        let ns = after.as_nanos().clamp(1, i64::MAX as u128) as i64;
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000 },
        };
        // SAFETY: arming our own live timer with a valid itimerspec.
        unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }

    fn disarm(&self) {
        // SAFETY: a zero itimerspec disarms our own live timer.
        unsafe { libc::timer_settime(self.0, 0, &std::mem::zeroed(), std::ptr::null_mut()) };
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer this value created; nothing uses it afterwards.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// An armed deadline for one vCPU on the current thread; disarmed on drop.
pub struct Deadline {
    run: *mut kvm_run,
}

impl Deadline {
    /// Arms the calling thread's timer to interrupt the vCPU whose `kvm_run` is `run` at `at`.
    pub fn arm(run: &mut kvm_run, at: Instant) -> Result<Deadline> {
        run.immediate_exit = 0;
        let ptr: *mut kvm_run = run;
        CURRENT_RUN.with(|c| c.set(ptr));
        let armed = TIMER.with(|t| -> Result<()> {
            let mut t = t.borrow_mut();
            if t.is_none() {
                *t = Some(ThreadTimer::new()?);
            }
            t.as_ref().unwrap().set(at.saturating_duration_since(Instant::now()));
            Ok(())
        });
        if let Err(e) = armed {
            CURRENT_RUN.with(|c| c.set(std::ptr::null_mut()));
            return Err(e);
        }
        Ok(Deadline { run: ptr })
    }

    /// Also interrupts the vCPU once this thread has used `after` more CPU time (guest time
    /// included): a time slice that a host keeping the thread waiting does not shorten.
    /// `None` disarms it.
    pub fn set_cpu_slice(&self, after: Option<std::time::Duration>) -> Result<()> {
        SLICE.with(|t| -> Result<()> {
            let mut t = t.borrow_mut();
            if t.is_none() {
                if after.is_none() {
                    return Ok(());
                }
                *t = Some(ThreadTimer::on(libc::CLOCK_THREAD_CPUTIME_ID)?);
            }
            let timer = t.as_ref().unwrap();
            match after {
                Some(d) => timer.set(d),
                None => timer.disarm(),
            }
            Ok(())
        })
    }

    /// Clears `immediate_exit` after an interruption that was not (yet) the deadline, so the
    /// guest can be resumed.
    pub fn rearm_after_interrupt(&self) {
        // SAFETY: `run` is the live kvm_run this deadline was armed for.
        unsafe { std::ptr::addr_of_mut!((*self.run).immediate_exit).write_volatile(0) };
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        for timer in [&TIMER, &SLICE] {
            timer.with(|t| {
                if let Some(t) = t.borrow().as_ref() {
                    t.disarm();
                }
            });
        }
        CURRENT_RUN.with(|c| c.set(std::ptr::null_mut()));
        // SAFETY: as in rearm_after_interrupt; the signal can no longer fire (disarmed and the
        // pointer cleared), so this store cannot race the handler.
        unsafe { std::ptr::addr_of_mut!((*self.run).immediate_exit).write_volatile(0) };
    }
}
