//! Clocks and sleeping.
//!
//! The guest kernel answers the common clocks itself from the TSC (see guest/kernel.c and
//! [`crate::machine::Clock`]); these host-side handlers serve what it declines: CPU-time
//! clocks, bad pointers, and hosts without an invariant TSC.  Sleeping blocks the calling
//! thread (the request is running) but never past the run's deadline: a sleep that would end
//! after it stops the run as a timeout at once.

use std::time::{Duration, Instant};

use super::{Ctx, Errno, Stop, SysResult};

fn host_clock(clock: libc::clockid_t) -> Result<(u64, u64), Errno> {
    crate::host::clock(clock).ok_or(Errno::EINVAL)
}

fn timespec_bytes(sec: u64, nsec: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sec.to_le_bytes());
    b[8..].copy_from_slice(&nsec.to_le_bytes());
    b
}

/// Which host clock answers guest clock `id`.
fn clock_for(id: u64) -> Result<libc::clockid_t, Errno> {
    match id as i32 {
        c @ (libc::CLOCK_REALTIME
        | libc::CLOCK_MONOTONIC
        | libc::CLOCK_MONOTONIC_RAW
        | libc::CLOCK_REALTIME_COARSE
        | libc::CLOCK_MONOTONIC_COARSE
        | libc::CLOCK_BOOTTIME
        | libc::CLOCK_TAI) => Ok(c),
        libc::CLOCK_REALTIME_ALARM => Ok(libc::CLOCK_REALTIME),
        libc::CLOCK_BOOTTIME_ALARM => Ok(libc::CLOCK_BOOTTIME),
        // The guest's CPU time: the host thread's, which runs the vCPU.
        libc::CLOCK_PROCESS_CPUTIME_ID | libc::CLOCK_THREAD_CPUTIME_ID => Ok(libc::CLOCK_THREAD_CPUTIME_ID),
        _ => Err(Errno::EINVAL),
    }
}

/// clock_gettime(clock, ts)
pub fn sys_clock_gettime(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (sec, nsec) = host_clock(clock_for(a[0])?)?;
    ctx.mem.write(a[1], &timespec_bytes(sec, nsec))?;
    Ok(0)
}

/// clock_getres(clock, res)
pub fn sys_clock_getres(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let clock = clock_for(a[0])?;
    if a[1] != 0 {
        let coarse = clock == libc::CLOCK_REALTIME_COARSE || clock == libc::CLOCK_MONOTONIC_COARSE;
        ctx.mem.write(a[1], &timespec_bytes(0, if coarse { 4_000_000 } else { 1 }))?;
    }
    Ok(0)
}

/// gettimeofday(tv, tz)
pub fn sys_gettimeofday(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (sec, nsec) = host_clock(libc::CLOCK_REALTIME)?;
    if a[0] != 0 {
        ctx.mem.write(a[0], &timespec_bytes(sec, nsec / 1000))?;
    }
    if a[1] != 0 {
        ctx.mem.write(a[1], &[0u8; 8])?;
    }
    Ok(0)
}

/// time(tloc)
pub fn sys_time(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (sec, _) = host_clock(libc::CLOCK_REALTIME)?;
    if a[0] != 0 {
        ctx.mem.write_u64(a[0], sec)?;
    }
    Ok(sec)
}

fn read_timespec(ctx: &Ctx<'_>, va: u64) -> Result<Duration, Errno> {
    let b = ctx.mem.read_vec(va, 16)?;
    let sec = i64::from_le_bytes(b[..8].try_into().unwrap());
    let nsec = i64::from_le_bytes(b[8..].try_into().unwrap());
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(Errno::EINVAL);
    }
    Ok(Duration::new(sec as u64, nsec as u32))
}

/// Sleeps for `duration`, or stops the run as a timeout if that would pass the deadline.
/// With other threads the sleeper leaves the vCPU to them instead.
pub fn sleep_for(ctx: &mut Ctx<'_>, duration: Duration) -> SysResult {
    if ctx.proc.threads.multi() {
        let until = Instant::now().checked_add(duration).unwrap_or_else(crate::host::far_future);
        ctx.proc.threads.current_mut().state =
            crate::linux::threads::RunState::Waiting(crate::linux::threads::Wait::Sleep(until));
        ctx.sched = Some(super::Sched::Switch);
        return Ok(0);
    }
    let start = Instant::now();
    let wake = start.checked_add(duration);
    match (wake, ctx.deadline) {
        (Some(wake), Some(deadline)) if wake <= deadline => std::thread::sleep(duration),
        (_, Some(_)) | (None, None) => {
            ctx.stop = Some(Stop::Timeout);
            return Ok(0);
        }
        (Some(_), None) => std::thread::sleep(duration),
    }
    ctx.blocked += start.elapsed();
    Ok(0)
}

/// nanosleep(req, rem)
pub fn sys_nanosleep(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = read_timespec(ctx, a[0])?;
    sleep_for(ctx, d)
}

/// clock_nanosleep(clock, flags, req, rem)
pub fn sys_clock_nanosleep(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const TIMER_ABSTIME: u64 = 1;
    let clock = clock_for(a[0])?;
    if clock == libc::CLOCK_THREAD_CPUTIME_ID {
        return Err(Errno::EINVAL);
    }
    let req = read_timespec(ctx, a[2])?;
    let d = if a[1] & TIMER_ABSTIME != 0 {
        let (sec, nsec) = host_clock(clock)?;
        req.saturating_sub(Duration::new(sec, nsec as u32))
    } else {
        req
    };
    sleep_for(ctx, d)
}
