//! futex with a single thread: nobody else can wake a waiter, so a wait either returns at
//! once (value changed, or a timeout that is simply slept) or would block forever, which
//! ends the run as a deadlock instead of hanging until the deadline.

use std::time::Duration;

use super::{Ctx, Errno, Stop, SysResult};

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_REQUEUE: u64 = 3;
const FUTEX_CMP_REQUEUE: u64 = 4;
const FUTEX_WAKE_OP: u64 = 5;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_CMD_MASK: u64 = 0x7f;

/// futex(uaddr, op, val, timeout, uaddr2, val3)
pub fn sys_futex(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (uaddr, op, val) = (a[0], a[1] & FUTEX_CMD_MASK, a[2] as u32);
    if uaddr % 4 != 0 {
        return Err(Errno::EINVAL);
    }
    match op {
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            if op == FUTEX_WAIT_BITSET && a[5] as u32 == 0 {
                return Err(Errno::EINVAL);
            }
            let mut b = [0u8; 4];
            ctx.mem.read(uaddr, &mut b)?;
            if u32::from_le_bytes(b) != val {
                return Err(Errno::EAGAIN);
            }
            if a[3] == 0 {
                ctx.stop = Some(Stop::Deadlock("futex wait with no other thread to wake it"));
                return Ok(0);
            }
            let t = ctx.mem.read_vec(a[3], 16)?;
            let sec = i64::from_le_bytes(t[..8].try_into().unwrap());
            let nsec = i64::from_le_bytes(t[8..].try_into().unwrap());
            if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
                return Err(Errno::EINVAL);
            }
            // FUTEX_WAIT takes a relative timeout, WAIT_BITSET an absolute one: in both cases
            // nothing can wake us, so sleeping the relative part is exact.
            let d = if op == FUTEX_WAIT {
                Duration::new(sec as u64, nsec as u32)
            } else {
                let clock = if a[1] & 256 != 0 { libc::CLOCK_REALTIME } else { libc::CLOCK_MONOTONIC };
                let now = Duration::from_nanos(crate::host::clock_ns(clock));
                Duration::new(sec as u64, nsec as u32).saturating_sub(now)
            };
            super::time::sleep_for(ctx, d)?;
            if ctx.stop.is_some() {
                return Ok(0);
            }
            Err(Errno::ETIMEDOUT)
        }
        FUTEX_WAKE | FUTEX_WAKE_BITSET | FUTEX_REQUEUE => Ok(0),
        FUTEX_CMP_REQUEUE => {
            let mut b = [0u8; 4];
            ctx.mem.read(uaddr, &mut b)?;
            if u32::from_le_bytes(b) != a[5] as u32 {
                return Err(Errno::EAGAIN);
            }
            Ok(0)
        }
        FUTEX_WAKE_OP => {
            let (uaddr2, encoded) = (a[4], a[5] as u32);
            let mut b = [0u8; 4];
            ctx.mem.read(uaddr2, &mut b)?;
            let old = u32::from_le_bytes(b);
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
            ctx.mem.write(uaddr2, &new.to_le_bytes())?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}
