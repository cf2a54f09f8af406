//! Blocking on what only another thread (or the passing of time) can change, shared by the
//! calls that wait: reads and writes of pipes and eventfds, `poll`, `epoll_wait` and timerfd
//! reads.
//!
//! A call that finds nothing ready either lets the other threads run and is made again
//! ([`Sched::Retry`], [`Sched::Again`]), sleeps when the program is alone and has a limit, or,
//! alone with no limit, ends the run as a deadlock: nothing could ever wake it.

use std::time::{Duration, Instant};

use super::{Ctx, Errno, Sched, Stop, SysResult};

/// Ends the run as a deadlock (a single thread waits for what only it could do).
pub fn deadlock(ctx: &mut Ctx<'_>, why: &'static str) -> SysResult {
    ctx.stop = Some(Stop::Deadlock(why));
    Err(Errno::EINTR)
}

/// Nothing is ready yet: with other threads, wait for one of them to act (and look again) or
/// for `limit` (then the call returns 0); alone, sleep `limit`, or deadlock without one.  A
/// timer among the descriptors that expires after `timer` makes the call look again then.
pub fn wait_for_others(
    ctx: &mut Ctx<'_>,
    limit: Option<Duration>,
    timer: Option<Duration>,
    why: &'static str,
) -> SysResult {
    if ctx.proc.threads.multi() {
        let thread = ctx.proc.threads.current_mut();
        // A call made again after a wait keeps the deadline of its first attempt.
        let until = thread.retry_until.or_else(|| limit.map(|d| Instant::now() + d));
        let recheck = timer.map(|d| Instant::now() + d);
        ctx.sched = Some(Sched::Retry { until, recheck });
        return Ok(0);
    }
    match (limit, timer) {
        // Alone, the timer's expiry comes first: sleep until it and make the call again.
        (Some(l), Some(t)) if t < l => sleep_then_again(ctx, t),
        (None, Some(t)) => sleep_then_again(ctx, t),
        (Some(d), _) => super::time::sleep_for(ctx, d),
        (None, None) => deadlock(ctx, why),
    }
}

/// Sleeps `d`, then has the calling thread make its call again (its rip is moved back to the
/// `syscall` instruction by the machine, as for a retry).
fn sleep_then_again(ctx: &mut Ctx<'_>, d: Duration) -> SysResult {
    super::time::sleep_for(ctx, d)?;
    if ctx.stop.is_none() {
        ctx.sched = Some(Sched::Again);
    }
    Ok(0)
}
