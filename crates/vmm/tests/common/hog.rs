//! Starving a thread on purpose: a real-time thread that takes the caller's CPU away.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A real-time thread pinned to the caller's CPU; the caller is pinned there too until drop.
pub struct Hog {
    thread: Option<JoinHandle<()>>,
    saved: libc::cpu_set_t,
}

fn pin_to(cpu: usize) -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the calls read and write the two sets on this frame.
    unsafe {
        let mut saved: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(saved)
    }
}

impl Hog {
    /// Pins the calling thread to the CPU it runs on and starts a SCHED_FIFO thread there
    /// that sleeps `delay`, then spins for `spin`: meanwhile the caller gets no CPU at all.
    /// None where real-time scheduling is not allowed (not root, no CAP_SYS_NICE), which
    /// fails the test instead under `TENANTVM_REQUIRE_KVM=1`.
    pub fn start(delay: Duration, spin: Duration) -> Option<Hog> {
        Hog::spawn(delay, spin, true)
    }

    /// Like [`Hog::start`] with an ordinary thread: the two share the CPU.
    pub fn share(delay: Duration, spin: Duration) -> Option<Hog> {
        Hog::spawn(delay, spin, false)
    }

    fn spawn(delay: Duration, spin: Duration, realtime: bool) -> Option<Hog> {
        // SAFETY: sched_getcpu has no arguments.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
        let saved = pin_to(cpu).ok()?;
        let (ready, started) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: sets this thread's policy from a sched_param on this frame.
            let rt = pin_to(cpu).is_ok()
                && (!realtime || unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0);
            ready.send(rt).unwrap();
            if rt {
                std::thread::sleep(delay);
                let until = Instant::now() + spin;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
        });
        let hog = Hog { thread: Some(thread), saved };
        if started.recv().unwrap_or(false) {
            Some(hog)
        } else if super::strict() {
            // `make test` runs everything: a test that cannot starve its thread proves nothing.
            panic!("real-time scheduling (SCHED_FIFO) is not allowed here, so this test cannot run");
        } else {
            // Tests that need it are built ignored where build.rs sees it is not allowed; this
            // is a host that refuses it anyway (a container's real-time budget, ...).
            eprintln!("SKIPPED (not run, although reported ok): real-time scheduling is not allowed here");
            None
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: restores the affinity saved in `start`, a set owned by self.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.saved) };
    }
}
