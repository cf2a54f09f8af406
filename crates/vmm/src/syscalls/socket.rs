//! Sockets: there is no network, but a program may talk to itself through a `socketpair`
//! (runtimes use one to wake their event loop, tokio for signals).  Each end is a description
//! over two pipe buffers ([`File::Socket`]), so reads, writes, `poll`/`epoll`, EOF and EPIPE
//! behave as for pipes; `recvfrom`/`sendto`/`recvmsg`/`sendmsg` without addresses or control
//! data are reads and writes.  `socket` and everything that needs an address is ENOSYS (no
//! network).

use super::{fs, Ctx, Errno, SysResult};
use crate::linux::fdtable::{Description, File};

const AF_UNIX: u64 = 1;
const SOCK_TYPE_MASK: u64 = 0xf;
const MSG_DONTWAIT: u64 = 0x40;
/// Flags that change nothing here: no signals (EPIPE only), no out-of-band data.
const MSG_HARMLESS: u64 = 0x4000 /* NOSIGNAL */ | 0x4_0000_0000 /* CMSG_CLOEXEC */;

/// socketpair(domain, type, protocol, sv)
pub fn sys_socketpair(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (domain, ty, protocol) = (a[0], a[1], a[2]);
    if domain != AF_UNIX {
        return Err(Errno(libc::EAFNOSUPPORT));
    }
    let flags = ty & !SOCK_TYPE_MASK;
    if flags & !((libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64) != 0 {
        return Err(Errno::EINVAL);
    }
    if ty & SOCK_TYPE_MASK != libc::SOCK_STREAM as u64 {
        // Datagram and sequenced-packet pairs keep message boundaries, which pipes do not.
        return Err(Errno::EOPNOTSUPP);
    }
    if protocol != 0 {
        return Err(Errno(libc::EPROTONOSUPPORT));
    }
    ctx.mem.check(a[3], 8, true)?;
    let fds = &mut ctx.proc.files.fds;
    if fds.open_count() + 2 > crate::linux::fdtable::MAX_FDS {
        return Err(Errno::EMFILE);
    }
    let status =
        libc::O_RDWR as u32 | if flags & libc::SOCK_NONBLOCK as u64 != 0 { libc::O_NONBLOCK as u32 } else { 0 };
    let cloexec = flags & libc::SOCK_CLOEXEC as u64 != 0;
    let (p, q) = (fds.new_pipe(), fds.new_pipe());
    let x = fds.open(Description::new(File::Socket { rx: p, tx: q }, status, None), cloexec)?;
    let y = fds.open(Description::new(File::Socket { rx: q, tx: p }, status, None), cloexec)?;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(x as i32).to_le_bytes());
    out[4..].copy_from_slice(&(y as i32).to_le_bytes());
    ctx.mem.write(a[3], &out)?;
    Ok(0)
}

/// Runs `f` on socket `fd` with `flags` checked, O_NONBLOCK set for MSG_DONTWAIT.
fn on_socket(ctx: &mut Ctx<'_>, fd: u64, flags: u64, f: impl FnOnce(&mut Ctx<'_>) -> SysResult) -> SysResult {
    if !matches!(ctx.proc.files.fds.get(fd)?.file, File::Socket { .. }) {
        return Err(Errno(libc::ENOTSOCK));
    }
    if flags & !(MSG_DONTWAIT | MSG_HARMLESS) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let before = ctx.proc.files.fds.get(fd)?.flags;
    if flags & MSG_DONTWAIT != 0 {
        ctx.proc.files.fds.get_mut(fd)?.flags |= libc::O_NONBLOCK as u32;
    }
    let r = f(ctx);
    if let Ok(d) = ctx.proc.files.fds.get_mut(fd) {
        d.flags = before;
    }
    r
}

/// recvfrom(fd, buf, len, flags, addr, addrlen): the peer has no address (addrlen 0).
pub fn sys_recvfrom(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let r = on_socket(ctx, a[0], a[3], |ctx| fs::sys_read(ctx, [a[0], a[1], a[2], 0, 0, 0]))?;
    if a[4] != 0 && a[5] != 0 {
        ctx.mem.write(a[5], &0u32.to_le_bytes())?;
    }
    Ok(r)
}

/// sendto(fd, buf, len, flags, addr, addrlen): a connected pair takes no address (EISCONN).
pub fn sys_sendto(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[4] != 0 {
        return Err(Errno(libc::EISCONN));
    }
    on_socket(ctx, a[0], a[3], |ctx| fs::sys_write(ctx, [a[0], a[1], a[2], 0, 0, 0]))
}

/// The iovec array and its length of a `struct msghdr`.
fn msghdr(ctx: &Ctx<'_>, va: u64) -> Result<(u64, u64), Errno> {
    let m = ctx.mem.read_vec(va, 56)?;
    let w = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
    Ok((w(16), w(24)))
}

/// recvmsg(fd, msg, flags): data only (no peer address, no control messages).
pub fn sys_recvmsg(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (iov, iovlen) = msghdr(ctx, a[1])?;
    let n = on_socket(ctx, a[0], a[2], |ctx| fs::sys_readv(ctx, [a[0], iov, iovlen, 0, 0, 0]))?;
    // msg_namelen, msg_controllen and msg_flags: nothing of those.
    ctx.mem.write(a[1] + 8, &0u32.to_le_bytes())?;
    ctx.mem.write(a[1] + 40, &0u64.to_le_bytes())?;
    ctx.mem.write(a[1] + 48, &0u32.to_le_bytes())?;
    Ok(n)
}

/// sendmsg(fd, msg, flags): data only; an address is EISCONN, control messages (passing
/// descriptors, credentials) EOPNOTSUPP.
pub fn sys_sendmsg(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let m = ctx.mem.read_vec(a[1], 56)?;
    if u64::from_le_bytes(m[0..8].try_into().unwrap()) != 0 {
        return Err(Errno(libc::EISCONN));
    }
    if u64::from_le_bytes(m[40..48].try_into().unwrap()) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let (iov, iovlen) = msghdr(ctx, a[1])?;
    on_socket(ctx, a[0], a[2], |ctx| fs::sys_writev(ctx, [a[0], iov, iovlen, 0, 0, 0]))
}

/// shutdown(fd, how): accepted on a socket end (EINVAL for a bad `how`); the pair stays
/// open until closed.
pub fn sys_shutdown(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if !matches!(ctx.proc.files.fds.get(a[0])?.file, File::Socket { .. }) {
        return Err(Errno(libc::ENOTSOCK));
    }
    if a[1] > 2 {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}
