//! timerfd: timers read as descriptors (`timerfd_create`, `timerfd_settime`,
//! `timerfd_gettime`, `read`, and readiness for `poll`/`epoll`).
//!
//! A timer is its description's state ([`File::TimerFd`]): the clock, the next expiry in that
//! clock's nanoseconds (0: disarmed), the interval, and expirations not yet read.  Expirations
//! are counted when looked at, from the host's clock, so nothing runs while nobody looks.  A
//! `read` before the expiry waits for it: alone, by sleeping; with other threads, by letting
//! them run until then.

use std::time::Duration;

use super::{Ctx, Errno, Sched, SysResult};
use crate::linux::fdtable::{Description, File};

const TFD_TIMER_ABSTIME: u64 = 1;
const TFD_TIMER_CANCEL_ON_SET: u64 = 2;
const NS: u64 = 1_000_000_000;

/// The host clock a timerfd clock id reads, or EINVAL.
fn clock_of(id: u64) -> Result<libc::clockid_t, Errno> {
    Ok(match id as i32 {
        libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC => libc::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME | libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        _ => return Err(Errno::EINVAL),
    })
}

/// Counts the expirations up to `now` into `ticks` and moves `next` past `now`.
pub fn advance(next: &mut u64, interval: u64, ticks: &mut u64, now: u64) {
    if *next == 0 || now < *next {
        return;
    }
    match (now - *next).checked_div(interval) {
        None => {
            // One-shot: it expires once and disarms.
            *ticks += 1;
            *next = 0;
        }
        Some(periods) => {
            let n = 1 + periods;
            *ticks = ticks.saturating_add(n);
            *next = next.saturating_add(n.saturating_mul(interval));
        }
    }
}

/// Whether a timer has expirations to read at the host's current time.
pub fn ready(clock: libc::clockid_t, next: u64, ticks: u64) -> bool {
    ticks > 0 || (next != 0 && crate::host::clock_ns(clock) >= next)
}

/// How long until a timer's next expiry, if it is armed and has nothing to read.
pub fn until_expiry(clock: libc::clockid_t, next: u64, ticks: u64) -> Option<Duration> {
    (ticks == 0 && next != 0).then(|| Duration::from_nanos(next.saturating_sub(crate::host::clock_ns(clock))))
}

/// timerfd_create(clockid, flags)
pub fn sys_timerfd_create(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let clock = clock_of(a[0])?;
    let flags = a[1] as i32;
    if flags & !(libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) != 0 {
        return Err(Errno::EINVAL);
    }
    let file = File::TimerFd { clock, next: 0, interval: 0, ticks: 0 };
    let status = libc::O_RDWR as u32 | (flags & libc::TFD_NONBLOCK) as u32;
    Ok(ctx.proc.files.fds.open(Description::new(file, status, None), flags & libc::TFD_CLOEXEC != 0)? as u64)
}

fn read_itimerspec(ctx: &Ctx<'_>, va: u64) -> Result<(u64, u64), Errno> {
    let b = ctx.mem.read_vec(va, 32)?;
    let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    let mut out = [0u64; 2];
    for (k, (sec, nsec)) in [(w(0), w(1)), (w(2), w(3))].into_iter().enumerate() {
        if sec < 0 || !(0..NS as i64).contains(&nsec) {
            return Err(Errno::EINVAL);
        }
        out[k] = (sec as u64).saturating_mul(NS).saturating_add(nsec as u64);
    }
    Ok((out[0], out[1])) // (interval, value)
}

fn itimerspec(interval: u64, value: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, v) in [interval / NS, interval % NS, value / NS, value % NS].into_iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// The current setting of timer `fd` as timerfd_gettime reports it: (interval, time left).
fn current(ctx: &Ctx<'_>, fd: u64) -> Result<(u64, u64), Errno> {
    let File::TimerFd { clock, next, interval, .. } = ctx.proc.files.fds.get(fd)?.file else {
        return Err(Errno::EINVAL);
    };
    let left = if next == 0 { 0 } else { next.saturating_sub(crate::host::clock_ns(clock)).max(1) };
    Ok((interval, left))
}

/// timerfd_settime(fd, flags, new, old)
pub fn sys_timerfd_settime(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (fd, flags) = (a[0], a[1]);
    if flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
        return Err(Errno::EINVAL);
    }
    let (interval, value) = read_itimerspec(ctx, a[2])?;
    let old = current(ctx, fd)?;
    if a[3] != 0 {
        ctx.mem.write(a[3], &itimerspec(old.0, old.1))?;
    }
    let Ok(Description { file: File::TimerFd { clock, next, interval: iv, ticks }, .. }) =
        ctx.proc.files.fds.get_mut(fd)
    else {
        return Err(Errno::EINVAL);
    };
    *ticks = 0;
    *iv = interval;
    *next = match (value, flags & TFD_TIMER_ABSTIME != 0) {
        (0, _) => 0,
        (v, true) => v,
        (v, false) => crate::host::clock_ns(*clock).saturating_add(v),
    };
    Ok(0)
}

/// timerfd_gettime(fd, curr)
pub fn sys_timerfd_gettime(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (interval, left) = current(ctx, a[0])?;
    ctx.mem.write(a[1], &itimerspec(interval, left))?;
    Ok(0)
}

/// `read` of a timerfd: the expirations since the last read (8 bytes), waiting for the next
/// one if there are none.
pub fn read(ctx: &mut Ctx<'_>, fd: u64, buf: u64, len: u64, nonblocking: bool) -> SysResult {
    if len < 8 {
        return Err(Errno::EINVAL);
    }
    loop {
        let Ok(Description { file: File::TimerFd { clock, next, interval, ticks }, .. }) =
            ctx.proc.files.fds.get_mut(fd)
        else {
            return Err(Errno::EBADF);
        };
        advance(next, *interval, ticks, crate::host::clock_ns(*clock));
        if *ticks > 0 {
            let n = std::mem::take(ticks);
            ctx.mem.write(buf, &n.to_le_bytes())?;
            return Ok(8);
        }
        if nonblocking {
            return Err(Errno::EAGAIN);
        }
        let Some(wait) = until_expiry(*clock, *next, *ticks) else {
            return super::wait::deadlock(ctx, "read of a timerfd that is not armed");
        };
        if ctx.proc.threads.multi() {
            let at = std::time::Instant::now() + wait;
            ctx.sched = Some(Sched::Retry { until: None, recheck: Some(at) });
            return Ok(0);
        }
        super::time::sleep_for(ctx, wait)?;
        if ctx.stop.is_some() {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::advance;

    #[test]
    fn expirations_are_counted_and_the_next_one_moves_past_now() {
        let (mut next, mut ticks) = (100, 0);
        advance(&mut next, 10, &mut ticks, 99);
        assert_eq!((next, ticks), (100, 0));
        advance(&mut next, 10, &mut ticks, 125);
        assert_eq!((next, ticks), (130, 3), "100, 110, 120");
        let (mut once, mut t) = (50, 0);
        advance(&mut once, 0, &mut t, 60);
        assert_eq!((once, t), (0, 1), "a one-shot timer disarms");
    }
}
