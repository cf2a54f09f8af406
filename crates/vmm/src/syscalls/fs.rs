//! File descriptors: stdin, stdout, stderr (and their duplicates), stat, poll, and the
//! path-based calls of a program that has no filesystem yet.
//!
//! The three standard streams behave like pipes (what a program gets from a process
//! supervisor): `lseek` fails with ESPIPE, `ioctl(TCGETS)` with ENOTTY, `fstat` reports a
//! FIFO.  There is no filesystem: opening a path fails with ENOENT (EROFS when creating or
//! writing), except `readlink("/proc/self/exe")`.

use std::io::Read;

use super::{Ctx, Errno, SysResult};

/// Most file descriptors a program may hold (RLIMIT_NOFILE).
pub const MAX_FDS: usize = 1024;
/// Largest single transfer; longer reads and writes are short, as Linux allows.
const MAX_TRANSFER: u64 = 16 << 20;
const CHUNK: usize = 64 << 10;
const IOV_MAX: u64 = 1024;

/// One of the standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// fd 0.
    Stdin,
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// An open descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdEntry {
    /// What it refers to.
    pub stream: Stream,
    /// FD_CLOEXEC.
    pub cloexec: bool,
    /// O_NONBLOCK / O_APPEND as set by F_SETFL.
    pub status_flags: u32,
}

/// The descriptor table.
#[derive(Debug, Clone)]
pub struct FdTable {
    fds: Vec<Option<FdEntry>>,
}

impl Default for FdTable {
    fn default() -> Self {
        let e = |stream| Some(FdEntry { stream, cloexec: false, status_flags: 0 });
        FdTable { fds: vec![e(Stream::Stdin), e(Stream::Stdout), e(Stream::Stderr)] }
    }
}

impl FdTable {
    /// The entry for `fd`, or EBADF.
    pub fn get(&self, fd: u64) -> Result<FdEntry, Errno> {
        usize::try_from(fd).ok().and_then(|i| self.fds.get(i).copied().flatten()).ok_or(Errno::EBADF)
    }

    fn put(&mut self, fd: usize, entry: FdEntry) {
        if self.fds.len() <= fd {
            self.fds.resize(fd + 1, None);
        }
        self.fds[fd] = Some(entry);
    }

    fn lowest_free(&self, from: usize) -> Result<usize, Errno> {
        (from..MAX_FDS).find(|&i| self.fds.get(i).copied().flatten().is_none()).ok_or(Errno::EMFILE)
    }
}

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

fn write_stream(ctx: &mut Ctx<'_>, stream: Stream, data: &[u8]) -> Result<(), Errno> {
    match stream {
        Stream::Stdin => Err(Errno::EBADF),
        Stream::Stdout => ctx.io.stdout.push(data, 1),
        Stream::Stderr => ctx.io.stderr.push(data, 2),
    }
}

/// Writes `len` bytes from guest address `buf` to `stream`, in chunks.
fn write_from_guest(ctx: &mut Ctx<'_>, stream: Stream, buf: u64, len: u64) -> SysResult {
    let len = len.min(MAX_TRANSFER);
    // Linux checks the whole buffer before writing anything.
    ctx.mem.map.resolve(buf, len, false).ok_or(Errno::EFAULT)?;
    let mut chunk = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        ctx.mem.read(buf + done, &mut chunk[..n])?;
        write_stream(ctx, stream, &chunk[..n])?;
        done += n as u64;
    }
    Ok(len)
}

/// Reads up to `len` bytes of stdin into guest address `buf`.
fn read_to_guest(ctx: &mut Ctx<'_>, stream: Stream, buf: u64, len: u64) -> SysResult {
    if stream != Stream::Stdin {
        return Err(Errno::EBADF);
    }
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
            ctx.mem.map.resolve(buf, len, true).ok_or(Errno::EFAULT)?;
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

/// read(fd, buf, count)
pub fn sys_read(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    read_to_guest(ctx, e.stream, a[1], a[2])
}

/// write(fd, buf, count)
pub fn sys_write(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    if e.stream == Stream::Stdin {
        return Err(Errno::EBADF);
    }
    write_from_guest(ctx, e.stream, a[1], a[2])
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

/// readv(fd, iov, iovcnt)
pub fn sys_readv(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    let mut total = 0;
    for (base, len) in iovecs(ctx, a[1], a[2])? {
        let n = read_to_guest(ctx, e.stream, base, len)?;
        total += n;
        if n < len {
            break;
        }
    }
    Ok(total)
}

/// writev(fd, iov, iovcnt)
pub fn sys_writev(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    if e.stream == Stream::Stdin {
        return Err(Errno::EBADF);
    }
    let vecs = iovecs(ctx, a[1], a[2])?;
    for &(base, len) in &vecs {
        ctx.mem.map.resolve(base, len.min(MAX_TRANSFER), false).ok_or(Errno::EFAULT)?;
    }
    let mut total = 0;
    for (base, len) in vecs {
        total += write_from_guest(ctx, e.stream, base, len)?;
    }
    Ok(total)
}

/// pread64: the standard streams are pipes, which cannot be read at an offset.
pub fn sys_pread64(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    ctx.proc.files.get(a[0])?;
    Err(Errno::ESPIPE)
}

/// pwrite64: as pread64.
pub fn sys_pwrite64(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    ctx.proc.files.get(a[0])?;
    Err(Errno::ESPIPE)
}

/// lseek: pipes cannot seek.
pub fn sys_lseek(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    ctx.proc.files.get(a[0])?;
    Err(Errno::ESPIPE)
}

/// close(fd)
pub fn sys_close(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    ctx.proc.files.get(a[0])?;
    ctx.proc.files.fds[a[0] as usize] = None;
    Ok(0)
}

/// dup(fd)
pub fn sys_dup(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    let fd = ctx.proc.files.lowest_free(0)?;
    ctx.proc.files.put(fd, FdEntry { cloexec: false, ..e });
    Ok(fd as u64)
}

fn dup_to(ctx: &mut Ctx<'_>, old: u64, new: u64, cloexec: bool) -> SysResult {
    let e = ctx.proc.files.get(old)?;
    if new >= MAX_FDS as u64 {
        return Err(Errno::EBADF);
    }
    ctx.proc.files.put(new as usize, FdEntry { cloexec, ..e });
    Ok(new)
}

/// dup2(old, new)
pub fn sys_dup2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] == a[1] {
        ctx.proc.files.get(a[0])?;
        return Ok(a[1]);
    }
    dup_to(ctx, a[0], a[1], false)
}

/// dup3(old, new, flags)
pub fn sys_dup3(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] == a[1] || a[2] & !(libc::O_CLOEXEC as u64) != 0 {
        return Err(Errno::EINVAL);
    }
    dup_to(ctx, a[0], a[1], a[2] != 0)
}

/// fcntl(fd, cmd, arg)
pub fn sys_fcntl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    let fd = a[0] as usize;
    match a[1] as i32 {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let from = usize::try_from(a[2]).ok().filter(|&f| f < MAX_FDS).ok_or(Errno::EINVAL)?;
            let new = ctx.proc.files.lowest_free(from)?;
            ctx.proc.files.put(new, FdEntry { cloexec: a[1] as i32 == libc::F_DUPFD_CLOEXEC, ..e });
            Ok(new as u64)
        }
        libc::F_GETFD => Ok(u64::from(e.cloexec)),
        libc::F_SETFD => {
            ctx.proc.files.put(fd, FdEntry { cloexec: a[2] & 1 != 0, ..e });
            Ok(0)
        }
        libc::F_GETFL => {
            let access = if e.stream == Stream::Stdin { libc::O_RDONLY } else { libc::O_WRONLY };
            Ok(access as u64 | u64::from(e.status_flags))
        }
        libc::F_SETFL => {
            let settable = (libc::O_APPEND | libc::O_NONBLOCK) as u32;
            ctx.proc.files.put(fd, FdEntry { status_flags: a[2] as u32 & settable, ..e });
            Ok(0)
        }
        libc::F_GETPIPE_SZ => Ok(65536),
        _ => Err(Errno::EINVAL),
    }
}

/// ioctl(fd, request, arg): no terminal here.
pub fn sys_ioctl(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    match a[1] {
        r if r == libc::FIOCLEX => {
            ctx.proc.files.put(a[0] as usize, FdEntry { cloexec: true, ..e });
            Ok(0)
        }
        r if r == libc::FIONCLEX => {
            ctx.proc.files.put(a[0] as usize, FdEntry { cloexec: false, ..e });
            Ok(0)
        }
        r if r == libc::FIONREAD => {
            let pending = match (&ctx.io.stdin, e.stream) {
                (Input::Bytes { data, pos }, Stream::Stdin) => (data.len() - pos) as u32,
                _ => 0,
            };
            ctx.mem.write(a[2], &pending.to_le_bytes())?;
            Ok(0)
        }
        _ => Err(Errno::ENOTTY),
    }
}

fn stat_bytes(stream: Stream) -> [u8; 144] {
    let mut b = [0u8; 144];
    let ino = match stream {
        Stream::Stdin => 1u64,
        Stream::Stdout => 2,
        Stream::Stderr => 3,
    };
    b[0..8].copy_from_slice(&0xcu64.to_le_bytes()); // st_dev: pipefs
    b[8..16].copy_from_slice(&ino.to_le_bytes());
    b[16..24].copy_from_slice(&1u64.to_le_bytes()); // st_nlink
    b[24..28].copy_from_slice(&(libc::S_IFIFO | 0o600).to_le_bytes());
    b[28..32].copy_from_slice(&1000u32.to_le_bytes());
    b[32..36].copy_from_slice(&1000u32.to_le_bytes());
    b[56..64].copy_from_slice(&4096u64.to_le_bytes()); // st_blksize
    b
}

/// fstat(fd, statbuf)
pub fn sys_fstat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let e = ctx.proc.files.get(a[0])?;
    ctx.mem.write(a[1], &stat_bytes(e.stream))?;
    Ok(0)
}

fn path_lookup_fails(ctx: &Ctx<'_>, path: u64) -> Errno {
    match ctx.mem.read_cstr(path, 4096) {
        Err(e) => e,
        Ok(p) if p.is_empty() => Errno::ENOENT,
        Ok(_) => Errno::ENOENT,
    }
}

/// newfstatat(dirfd, path, statbuf, flags)
pub fn sys_newfstatat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let path = ctx.mem.read_cstr(a[1], 4096)?;
    if path.is_empty() && a[3] & libc::AT_EMPTY_PATH as u64 != 0 {
        return sys_fstat(ctx, [a[0], a[2], 0, 0, 0, 0]);
    }
    Err(path_lookup_fails(ctx, a[1]))
}

/// statx(dirfd, path, flags, mask, statxbuf)
pub fn sys_statx(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let path = ctx.mem.read_cstr(a[1], 4096)?;
    if !(path.is_empty() && a[2] & libc::AT_EMPTY_PATH as u64 != 0) {
        return Err(path_lookup_fails(ctx, a[1]));
    }
    let e = ctx.proc.files.get(a[0])?;
    let st = stat_bytes(e.stream);
    let mut b = [0u8; 256];
    let basic = 0x7ffu32; // STATX_BASIC_STATS
    b[0..4].copy_from_slice(&basic.to_le_bytes());
    b[4..8].copy_from_slice(&4096u32.to_le_bytes()); // stx_blksize
    b[16..20].copy_from_slice(&1u32.to_le_bytes()); // stx_nlink
    b[20..24].copy_from_slice(&st[28..32]); // uid
    b[24..28].copy_from_slice(&st[32..36]); // gid
    b[28..30].copy_from_slice(&(libc::S_IFIFO as u16 | 0o600).to_le_bytes());
    b[32..40].copy_from_slice(&st[8..16]); // ino
    b[136..140].copy_from_slice(&0xcu32.to_le_bytes()); // stx_dev_minor (pipefs)
    ctx.mem.write(a[4], &b)?;
    Ok(0)
}

fn poll_fds(ctx: &mut Ctx<'_>, fds: u64, nfds: u64) -> SysResult {
    if nfds > MAX_FDS as u64 {
        return Err(Errno::EINVAL);
    }
    let mut raw = ctx.mem.read_vec(fds, nfds as usize * 8)?;
    let mut ready = 0;
    for c in raw.chunks_exact_mut(8) {
        let fd = i32::from_le_bytes(c[..4].try_into().unwrap());
        let events = i16::from_le_bytes(c[4..6].try_into().unwrap());
        let revents: i16 = if fd < 0 {
            0
        } else {
            match ctx.proc.files.get(fd as u64) {
                Err(_) => libc::POLLNVAL,
                Ok(e) => match e.stream {
                    Stream::Stdin => match &ctx.io.stdin {
                        Input::Bytes { data, pos } if *pos < data.len() => libc::POLLIN & events,
                        Input::Bytes { .. } => libc::POLLHUP,
                        Input::Inherit => libc::POLLIN & events,
                    },
                    _ => (libc::POLLOUT | libc::POLLWRNORM) & events,
                },
            }
        };
        c[6..8].copy_from_slice(&revents.to_le_bytes());
        ready += u64::from(revents != 0);
    }
    ctx.mem.write(fds, &raw)?;
    Ok(ready)
}

/// poll(fds, nfds, timeout): the standard streams are always ready (data, EOF or room).
pub fn sys_poll(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    poll_fds(ctx, a[0], a[1])
}

/// ppoll(fds, nfds, timeout, sigmask, sigsetsize)
pub fn sys_ppoll(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[2] != 0 {
        ctx.mem.read_vec(a[2], 16)?;
    }
    poll_fds(ctx, a[0], a[1])
}

fn open_path(ctx: &mut Ctx<'_>, path: u64, flags: u64) -> SysResult {
    ctx.mem.read_cstr(path, 4096)?;
    let writing = flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64 != 0;
    Err(if writing { Errno(libc::EROFS) } else { Errno::ENOENT })
}

/// open(path, flags, mode): no filesystem.
pub fn sys_open(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    open_path(ctx, a[0], a[1])
}

/// openat(dirfd, path, flags, mode): no filesystem.
pub fn sys_openat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    open_path(ctx, a[1], a[2])
}

/// access(path, mode)
pub fn sys_access(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    Err(path_lookup_fails(ctx, a[0]))
}

/// faccessat(dirfd, path, mode, flags)
pub fn sys_faccessat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    Err(path_lookup_fails(ctx, a[1]))
}

fn readlink_common(ctx: &mut Ctx<'_>, path: u64, buf: u64, size: u64) -> SysResult {
    let p = ctx.mem.read_cstr(path, 4096)?;
    if size == 0 || size > i32::MAX as u64 {
        return Err(Errno::EINVAL);
    }
    if p != b"/proc/self/exe" {
        return Err(Errno::ENOENT);
    }
    let exe = ctx.proc.identity.exe.clone();
    let n = exe.len().min(size as usize);
    ctx.mem.write(buf, &exe[..n])?;
    Ok(n as u64)
}

/// readlink(path, buf, size): only /proc/self/exe exists.
pub fn sys_readlink(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    readlink_common(ctx, a[0], a[1], a[2])
}

/// readlinkat(dirfd, path, buf, size)
pub fn sys_readlinkat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    readlink_common(ctx, a[1], a[2], a[3])
}

/// getcwd(buf, size): the program runs in "/".
pub fn sys_getcwd(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[1] < 2 {
        return Err(Errno::ERANGE);
    }
    ctx.mem.write(a[0], b"/\0")?;
    Ok(2)
}
