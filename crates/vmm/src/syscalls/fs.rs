//! Descriptor I/O: read/write and their vector and positioned forms, lseek, close, dup,
//! fcntl, ioctl, fstat, poll, pipes and eventfds, over the state in [`crate::linux`].
//!
//! The standard streams behave like pipes (what a program gets from a process supervisor):
//! `lseek` fails with ESPIPE, `ioctl(TCGETS)` with ENOTTY, `fstat` reports a FIFO.  With one
//! thread, a read that would block forever (an empty pipe whose write end is open, an eventfd
//! at zero) ends the run as a deadlock instead of hanging; `O_NONBLOCK` gives EAGAIN.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Errno, Stop, SysResult};
use crate::linux::fdtable::{Description, File, PIPE_CAPACITY};
use crate::linux::stat::{dev, FileStat};
use crate::linux::view::Device;

use crate::linux::fdtable::MAX_FDS;

/// Largest single transfer; longer reads and writes are short, as Linux allows.
const MAX_TRANSFER: u64 = 16 << 20;
const CHUNK: usize = 64 << 10;
const IOV_MAX: u64 = 1024;

/// Where stdin comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// These bytes, then end of file.
    Bytes {
        /// Contents.
        data: Vec<u8>,
        /// Read position.
        pos: usize,
    },
    /// The host process's own stdin (CLI use).
    Inherit,
}

/// Where stdout / stderr go.
#[derive(Debug, Clone)]
pub enum Output {
    /// Collected in memory up to `limit` bytes; the rest is dropped and `truncated` set.
    Capture {
        /// What was written.
        buf: Vec<u8>,
        /// Most bytes kept.
        limit: usize,
        /// Whether bytes were dropped.
        truncated: bool,
    },
    /// Written to the host's fd 1 or 2 (CLI use).
    Inherit,
    /// Dropped.
    Discard,
}

impl Output {
    /// A capture buffer of at most `limit` bytes.
    pub fn capture(limit: usize) -> Output {
        Output::Capture { buf: Vec::new(), limit, truncated: false }
    }

    /// The captured bytes (empty for other kinds).
    pub fn captured(&self) -> &[u8] {
        match self {
            Output::Capture { buf, .. } => buf,
            _ => &[],
        }
    }

    fn push(&mut self, data: &[u8], host_fd: i32) -> Result<(), Errno> {
        match self {
            Output::Capture { buf, limit, truncated } => {
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
                *truncated |= data.len() > room;
                Ok(())
            }
            Output::Inherit => {
                // Straight to the fd, unbuffered: a prompt must show before the program
                // blocks on stdin, and nothing may wait in a buffer nobody flushes.
                crate::host::write_all(host_fd, data).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
            }
            Output::Discard => Ok(()),
        }
    }
}

/// The standard streams' contents.
#[derive(Debug, Clone)]
pub struct Io {
    /// fd 0.
    pub stdin: Input,
    /// fd 1.
    pub stdout: Output,
    /// fd 2.
    pub stderr: Output,
}

/// Reads up to `len` bytes of stdin into guest address `buf`.
fn read_stdin(ctx: &mut Ctx<'_>, buf: u64, len: u64) -> SysResult {
    let len = len.min(MAX_TRANSFER);
    match &mut ctx.io.stdin {
        Input::Bytes { data, pos } => {
            let n = (data.len() - *pos).min(len as usize);
            if n == 0 {
                return Ok(0);
            }
            let bytes = data[*pos..*pos + n].to_vec();
            ctx.mem.write(buf, &bytes)?;
            if let Input::Bytes { pos, .. } = &mut ctx.io.stdin {
                *pos += n;
            }
            Ok(n as u64)
        }
        Input::Inherit => {
            ctx.mem.check(buf, len, true)?;
            // A blocking read must not outlive the run's deadline: wait for input first.
            if let Some(deadline) = ctx.deadline {
                let ms =
                    deadline.saturating_duration_since(std::time::Instant::now()).as_millis().min(i32::MAX as u128);
                let waiting = std::time::Instant::now();
                let ready = crate::host::wait_readable(0, ms as i32);
                ctx.blocked += waiting.elapsed();
                if !ready {
                    ctx.stop = Some(super::Stop::Timeout);
                    return Ok(0);
                }
            }
            let mut tmp = vec![0u8; (len as usize).min(CHUNK)];
            let n = std::io::stdin().read(&mut tmp).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
            ctx.mem.write(buf, &tmp[..n])?;
            Ok(n as u64)
        }
    }
}

/// Bytes `[offset, offset + len)` of a file held in memory (fewer at its end).
fn slice_at(data: &[u8], offset: u64, len: u64) -> &[u8] {
    let start = (offset.min(data.len() as u64)) as usize;
    let end = (offset.saturating_add(len).min(data.len() as u64)) as usize;
    &data[start..end]
}

/// Reads from `fd` into guest `buf`: at `pos` (pread) or at and advancing the file offset.
fn read_fd(ctx: &mut Ctx<'_>, fd: u64, buf: u64, len: u64, pos: Option<u64>) -> SysResult {
    let len = len.min(MAX_TRANSFER);
    let d = ctx.proc.files.fds.get(fd)?;
    if !d.readable() {
        return Err(Errno::EBADF);
    }
    let positioned = matches!(d.file, File::Host { .. } | File::Tmp { .. } | File::Generated { .. } | File::Device(_));
    if pos.is_some() && !positioned {
        return Err(if matches!(d.file, File::Dir { .. }) { Errno(libc::EISDIR) } else { Errno::ESPIPE });
    }
    let offset = pos.unwrap_or(d.offset);
    let nonblocking = d.nonblocking();
    let n = match d.file.clone() {
        File::Stdin => return read_stdin(ctx, buf, len),
        File::Stdout | File::Stderr => return Err(Errno::EBADF),
        File::Dir { .. } => return Err(Errno(libc::EISDIR)),
        File::Host { data, .. } | File::Generated { data, .. } => {
            let bytes = slice_at(&data, offset, len);
            ctx.mem.write(buf, bytes)?;
            bytes.len() as u64
        }
        File::Tmp { ino } => {
            let data = ctx.proc.files.tmp.data(ino)?.clone();
            let bytes = slice_at(&data, offset, len);
            ctx.mem.write(buf, bytes)?;
            bytes.len() as u64
        }
        File::Device(Device::Null) => 0,
        File::Device(dv) => {
            ctx.mem.check(buf, len, true)?;
            let mut chunk = vec![0u8; CHUNK.min(len as usize)];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                if dv != Device::Zero {
                    crate::host::fill_random(&mut chunk[..n]);
                }
                ctx.mem.write(buf + done, &chunk[..n])?;
                done += n as u64;
            }
            len
        }
        File::PipeRead(p) | File::Socket { rx: p, .. } => {
            let pipe = ctx.proc.files.fds.pipes.get(&p).ok_or(Errno::EBADF)?;
            if pipe.buf.is_empty() {
                if pipe.writers == 0 || len == 0 {
                    return Ok(0);
                }
                if nonblocking {
                    return Err(Errno::EAGAIN);
                }
                return super::wait::deadlock(ctx, "read from an empty pipe that only this thread could fill");
            }
            let n = (len as usize).min(pipe.buf.len());
            ctx.mem.check(buf, n as u64, true)?;
            let pipe = ctx.proc.files.fds.pipes.get_mut(&p).ok_or(Errno::EBADF)?;
            let bytes: Vec<u8> = pipe.buf.drain(..n).collect();
            ctx.mem.write(buf, &bytes)?;
            n as u64
        }
        File::PipeWrite(_) => return Err(Errno::EBADF),
        File::Epoll(_) => return Err(Errno::EINVAL),
        File::TimerFd { .. } => return super::timerfd::read(ctx, fd, buf, len, nonblocking),
        File::EventFd { count, semaphore } => {
            if len < 8 {
                return Err(Errno::EINVAL);
            }
            if count == 0 {
                if nonblocking {
                    return Err(Errno::EAGAIN);
                }
                return super::wait::deadlock(ctx, "read from an eventfd at zero that only this thread could signal");
            }
            let (value, left) = if semaphore { (1, count - 1) } else { (count, 0) };
            ctx.mem.write(buf, &value.to_le_bytes())?;
            if let File::EventFd { count, .. } = &mut ctx.proc.files.fds.get_mut(fd)?.file {
                *count = left;
            }
            return Ok(8);
        }
    };
    if pos.is_none() && positioned {
        ctx.proc.files.fds.get_mut(fd)?.offset = offset + n;
    }
    Ok(n)
}

/// Writes `len` bytes from guest `buf` to `fd`: at `pos` (pwrite) or at the file offset.
fn write_fd(ctx: &mut Ctx<'_>, fd: u64, buf: u64, len: u64, pos: Option<u64>) -> SysResult {
    let len = len.min(MAX_TRANSFER);
    let d = ctx.proc.files.fds.get(fd)?;
    if !d.writable() {
        return Err(Errno::EBADF);
    }
    let (file, append, offset, nonblocking) =
        (d.file.clone(), d.flags & libc::O_APPEND as u32 != 0, d.offset, d.nonblocking());
    if pos.is_some() && !matches!(file, File::Tmp { .. } | File::Device(_)) {
        return Err(Errno::ESPIPE);
    }
    // Linux checks the whole buffer before writing anything.
    ctx.mem.check(buf, len, false)?;
    match file {
        File::Stdout | File::Stderr => {
            let mut chunk = vec![0u8; CHUNK.min(len as usize)];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                ctx.mem.read(buf + done, &mut chunk[..n])?;
                match file {
                    File::Stdout => ctx.io.stdout.push(&chunk[..n], 1)?,
                    _ => ctx.io.stderr.push(&chunk[..n], 2)?,
                }
                done += n as u64;
            }
            Ok(len)
        }
        File::Device(_) => Ok(len),
        File::Tmp { ino } => {
            let bytes = ctx.mem.read_vec(buf, len as usize)?;
            let at = match pos {
                Some(p) => p,
                None if append => ctx.proc.files.tmp.data(ino)?.len() as u64,
                None => offset,
            };
            let len_now = ctx.proc.files.tmp.data(ino)?.len() as u64;
            tmp_room(ctx, (at + len).saturating_sub(len_now))?;
            ctx.proc.files.tmp.write(ino, at, &bytes)?;
            if pos.is_none() {
                ctx.proc.files.fds.get_mut(fd)?.offset = at + len;
            }
            Ok(len)
        }
        File::PipeWrite(p) | File::Socket { tx: p, .. } => {
            let pipe = ctx.proc.files.fds.pipes.get(&p).ok_or(Errno::EBADF)?;
            if pipe.readers == 0 {
                return Err(Errno::EPIPE);
            }
            let room = PIPE_CAPACITY - pipe.buf.len();
            if room == 0 && len > 0 {
                if nonblocking {
                    return Err(Errno::EAGAIN);
                }
                return super::wait::deadlock(ctx, "write to a full pipe that only this thread could drain");
            }
            let n = (len as usize).min(room);
            let bytes = ctx.mem.read_vec(buf, n)?;
            ctx.proc.files.fds.pipes.get_mut(&p).ok_or(Errno::EBADF)?.buf.extend(bytes);
            Ok(n as u64)
        }
        File::EventFd { count, .. } => {
            if len < 8 {
                return Err(Errno::EINVAL);
            }
            let v = ctx.mem.read_u64(buf)?;
            if v == u64::MAX {
                return Err(Errno::EINVAL);
            }
            let Some(total) = count.checked_add(v).filter(|&t| t < u64::MAX) else {
                return if nonblocking {
                    Err(Errno::EAGAIN)
                } else {
                    super::wait::deadlock(ctx, "eventfd counter full")
                };
            };
            if let File::EventFd { count, .. } = &mut ctx.proc.files.fds.get_mut(fd)?.file {
                *count = total;
            }
            Ok(8)
        }
        _ => Err(Errno::EBADF),
    }
}

/// read(fd, buf, count)
pub fn sys_read(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    read_fd(ctx, a[0], a[1], a[2], None)
}

/// write(fd, buf, count)
pub fn sys_write(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    write_fd(ctx, a[0], a[1], a[2], None)
}

fn iovecs(ctx: &Ctx<'_>, iov: u64, count: u64) -> Result<Vec<(u64, u64)>, Errno> {
    if count > IOV_MAX {
        return Err(Errno::EINVAL);
    }
    let raw = ctx.mem.read_vec(iov, count as usize * 16)?;
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(count as usize);
    for c in raw.chunks_exact(16) {
        let base = u64::from_le_bytes(c[..8].try_into().unwrap());
        let len = u64::from_le_bytes(c[8..].try_into().unwrap());
        total = total.checked_add(len).filter(|&t| t <= isize::MAX as u64).ok_or(Errno::EINVAL)?;
        out.push((base, len));
    }
    Ok(out)
}

fn readv_at(ctx: &mut Ctx<'_>, fd: u64, iov: u64, count: u64, pos: Option<u64>) -> SysResult {
    ctx.proc.files.fds.get(fd)?;
    let mut total = 0;
    for (base, len) in iovecs(ctx, iov, count)? {
        let n = match read_fd(ctx, fd, base, len, pos.map(|p| p + total)) {
            Ok(n) => n,
            Err(_) if total > 0 && ctx.stop.take().is_some_and(|s| matches!(s, Stop::Deadlock(_))) => break,
            Err(e) if total > 0 && e == Errno::EAGAIN => break,
            Err(e) => return Err(e),
        };
        total += n;
        if n < len {
            break;
        }
    }
    Ok(total)
}

fn writev_at(ctx: &mut Ctx<'_>, fd: u64, iov: u64, count: u64, pos: Option<u64>) -> SysResult {
    ctx.proc.files.fds.get(fd)?;
    let vecs = iovecs(ctx, iov, count)?;
    for &(base, len) in &vecs {
        ctx.mem.check(base, len.min(MAX_TRANSFER), false)?;
    }
    let mut total = 0;
    for (base, len) in vecs {
        let n = write_fd(ctx, fd, base, len, pos.map(|p| p + total))?;
        total += n;
        if n < len {
            break;
        }
    }
    Ok(total)
}

/// readv(fd, iov, iovcnt)
pub fn sys_readv(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    readv_at(ctx, a[0], a[1], a[2], None)
}

/// writev(fd, iov, iovcnt)
pub fn sys_writev(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    writev_at(ctx, a[0], a[1], a[2], None)
}

fn position(p: u64) -> Result<u64, Errno> {
    if (p as i64) < 0 {
        return Err(Errno::EINVAL);
    }
    Ok(p)
}

/// pread64(fd, buf, count, offset)
pub fn sys_pread64(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    read_fd(ctx, a[0], a[1], a[2], Some(position(a[3])?))
}

/// pwrite64(fd, buf, count, offset)
pub fn sys_pwrite64(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    write_fd(ctx, a[0], a[1], a[2], Some(position(a[3])?))
}

/// preadv(fd, iov, iovcnt, offset) (and preadv2 with flags 0)
pub fn sys_preadv(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    readv_at(ctx, a[0], a[1], a[2], Some(position(a[3])?))
}

/// pwritev(fd, iov, iovcnt, offset)
pub fn sys_pwritev(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    writev_at(ctx, a[0], a[1], a[2], Some(position(a[3])?))
}

/// Size of a file held in memory, for lseek and FIONREAD.
fn file_size(ctx: &Ctx<'_>, file: &File) -> Option<u64> {
    match file {
        File::Host { data, .. } | File::Generated { data, .. } => Some(data.len() as u64),
        File::Tmp { ino } => ctx.proc.files.tmp.data(*ino).ok().map(|d| d.len() as u64),
        File::Dir { entries, .. } => Some(entries.len() as u64),
        File::Device(_) => Some(0),
        _ => None,
    }
}

/// lseek(fd, offset, whence)
pub fn sys_lseek(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = ctx.proc.files.fds.get(a[0])?;
    let size = file_size(ctx, &d.file).ok_or(Errno::ESPIPE)?;
    if matches!(d.file, File::Device(_)) {
        return Ok(0);
    }
    let off = a[1] as i64;
    let new = match a[2] as i32 {
        libc::SEEK_SET => Some(off),
        libc::SEEK_CUR => (d.offset as i64).checked_add(off),
        libc::SEEK_END => (size as i64).checked_add(off),
        libc::SEEK_DATA if off >= 0 && (off as u64) < size => Some(off),
        libc::SEEK_HOLE if off >= 0 && (off as u64) < size => Some(size as i64),
        libc::SEEK_DATA | libc::SEEK_HOLE => return Err(Errno(libc::ENXIO)),
        _ => return Err(Errno::EINVAL),
    };
    let new = new.filter(|&n| n >= 0).ok_or(Errno::EINVAL)? as u64;
    ctx.proc.files.fds.get_mut(a[0])?.offset = new;
    Ok(new)
}

/// What closing the last descriptor of a description releases.
fn released(ctx: &mut Ctx<'_>, file: Option<File>) {
    if let Some(File::Tmp { ino }) = file {
        ctx.proc.files.tmp.closed(ino);
    }
}

/// close(fd)
pub fn sys_close(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let f = ctx.proc.files.fds.close(a[0])?;
    released(ctx, f);
    Ok(0)
}

/// close_range(first, last, flags): CLOSE_RANGE_CLOEXEC or closing.
pub fn sys_close_range(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const CLOEXEC: u64 = 4;
    if a[2] & !(CLOEXEC | 2) != 0 || a[0] > a[1] {
        return Err(Errno::EINVAL);
    }
    for fd in a[0]..=a[1].min(MAX_FDS as u64 - 1) {
        if ctx.proc.files.fds.fd(fd).is_err() {
            continue;
        }
        if a[2] & CLOEXEC != 0 {
            ctx.proc.files.fds.set_cloexec(fd, true)?;
        } else {
            sys_close(ctx, [fd, 0, 0, 0, 0, 0])?;
        }
    }
    Ok(0)
}

/// dup(fd)
pub fn sys_dup(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    Ok(ctx.proc.files.fds.dup(a[0], 0, false)? as u64)
}

/// dup2(old, new)
pub fn sys_dup2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] == a[1] {
        ctx.proc.files.fds.get(a[0])?;
        return Ok(a[1]);
    }
    let f = ctx.proc.files.fds.dup_to(a[0], a[1], false)?;
    released(ctx, f);
    Ok(a[1])
}

/// dup3(old, new, flags)
pub fn sys_dup3(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] == a[1] || a[2] & !(libc::O_CLOEXEC as u64) != 0 {
        return Err(Errno::EINVAL);
    }
    let f = ctx.proc.files.fds.dup_to(a[0], a[1], a[2] != 0)?;
    released(ctx, f);
    Ok(a[1])
}

/// fcntl(fd, cmd, arg)
pub fn sys_fcntl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let fds = &mut ctx.proc.files.fds;
    let f = fds.fd(a[0])?;
    match a[1] as i32 {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let from = usize::try_from(a[2]).ok().filter(|&f| f < MAX_FDS).ok_or(Errno::EINVAL)?;
            Ok(fds.dup(a[0], from, a[1] as i32 == libc::F_DUPFD_CLOEXEC)? as u64)
        }
        libc::F_GETFD => Ok(u64::from(f.cloexec)),
        libc::F_SETFD => {
            fds.set_cloexec(a[0], a[2] & 1 != 0)?;
            Ok(0)
        }
        libc::F_GETFL => Ok(u64::from(fds.get(a[0])?.flags)),
        libc::F_SETFL => {
            let settable = (libc::O_APPEND | libc::O_NONBLOCK) as u32;
            let d = fds.get_mut(a[0])?;
            d.flags = (d.flags & !settable) | (a[2] as u32 & settable);
            Ok(0)
        }
        libc::F_GETPIPE_SZ => match fds.get(a[0])?.file {
            File::PipeRead(_) | File::PipeWrite(_) | File::Stdin | File::Stdout | File::Stderr => {
                Ok(PIPE_CAPACITY as u64)
            }
            _ => Err(Errno::EBADF),
        },
        libc::F_GETLK | libc::F_SETLK | libc::F_SETLKW | libc::F_OFD_GETLK | libc::F_OFD_SETLK | libc::F_OFD_SETLKW => {
            // One process: every lock is granted (F_GETLK reports F_UNLCK).
            if matches!(a[1] as i32, libc::F_GETLK | libc::F_OFD_GETLK) {
                ctx.mem.write(a[2], &(libc::F_UNLCK as u16).to_le_bytes())?;
            }
            Ok(0)
        }
        libc::F_ADD_SEALS | libc::F_GET_SEALS => Err(Errno::EINVAL),
        _ => Err(Errno::EINVAL),
    }
}

/// ioctl(fd, request, arg): FIONREAD, FIONBIO, FIOCLEX/FIONCLEX; no terminal (ENOTTY).
pub fn sys_ioctl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = ctx.proc.files.fds.get(a[0])?.clone();
    match a[1] {
        r if r == libc::FIOCLEX || r == libc::FIONCLEX => {
            ctx.proc.files.fds.set_cloexec(a[0], r == libc::FIOCLEX)?;
            Ok(0)
        }
        r if r == libc::FIONBIO => {
            let on = ctx.mem.read_vec(a[2], 4)? != [0, 0, 0, 0];
            let d = ctx.proc.files.fds.get_mut(a[0])?;
            if on {
                d.flags |= libc::O_NONBLOCK as u32;
            } else {
                d.flags &= !(libc::O_NONBLOCK as u32);
            }
            Ok(0)
        }
        r if r == libc::FIONREAD => {
            let pending = match &d.file {
                File::Stdin => match &ctx.io.stdin {
                    Input::Bytes { data, pos } => (data.len() - pos) as u64,
                    Input::Inherit => 0,
                },
                File::PipeRead(p) | File::Socket { rx: p, .. } => {
                    ctx.proc.files.fds.pipes.get(p).map_or(0, |p| p.buf.len() as u64)
                }
                File::Dir { .. } => return Err(Errno::ENOTTY),
                f => file_size(ctx, f).ok_or(Errno::ENOTTY)?.saturating_sub(d.offset),
            };
            ctx.mem.write(a[2], &(pending.min(i32::MAX as u64) as u32).to_le_bytes())?;
            Ok(0)
        }
        _ => Err(Errno::ENOTTY),
    }
}

/// Metadata of an open description.
pub fn describe(ctx: &Ctx<'_>, d: &Description) -> Result<FileStat, Errno> {
    Ok(match &d.file {
        File::Stdin | File::Stdout | File::Stderr => {
            let ino = match d.file {
                File::Stdin => 1,
                File::Stdout => 2,
                _ => 3,
            };
            let mut st = FileStat::synthetic(dev::PIPEFS, ino, libc::S_IFIFO | 0o600, 0);
            (st.uid, st.gid) = (1000, 1000);
            st
        }
        File::Host { stat, .. } | File::Dir { stat, .. } | File::Generated { stat, .. } => *stat,
        File::Tmp { ino } => ctx.proc.files.tmp.stat(*ino).ok_or(Errno::EBADF)?,
        File::Device(dv) => dv.stat(),
        File::PipeRead(p) | File::PipeWrite(p) => {
            let mut st = FileStat::synthetic(dev::PIPEFS, 0x1000 + u64::from(*p), libc::S_IFIFO | 0o600, 0);
            (st.uid, st.gid) = (1000, 1000);
            st
        }
        File::Socket { rx, .. } => {
            let mut st = FileStat::synthetic(dev::PIPEFS - 2, 0x3000 + u64::from(*rx), libc::S_IFSOCK | 0o777, 0);
            (st.uid, st.gid) = (1000, 1000);
            st
        }
        File::EventFd { .. } | File::Epoll(_) | File::TimerFd { .. } => {
            let mut st = FileStat::synthetic(dev::PIPEFS - 1, 0x2000, 0o600, 0);
            (st.uid, st.gid) = (1000, 1000);
            st
        }
    })
}

/// fstat(fd, statbuf)
pub fn sys_fstat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = ctx.proc.files.fds.get(a[0])?.clone();
    let st = describe(ctx, &d)?;
    ctx.mem.write(a[1], &st.to_stat())?;
    Ok(0)
}

/// The `poll` events of descriptor `fd` among `events` (POLLHUP, POLLERR always), and
/// whether something outside the program could change them (inherited stdin); `None` for a
/// descriptor that is not open.
pub fn poll_events(ctx: &Ctx<'_>, fd: u64, events: i16) -> Option<(i16, bool)> {
    let (pollin, pollout) = (libc::POLLIN | libc::POLLRDNORM, libc::POLLOUT | libc::POLLWRNORM);
    let file = ctx.proc.files.fds.get(fd).ok()?.file.clone();
    let mut could_change = false;
    let revents = match file {
        File::Stdin => match &ctx.io.stdin {
            Input::Bytes { data, pos } if *pos < data.len() => pollin & events,
            Input::Bytes { .. } => libc::POLLHUP,
            Input::Inherit => {
                could_change = true;
                pollin & events
            }
        },
        File::PipeRead(p) => match ctx.proc.files.fds.pipes.get(&p) {
            Some(pipe) if !pipe.buf.is_empty() => pollin & events,
            Some(pipe) if pipe.writers == 0 => libc::POLLHUP,
            _ => 0,
        },
        File::PipeWrite(p) => match ctx.proc.files.fds.pipes.get(&p) {
            Some(pipe) if pipe.readers == 0 => libc::POLLERR,
            Some(pipe) if pipe.buf.len() < PIPE_CAPACITY => pollout & events,
            _ => 0,
        },
        File::EventFd { count, .. } => {
            (if count > 0 { pollin & events } else { 0 }) | (if count < u64::MAX - 1 { pollout & events } else { 0 })
        }
        File::Epoll(_) => 0,
        File::Socket { rx, tx } => {
            let pipes = &ctx.proc.files.fds.pipes;
            let (r, w) = (pipes.get(&rx), pipes.get(&tx));
            let mut ev = 0;
            if r.is_some_and(|p| !p.buf.is_empty() || p.writers == 0) {
                ev |= pollin & events;
            }
            if w.is_some_and(|p| p.readers > 0 && p.buf.len() < PIPE_CAPACITY) {
                ev |= pollout & events;
            }
            if r.is_some_and(|p| p.writers == 0) {
                ev |= libc::POLLHUP | (libc::POLLRDHUP & events);
            }
            ev
        }
        File::TimerFd { clock, next, ticks, .. } => {
            if super::timerfd::ready(clock, next, ticks) {
                pollin & events
            } else {
                0
            }
        }
        _ => (pollin | pollout) & events,
    };
    Some((revents, could_change))
}

/// How long until the first of the timerfds among `fds` has an expiry to read (a wait on
/// them must look again then).
pub fn next_timer(ctx: &Ctx<'_>, fds: &[u64]) -> Option<Duration> {
    fds.iter()
        .filter_map(|&fd| match ctx.proc.files.fds.get(fd).ok()?.file {
            File::TimerFd { clock, next, ticks, .. } => super::timerfd::until_expiry(clock, next, ticks),
            _ => None,
        })
        .min()
}

fn poll_fds(ctx: &mut Ctx<'_>, fds: u64, nfds: u64, timeout: Option<Duration>) -> SysResult {
    if nfds > MAX_FDS as u64 {
        return Err(Errno::EINVAL);
    }
    let mut raw = ctx.mem.read_vec(fds, nfds as usize * 8)?;
    let mut ready = 0;
    let mut could_change = false;
    for c in raw.chunks_exact_mut(8) {
        let fd = i32::from_le_bytes(c[..4].try_into().unwrap());
        let events = i16::from_le_bytes(c[4..6].try_into().unwrap());
        let revents: i16 = if fd < 0 {
            0
        } else {
            match poll_events(ctx, fd as u64, events) {
                None => libc::POLLNVAL,
                Some((r, changes)) => {
                    could_change |= changes;
                    r
                }
            }
        };
        c[6..8].copy_from_slice(&revents.to_le_bytes());
        ready += u64::from(revents != 0);
    }
    if ready == 0 && !could_change && timeout != Some(Duration::ZERO) && (timeout.is_none() || ctx.proc.threads.multi())
    {
        let fds: Vec<u64> = raw
            .chunks_exact(8)
            .filter_map(|c| u64::try_from(i32::from_le_bytes(c[..4].try_into().unwrap())).ok())
            .collect();
        let timer = next_timer(ctx, &fds);
        return super::wait::wait_for_others(
            ctx,
            timeout,
            timer,
            "poll with no timeout on descriptors only this thread could make ready",
        );
    }
    ctx.mem.write(fds, &raw)?;
    Ok(ready)
}

/// poll(fds, nfds, timeout): readiness now; a finite timeout with nothing ready returns 0 at
/// once (nothing else can make a descriptor ready), an infinite one is a deadlock.
pub fn sys_poll(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let ms = a[2] as i32;
    poll_fds(ctx, a[0], a[1], (ms >= 0).then(|| Duration::from_millis(ms as u64)))
}

/// ppoll(fds, nfds, timeout, sigmask, sigsetsize)
pub fn sys_ppoll(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let timeout = if a[2] != 0 {
        let t = ctx.mem.read_vec(a[2], 16)?;
        let (sec, nsec) =
            (i64::from_le_bytes(t[..8].try_into().unwrap()), i64::from_le_bytes(t[8..].try_into().unwrap()));
        if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
            return Err(Errno::EINVAL);
        }
        Some(Duration::new(sec as u64, nsec as u32))
    } else {
        None
    };
    poll_fds(ctx, a[0], a[1], timeout)
}

/// pipe2(fds, flags)
pub fn sys_pipe2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let flags = a[1] as i32;
    if flags & !(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_DIRECT) != 0 {
        return Err(Errno::EINVAL);
    }
    ctx.mem.check(a[0], 8, true)?;
    let fds = &mut ctx.proc.files.fds;
    if fds.open_count() + 2 > MAX_FDS {
        return Err(Errno::EMFILE);
    }
    let status = (flags & libc::O_NONBLOCK) as u32;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let p = fds.new_pipe();
    let r = fds.open(Description::new(File::PipeRead(p), libc::O_RDONLY as u32 | status, None), cloexec)?;
    let w = fds.open(Description::new(File::PipeWrite(p), libc::O_WRONLY as u32 | status, None), cloexec)?;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(r as i32).to_le_bytes());
    out[4..].copy_from_slice(&(w as i32).to_le_bytes());
    ctx.mem.write(a[0], &out)?;
    Ok(0)
}

/// pipe(fds)
pub fn sys_pipe(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    sys_pipe2(ctx, [a[0], 0, 0, 0, 0, 0])
}

/// eventfd2(initval, flags)
pub fn sys_eventfd2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    const EFD_SEMAPHORE: i32 = 1;
    let flags = a[1] as i32;
    if flags & !(libc::O_CLOEXEC | libc::O_NONBLOCK | EFD_SEMAPHORE) != 0 {
        return Err(Errno::EINVAL);
    }
    let file = File::EventFd { count: u64::from(a[0] as u32), semaphore: flags & EFD_SEMAPHORE != 0 };
    let status = libc::O_RDWR as u32 | (flags & libc::O_NONBLOCK) as u32;
    Ok(ctx.proc.files.fds.open(Description::new(file, status, None), flags & libc::O_CLOEXEC != 0)? as u64)
}

/// eventfd(initval)
pub fn sys_eventfd(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    sys_eventfd2(ctx, [a[0], 0, 0, 0, 0, 0])
}

/// ENOSPC unless /tmp can grow by `bytes` within the program's memory: /tmp's contents count
/// against the same budget as brk and mmap (its own limit is checked by the tmpfs).
fn tmp_room(ctx: &mut Ctx<'_>, bytes: u64) -> Result<(), Errno> {
    let tmp = ctx.proc.files.tmp.used() + bytes;
    let pages = ctx.mem.pages();
    if tmp.div_ceil(4096) + pages.used() > pages.capacity() {
        return Err(Errno::ENOSPC);
    }
    Ok(())
}

/// ftruncate(fd, length): files in /tmp opened for writing.
pub fn sys_ftruncate(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = ctx.proc.files.fds.get(a[0])?;
    let len = position(a[1])?;
    match d.file {
        File::Tmp { ino } if d.writable() => {
            let len_now = ctx.proc.files.tmp.data(ino)?.len() as u64;
            tmp_room(ctx, len.saturating_sub(len_now))?;
            ctx.proc.files.tmp.truncate(ino, len)?;
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

/// fsync / fdatasync / syncfs (fd): nothing to flush.
pub fn sys_fsync(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    ctx.proc.files.fds.get(a[0])?;
    Ok(0)
}

/// The bytes an `mmap` of `fd` at `offset` maps (`len` at most), checked as Linux does:
/// EACCES for a write-shared mapping of a read-only description, ENODEV for what cannot be
/// mapped (pipes, directories, eventfds; writable shared mappings of /tmp files).
pub fn mapped_bytes(ctx: &Ctx<'_>, fd: u64, offset: u64, len: u64, shared_write: bool) -> Result<Arc<[u8]>, Errno> {
    let d = ctx.proc.files.fds.get(fd)?;
    if !d.readable() || (shared_write && !d.writable()) {
        return Err(Errno::EACCES);
    }
    match &d.file {
        File::Host { data, .. } | File::Generated { data, .. } => Ok(Arc::from(slice_at(data, offset, len))),
        File::Tmp { .. } if shared_write => Err(Errno::ENODEV),
        File::Tmp { ino } => Ok(Arc::from(slice_at(ctx.proc.files.tmp.data(*ino)?, offset, len))),
        File::Device(Device::Zero) => Ok(Arc::from(&[][..])),
        _ => Err(Errno::ENODEV),
    }
}
