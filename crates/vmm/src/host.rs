//! The host-OS calls the VMM makes outside KVM and its mappings: clocks, the TSC, randomness,
//! writing to the host's stdout/stderr, waiting for stdin, and the eventfd of worker results.
//!
//! Each is a safe function over one `libc` call whose arguments are locals or live slices;
//! the rest of the crate (the syscall handlers above all) stays free of `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The CPU's time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86-64 CPU.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// `clock_gettime(clock)` as (seconds, nanoseconds); `None` for a clock the host refuses.
pub fn clock(clock: libc::clockid_t) -> Option<(u64, u64)> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the local `ts`; the result is checked.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some((ts.tv_sec as u64, ts.tv_nsec as u64))
}

/// An instant no run lives to see (a timeout too large to represent).
pub fn far_future() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
}

/// `clock` in nanoseconds (0 for a clock the host refuses; every caller passes a clock that
/// always exists).
pub fn clock_ns(id: libc::clockid_t) -> u64 {
    clock(id).map_or(0, |(s, ns)| s * 1_000_000_000 + ns)
}

/// Fills `buf` from the host kernel's RNG.
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most `buf.len() - done` bytes into the live slice tail.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n > 0 {
            done += n as usize;
        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            panic!("the host's getrandom failed: {}", io::Error::last_os_error());
        }
    }
}

/// Writes all of `data` to the host's own descriptor `fd` (1 or 2), retrying on EINTR.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writes from a live slice; a bad fd is reported as an error, not UB.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Waits up to `ms` milliseconds for `fd` to be readable; false when the time ran out.
pub fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one pollfd that lives on this stack frame.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    ready != 0
}

/// A non-blocking eventfd used as a doorbell: readable after [`EventFd::ring`] until
/// [`EventFd::clear`].
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd (close-on-exec, non-blocking).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd creates a new descriptor; the result is checked and owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// The descriptor, to wait on.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes it readable.  Never blocks: the counter is cleared by every [`EventFd::clear`],
    /// so it never nears overflow.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to our own eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes it unreadable until the next ring (nothing to clear is fine).
    pub fn clear(&self) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a local from our own non-blocking eventfd; EAGAIN (no
        // ring pending) is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_is_readable_between_ring_and_clear() {
        let e = EventFd::new().unwrap();
        assert!(!wait_readable(e.fd(), 0));
        e.ring();
        e.ring();
        assert!(wait_readable(e.fd(), 0));
        e.clear();
        assert!(!wait_readable(e.fd(), 0));
    }

    #[test]
    fn random_bytes_fill_the_buffer() {
        let mut buf = [0u8; 64];
        fill_random(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        assert!(clock(libc::CLOCK_MONOTONIC).is_some());
        assert!(clock(-1234).is_none());
    }
}
