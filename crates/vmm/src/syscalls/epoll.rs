//! epoll: an interest list over the program's descriptors, readiness computed when asked.
//!
//! An epoll instance is a description ([`File::Epoll`]) holding its interest list (descriptor
//! → events, data), so `dup`, `close` and a reset treat it like any other file.  Readiness is
//! the one `poll` uses ([`super::fs::poll_events`]).  Every registration is level-triggered:
//! `EPOLLET` is accepted and reports like level-triggered (a descriptor that stays ready is
//! reported again; programs that drain until EAGAIN, as edge-triggered users must, see no
//! difference); `EPOLLONESHOT` disables a registration after it was reported, as on Linux.
//!
//! Waiting: with nothing ready, a zero timeout returns 0; with other threads the caller waits
//! until another thread has done something (then looks again) or the timeout passes (0);
//! alone, a finite timeout is slept and an infinite one is a deadlock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::fs::poll_events;
use super::{Ctx, Errno, SysResult};
use crate::linux::fdtable::{Description, File, MAX_FDS};

const EPOLL_CTL_ADD: u64 = 1;
const EPOLL_CTL_DEL: u64 = 2;
const EPOLL_CTL_MOD: u64 = 3;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLLEXCLUSIVE: u32 = 1 << 28;
const EPOLLWAKEUP: u32 = 1 << 29;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLET: u32 = 1 << 31;
/// Most events one `epoll_wait` may ask for (Linux: INT_MAX / sizeof(struct epoll_event)).
const MAX_EVENTS: u64 = (i32::MAX / 12) as u64;

/// One registration: the events asked for and the caller's data.
pub type Interest = BTreeMap<u64, (u32, u64)>;

/// epoll_create1(flags)
pub fn sys_epoll_create1(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let flags = a[0] as i32;
    if flags & !libc::EPOLL_CLOEXEC != 0 {
        return Err(Errno::EINVAL);
    }
    let d = Description::new(File::Epoll(Interest::new()), libc::O_RDWR as u32, None);
    Ok(ctx.proc.files.fds.open(d, flags & libc::EPOLL_CLOEXEC != 0)? as u64)
}

/// epoll_create(size)
pub fn sys_epoll_create(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if (a[0] as i32) <= 0 {
        return Err(Errno::EINVAL);
    }
    sys_epoll_create1(ctx, [0; 6])
}

/// epoll_ctl(epfd, op, fd, event)
pub fn sys_epoll_ctl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (epfd, op, fd) = (a[0], a[1], a[2]);
    let event = if op == EPOLL_CTL_DEL {
        None
    } else {
        let b = ctx.mem.read_vec(a[3], 12)?;
        Some((u32::from_le_bytes(b[..4].try_into().unwrap()), u64::from_le_bytes(b[4..].try_into().unwrap())))
    };
    let target = ctx.proc.files.fds.get(fd)?;
    if matches!(target.file, File::Host { .. } | File::Dir { .. } | File::Tmp { .. } | File::Generated { .. }) {
        // Regular files and directories cannot be polled by epoll.
        return Err(Errno::EPERM);
    }
    if epfd == fd {
        return Err(Errno::EINVAL);
    }
    let File::Epoll(interest) = &mut ctx.proc.files.fds.get_mut(epfd)?.file else {
        return Err(Errno::EINVAL);
    };
    match (op, event) {
        (EPOLL_CTL_ADD, Some((ev, data))) => {
            if interest.contains_key(&fd) {
                return Err(Errno::EEXIST);
            }
            if interest.len() >= MAX_FDS {
                return Err(Errno::ENOSPC);
            }
            interest.insert(fd, (ev & !EPOLLEXCLUSIVE & !EPOLLWAKEUP, data));
        }
        (EPOLL_CTL_MOD, Some((ev, data))) => {
            if ev & EPOLLEXCLUSIVE != 0 {
                return Err(Errno::EINVAL);
            }
            *interest.get_mut(&fd).ok_or(Errno::ENOENT)? = (ev & !EPOLLWAKEUP, data);
        }
        (EPOLL_CTL_DEL, None) => {
            interest.remove(&fd).ok_or(Errno::ENOENT)?;
        }
        _ => return Err(Errno::EINVAL),
    }
    Ok(0)
}

/// The ready registrations of `epfd`, at most `max`: (events, data) each.  One-shot ones that
/// are reported are disabled.
fn ready(ctx: &mut Ctx<'_>, epfd: u64, max: usize) -> Result<Vec<(u32, u64)>, Errno> {
    let File::Epoll(interest) = &ctx.proc.files.fds.get(epfd)?.file else {
        return Err(Errno::EINVAL);
    };
    let interest = interest.clone();
    let mut out = Vec::new();
    let mut fired = Vec::new();
    for (&fd, &(events, data)) in &interest {
        if out.len() >= max {
            break;
        }
        let wanted = events & !(EPOLLET | EPOLLONESHOT);
        if wanted == 0 && events & EPOLLONESHOT != 0 {
            continue; // disabled until EPOLL_CTL_MOD
        }
        // A closed descriptor leaves the list (Linux drops it with its last reference).
        let Some((revents, _)) = poll_events(ctx, fd, (wanted & 0xffff) as i16) else {
            fired.push((fd, None));
            continue;
        };
        let revents = revents as u16 as u32 & (wanted | EPOLLERR | EPOLLHUP);
        if revents != 0 {
            out.push((revents, data));
            if events & EPOLLONESHOT != 0 {
                fired.push((fd, Some((EPOLLONESHOT, data))));
            }
        }
    }
    if let Ok(Description { file: File::Epoll(interest), .. }) = ctx.proc.files.fds.get_mut(epfd) {
        for (fd, new) in fired {
            match new {
                Some(v) => {
                    interest.insert(fd, v);
                }
                None => {
                    interest.remove(&fd);
                }
            }
        }
    }
    Ok(out)
}

/// epoll_wait(epfd, events, maxevents, timeout_ms)
pub fn sys_epoll_wait(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (epfd, events, max, timeout) = (a[0], a[1], a[2] as i32, a[3] as i32);
    if max <= 0 || max as u64 > MAX_EVENTS {
        return Err(Errno::EINVAL);
    }
    ctx.mem.check(events, max as u64 * 12, true)?;
    let found = ready(ctx, epfd, max as usize)?;
    if !found.is_empty() || timeout == 0 {
        let mut buf = Vec::with_capacity(found.len() * 12);
        for (ev, data) in &found {
            buf.extend_from_slice(&ev.to_le_bytes());
            buf.extend_from_slice(&data.to_le_bytes());
        }
        ctx.mem.write(events, &buf)?;
        return Ok(found.len() as u64);
    }
    let limit = (timeout > 0).then(|| Duration::from_millis(timeout as u64));
    let fds: Vec<u64> = match &ctx.proc.files.fds.get(epfd)?.file {
        File::Epoll(interest) => interest.keys().copied().collect(),
        _ => Vec::new(),
    };
    let timer = super::fs::next_timer(ctx, &fds);
    super::wait::wait_for_others(
        ctx,
        limit,
        timer,
        "epoll_wait with no timeout on descriptors only this thread could make ready",
    )
}

/// epoll_pwait(epfd, events, maxevents, timeout_ms, sigmask, sigsetsize): the mask is only
/// checked (no signal is delivered asynchronously).
pub fn sys_epoll_pwait(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[4] != 0 {
        if a[5] != 8 {
            return Err(Errno::EINVAL);
        }
        ctx.mem.read_vec(a[4], 8)?;
    }
    sys_epoll_wait(ctx, a)
}
