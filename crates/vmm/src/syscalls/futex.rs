//! futex: waits and wakes between the program's threads.
//!
//! A waiting thread leaves the vCPU ([`crate::linux::threads`] keeps it as a waiter on the
//! address; all futexes are private to the one address space, so "shared" futexes are the
//! same).  With a single thread nobody could wake a waiter: a wait without a timeout ends the
//! run as a deadlock instead of hanging until the deadline, and one with a timeout is slept.
//! Operations other than WAIT/WAKE (with or without bitset), REQUEUE, CMP_REQUEUE and
//! WAKE_OP (the PI and WAITV families) are ENOSYS.

use std::time::{Duration, Instant};

use super::{Ctx, Errno, Sched, Stop, SysResult};

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_REQUEUE: u64 = 3;
const FUTEX_CMP_REQUEUE: u64 = 4;
const FUTEX_WAKE_OP: u64 = 5;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_CLOCK_REALTIME: u64 = 256;
const FUTEX_CMD_MASK: u64 = 0x7f;

fn read_u32(ctx: &Ctx<'_>, va: u64) -> Result<u32, Errno> {
    let mut b = [0u8; 4];
    ctx.mem.read(va, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// The timeout of a wait as a duration from now (WAIT: relative; WAIT_BITSET: absolute on
/// CLOCK_MONOTONIC, or CLOCK_REALTIME with the flag).
fn timeout(ctx: &Ctx<'_>, op: u64, flags: u64, va: u64) -> Result<Option<Duration>, Errno> {
    if va == 0 {
        return Ok(None);
    }
    let t = ctx.mem.read_vec(va, 16)?;
    let sec = i64::from_le_bytes(t[..8].try_into().unwrap());
    let nsec = i64::from_le_bytes(t[8..].try_into().unwrap());
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(Errno::EINVAL);
    }
    let d = Duration::new(sec as u64, nsec as u32);
    if op == FUTEX_WAIT {
        return Ok(Some(d));
    }
    let clock = if flags & FUTEX_CLOCK_REALTIME != 0 { libc::CLOCK_REALTIME } else { libc::CLOCK_MONOTONIC };
    Ok(Some(d.saturating_sub(Duration::from_nanos(crate::host::clock_ns(clock)))))
}

fn wait(ctx: &mut Ctx<'_>, a: [u64; 6], op: u64) -> SysResult {
    let (uaddr, val) = (a[0], a[2] as u32);
    let bitset = if op == FUTEX_WAIT_BITSET { a[5] as u32 } else { u32::MAX };
    if bitset == 0 {
        return Err(Errno::EINVAL);
    }
    if op == FUTEX_WAIT && a[1] & FUTEX_CLOCK_REALTIME != 0 {
        return Err(Errno::ENOSYS);
    }
    if read_u32(ctx, uaddr)? != val {
        return Err(Errno::EAGAIN);
    }
    let limit = timeout(ctx, op, a[1], a[3])?;
    if ctx.proc.threads.multi() {
        let until = limit.map(|d| Instant::now().checked_add(d).unwrap_or_else(crate::host::far_future));
        ctx.proc.threads.wait_futex(uaddr, bitset, until);
        ctx.sched = Some(Sched::Switch);
        return Ok(0);
    }
    let Some(d) = limit else {
        ctx.stop = Some(Stop::Deadlock("futex wait with no other thread to wake it"));
        return Ok(0);
    };
    super::time::sleep_for(ctx, d)?;
    if ctx.stop.is_some() {
        return Ok(0);
    }
    Err(Errno::ETIMEDOUT)
}

/// WAKE_OP's operation on the word at `uaddr2`, and whether its comparison holds for the
/// old value.
fn wake_op(ctx: &mut Ctx<'_>, uaddr2: u64, encoded: u32) -> Result<bool, Errno> {
    let old = read_u32(ctx, uaddr2)?;
    let mut oparg = (encoded >> 12) & 0xfff;
    if (encoded >> 28) & 8 != 0 {
        oparg = 1u32.checked_shl(oparg).unwrap_or(0);
    }
    let new = match (encoded >> 28) & 7 {
        0 => oparg,
        1 => old.wrapping_add(oparg),
        2 => old | oparg,
        3 => old & !oparg,
        4 => old ^ oparg,
        _ => return Err(Errno::ENOSYS),
    };
    let (o, cmparg) = (old as i32, (encoded & 0xfff) as i32);
    let holds = match (encoded >> 24) & 15 {
        0 => o == cmparg,
        1 => o != cmparg,
        2 => o < cmparg,
        3 => o <= cmparg,
        4 => o > cmparg,
        5 => o >= cmparg,
        _ => return Err(Errno::ENOSYS),
    };
    ctx.mem.write(uaddr2, &new.to_le_bytes())?;
    Ok(holds)
}

/// futex(uaddr, op, val, timeout or val2, uaddr2, val3)
pub fn sys_futex(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (uaddr, op, val) = (a[0], a[1] & FUTEX_CMD_MASK, a[2] as u32);
    if uaddr % 4 != 0 {
        return Err(Errno::EINVAL);
    }
    match op {
        FUTEX_WAIT | FUTEX_WAIT_BITSET => wait(ctx, a, op),
        FUTEX_WAKE | FUTEX_WAKE_BITSET => {
            let bitset = if op == FUTEX_WAKE_BITSET { a[5] as u32 } else { u32::MAX };
            if bitset == 0 {
                return Err(Errno::EINVAL);
            }
            Ok(ctx.proc.threads.futex_wake(uaddr, bitset, u64::from(val)))
        }
        FUTEX_REQUEUE | FUTEX_CMP_REQUEUE => {
            if (val as i32) < 0 || (a[3] as i32) < 0 {
                return Err(Errno::EINVAL);
            }
            if op == FUTEX_CMP_REQUEUE && read_u32(ctx, uaddr)? != a[5] as u32 {
                return Err(Errno::EAGAIN);
            }
            let (woken, moved) = ctx.proc.threads.futex_requeue(uaddr, u64::from(val), a[4], u64::from(a[3] as u32));
            Ok(woken + moved)
        }
        FUTEX_WAKE_OP => {
            let holds = wake_op(ctx, a[4], a[5] as u32)?;
            let mut woken = ctx.proc.threads.futex_wake(uaddr, u32::MAX, u64::from(val));
            if holds {
                woken += ctx.proc.threads.futex_wake(a[4], u32::MAX, u64::from(a[3] as u32));
            }
            Ok(woken)
        }
        _ => Err(Errno::ENOSYS),
    }
}
