//! Calls that take a path: open, stat, access, readlink, getdents, the working directory,
//! and the calls that change `/tmp` (mkdir, unlink, rmdir, rename).
//!
//! Every path is resolved by [`crate::linux::view::View::resolve`]; this module turns the
//! result into what Linux answers: EROFS for writing or creating anywhere but `/tmp`, EISDIR,
//! ENOTDIR, ELOOP with `O_NOFOLLOW`, EEXIST with `O_EXCL`.

use std::sync::Arc;

use super::{Ctx, Errno, SysResult};
use crate::linux::fdtable::{Description, File};
use crate::linux::hostfs::{self, DirEntry};
use crate::linux::synthetic;
use crate::linux::view::{self, Generated, Node, PATH_MAX};

const AT_FDCWD: u64 = libc::AT_FDCWD as u32 as u64;
/// Most bytes of distinct host files one process may hold open (they live in host memory).
const MAX_HELD_BYTES: u64 = 2 << 30;

/// Bytes of distinct host files the process holds open, not counting `new` if it is one of them.
fn held_host_bytes(ctx: &Ctx<'_>, new: &Arc<[u8]>) -> u64 {
    let mut seen: Vec<*const u8> = vec![new.as_ptr()];
    let mut total = 0;
    for d in ctx.proc.files.fds.descriptions() {
        if let File::Host { data, .. } = &d.file {
            if !seen.contains(&data.as_ptr()) {
                seen.push(data.as_ptr());
                total += data.len() as u64;
            }
        }
    }
    total
}

fn read_path(ctx: &Ctx<'_>, va: u64) -> Result<Vec<u8>, Errno> {
    let p = ctx.mem.read_cstr(va, PATH_MAX)?;
    if p.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(p)
}

/// The directory a relative path starts from: the cwd, or the directory open at `dirfd`.
fn start_dir(ctx: &Ctx<'_>, dirfd: u64, path: &[u8]) -> Result<String, Errno> {
    if path.starts_with(b"/") || dirfd as u32 as u64 == AT_FDCWD {
        return Ok(ctx.proc.files.cwd.clone());
    }
    let d = ctx.proc.files.fds.get(dirfd as u32 as u64)?;
    match (&d.file, &d.path) {
        (File::Dir { .. }, Some(p)) => Ok(p.clone()),
        _ => Err(Errno::ENOTDIR),
    }
}

/// Resolves `path` relative to `dirfd`.
pub fn resolve_at(ctx: &Ctx<'_>, dirfd: u64, path: &[u8], follow: bool) -> Result<Node, Errno> {
    let start = start_dir(ctx, dirfd, path)?;
    let f = &ctx.proc.files;
    f.view.resolve(&f.tmp, &ctx.proc.identity.exe, &start, path, follow)
}

/// The errno for creating `path` where it does not exist: EROFS if its directory exists
/// (outside /tmp: everything else is read-only), else what resolving the directory says.
fn create_refused(ctx: &Ctx<'_>, dirfd: u64, path: &[u8]) -> Errno {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let parent: &[u8] = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &trimmed[..i],
        None => b".",
    };
    match resolve_at(ctx, dirfd, parent, true) {
        Ok(n) if view::is_dir(&n, &ctx.proc.files.tmp) => Errno(libc::EROFS),
        Ok(_) => Errno::ENOTDIR,
        Err(e) => e,
    }
}

fn dir_listing(ctx: &Ctx<'_>, node: &Node, self_ino: u64) -> Result<Vec<DirEntry>, Errno> {
    let mut entries = vec![
        DirEntry { name: b".".to_vec(), ino: self_ino, dtype: libc::DT_DIR },
        DirEntry { name: b"..".to_vec(), ino: 2, dtype: libc::DT_DIR },
    ];
    match node {
        Node::ViewDir { path } => {
            for (name, dtype) in ctx.proc.files.view.view_children(path) {
                entries.push(DirEntry { name: name.into_bytes(), ino: 3, dtype });
            }
        }
        Node::HostDir { fd, .. } => entries.extend(hostfs::read_dir(hostfs::borrow(fd))?),
        Node::Tmp { ino, .. } => {
            for (name, ino, dir) in ctx.proc.files.tmp.list(*ino)? {
                entries.push(DirEntry {
                    name: name.into_bytes(),
                    ino,
                    dtype: if dir { libc::DT_DIR } else { libc::DT_REG },
                });
            }
        }
        _ => return Err(Errno::ENOTDIR),
    }
    Ok(entries)
}

fn node_path(node: &Node) -> Option<String> {
    match node {
        Node::ViewDir { path } | Node::HostDir { path, .. } | Node::Tmp { path, .. } => Some(path.clone()),
        _ => None,
    }
}

/// `/proc/self/maps` from the address map (image and stack areas with their rights), the
/// break and the program's mappings with the rights it asked for.
fn maps(ctx: &Ctx<'_>) -> Vec<u8> {
    use synthetic::MapsLine;
    let mem = &ctx.proc.mem;
    let mut lines = Vec::new();
    let exe = String::from_utf8_lossy(&ctx.proc.identity.exe).into_owned();
    let stack = if mem.fixed.len() > 1 { mem.fixed.last().copied() } else { None };
    for (i, &(s, e)) in mem.fixed.iter().enumerate() {
        for a in ctx.mem.map.areas().iter().filter(|a| a.start >= s && a.end <= e) {
            let name = if Some((s, e)) == stack {
                "[stack]".to_string()
            } else if i == 0 {
                exe.clone()
            } else {
                String::new()
            };
            lines.push(MapsLine { start: a.start, end: a.end, rwx: (a.perm.read, a.perm.write, a.perm.exec), name });
        }
    }
    let brk_end = mem.brk.next_multiple_of(4096);
    if brk_end > mem.brk_start {
        lines.push(MapsLine { start: mem.brk_start, end: brk_end, rwx: (true, true, false), name: "[heap]".into() });
    }
    for (&s, &(e, prot)) in &mem.mappings {
        let p = prot as i32;
        let rwx = (p & libc::PROT_READ != 0, p & libc::PROT_WRITE != 0, p & libc::PROT_EXEC != 0);
        lines.push(MapsLine { start: s, end: e, rwx, name: String::new() });
    }
    synthetic::maps(lines)
}

fn generate(ctx: &Ctx<'_>, g: Generated) -> Vec<u8> {
    match g {
        Generated::Maps => maps(ctx),
        Generated::CpuInfo => synthetic::cpuinfo(),
        Generated::CpuOnline => synthetic::cpu_online(),
    }
}

fn open_common(ctx: &mut Ctx<'_>, dirfd: u64, path: u64, flags: u64, mode: u64) -> SysResult {
    let path = read_path(ctx, path)?;
    let flags = flags as i32;
    let access = flags & libc::O_ACCMODE;
    if access == libc::O_ACCMODE {
        return Err(Errno::EINVAL);
    }
    let o_path = flags & libc::O_PATH != 0;
    let writing = !o_path && access != libc::O_RDONLY;
    let create = flags & libc::O_CREAT != 0 && !o_path;
    let excl = create && flags & libc::O_EXCL != 0;
    let follow = flags & libc::O_NOFOLLOW == 0 && !excl;
    let tmpfile = flags & libc::O_TMPFILE == libc::O_TMPFILE;
    if tmpfile {
        return Err(Errno::EOPNOTSUPP);
    }
    let node = match resolve_at(ctx, dirfd, &path, follow) {
        Ok(n) => n,
        Err(e) if e == Errno::ENOENT && create => return Err(create_refused(ctx, dirfd, &path)),
        Err(e) => return Err(e),
    };
    let tmp = &ctx.proc.files.tmp;
    if excl && !matches!(node, Node::TmpMissing { .. }) {
        return Err(Errno::EEXIST);
    }
    if flags & libc::O_DIRECTORY != 0 && !view::is_dir(&node, tmp) && !matches!(node, Node::TmpMissing { .. }) {
        return Err(Errno::ENOTDIR);
    }
    if view::is_dir(&node, tmp) && (writing || create) {
        return Err(Errno(libc::EISDIR));
    }
    let status = (flags & (libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK)) as u32;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let dir_path = node_path(&node);
    let file = match node {
        Node::TmpMissing { dir, name } => {
            if !create {
                return Err(Errno::ENOENT);
            }
            let ino = ctx.proc.files.tmp.create(dir, &name, false, mode as u32 & 0o777 & !0o022)?;
            File::Tmp { ino }
        }
        Node::Symlink { .. } => return Err(Errno(libc::ELOOP)),
        n @ (Node::ViewDir { .. } | Node::HostDir { .. }) => {
            let st = view::stat(&n, &ctx.proc.files.tmp)?;
            File::Dir { entries: Arc::new(dir_listing(ctx, &n, st.ino)?), stat: st }
        }
        Node::Tmp { ino, .. } if view::is_dir(&Node::Tmp { ino, path: String::new() }, &ctx.proc.files.tmp) => {
            let n = Node::Tmp { ino, path: String::new() };
            let st = view::stat(&n, &ctx.proc.files.tmp)?;
            File::Dir { entries: Arc::new(dir_listing(ctx, &n, st.ino)?), stat: st }
        }
        Node::Tmp { ino, .. } => {
            if writing && flags & libc::O_TRUNC != 0 {
                ctx.proc.files.tmp.truncate(ino, 0)?;
            }
            File::Tmp { ino }
        }
        Node::HostFile { parent, name, stat } => {
            if writing || flags & libc::O_TRUNC != 0 {
                return Err(Errno(libc::EROFS));
            }
            if o_path {
                File::Host { data: Arc::from(&[][..]), stat }
            } else {
                let (data, stat) = ctx.proc.files.view.read_host_file(&parent, &name, &stat)?;
                if held_host_bytes(ctx, &data) + data.len() as u64 > MAX_HELD_BYTES {
                    return Err(Errno::ENOMEM);
                }
                File::Host { data, stat }
            }
        }
        Node::Dev(d) => File::Device(d),
        Node::Generated(g) => {
            if writing {
                return Err(Errno::EACCES);
            }
            let st = view::stat(&Node::Generated(g), &ctx.proc.files.tmp)?;
            File::Generated { data: generate(ctx, g).into(), stat: st }
        }
    };
    let is_tmp = if let File::Tmp { ino } = file { Some(ino) } else { None };
    let fd = ctx.proc.files.fds.open(Description::new(file, status, dir_path), cloexec);
    match (fd, is_tmp) {
        (Ok(fd), Some(ino)) => {
            ctx.proc.files.tmp.opened(ino);
            Ok(fd as u64)
        }
        (Ok(fd), None) => Ok(fd as u64),
        (Err(e), _) => Err(e),
    }
}

/// open(path, flags, mode)
pub fn sys_open(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    open_common(ctx, AT_FDCWD, a[0], a[1], a[2])
}

/// creat(path, mode)
pub fn sys_creat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    open_common(ctx, AT_FDCWD, a[0], (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64, a[1])
}

/// openat(dirfd, path, flags, mode)
pub fn sys_openat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    open_common(ctx, a[0], a[1], a[2], a[3])
}

/// openat2(dirfd, path, how, size): flags and mode from `how`; the RESOLVE_* flags are
/// accepted (the view already refuses every escape they guard against).
pub fn sys_openat2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[3] < 24 {
        return Err(Errno::EINVAL);
    }
    let how = ctx.mem.read_vec(a[2], 24)?;
    let flags = u64::from_le_bytes(how[0..8].try_into().unwrap());
    let mode = u64::from_le_bytes(how[8..16].try_into().unwrap());
    let resolve = u64::from_le_bytes(how[16..24].try_into().unwrap());
    if resolve & !0x3f != 0 || flags >> 32 != 0 {
        return Err(Errno::EINVAL);
    }
    open_common(ctx, a[0], a[1], flags, mode)
}

fn stat_at(ctx: &mut Ctx<'_>, dirfd: u64, path: u64, flags: u64) -> Result<crate::linux::stat::FileStat, Errno> {
    let p = read_path(ctx, path)?;
    if p.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 {
        if dirfd as u32 as u64 == AT_FDCWD {
            let cwd = ctx.proc.files.cwd.clone();
            let f = &ctx.proc.files;
            let n = f.view.resolve(&f.tmp, &ctx.proc.identity.exe, "/", cwd.as_bytes(), true)?;
            return view::stat(&n, &ctx.proc.files.tmp);
        }
        let d = ctx.proc.files.fds.get(dirfd as u32 as u64)?.clone();
        return super::fs::describe(ctx, &d);
    }
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW as u64 == 0;
    let n = resolve_at(ctx, dirfd, &p, follow)?;
    view::stat(&n, &ctx.proc.files.tmp)
}

/// newfstatat(dirfd, path, statbuf, flags)
pub fn sys_newfstatat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let st = stat_at(ctx, a[0], a[1], a[3])?;
    ctx.mem.write(a[2], &st.to_stat())?;
    Ok(0)
}

/// stat(path, statbuf)
pub fn sys_stat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    sys_newfstatat(ctx, [AT_FDCWD, a[0], a[1], 0, 0, 0])
}

/// lstat(path, statbuf)
pub fn sys_lstat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    sys_newfstatat(ctx, [AT_FDCWD, a[0], a[1], libc::AT_SYMLINK_NOFOLLOW as u64, 0, 0])
}

/// statx(dirfd, path, flags, mask, statxbuf)
pub fn sys_statx(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let st = stat_at(ctx, a[0], a[1], a[2])?;
    ctx.mem.write(a[4], &st.to_statx())?;
    Ok(0)
}

fn access_common(ctx: &mut Ctx<'_>, dirfd: u64, path: u64, mode: u64, flags: u64) -> SysResult {
    if mode & !7 != 0 {
        return Err(Errno::EINVAL);
    }
    let p = read_path(ctx, path)?;
    let n = resolve_at(ctx, dirfd, &p, flags & libc::AT_SYMLINK_NOFOLLOW as u64 == 0)?;
    let st = view::stat(&n, &ctx.proc.files.tmp)?;
    let writable_here = matches!(n, Node::Tmp { .. } | Node::Dev(_));
    if mode & libc::W_OK as u64 != 0 && !writable_here {
        return Err(Errno(libc::EROFS));
    }
    if mode & libc::R_OK as u64 != 0 && st.mode & 0o444 == 0 {
        return Err(Errno::EACCES);
    }
    if mode & libc::X_OK as u64 != 0 && st.mode & 0o111 == 0 {
        return Err(Errno::EACCES);
    }
    Ok(0)
}

/// access(path, mode)
pub fn sys_access(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    access_common(ctx, AT_FDCWD, a[0], a[1], 0)
}

/// faccessat(dirfd, path, mode)
pub fn sys_faccessat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    access_common(ctx, a[0], a[1], a[2], 0)
}

/// faccessat2(dirfd, path, mode, flags)
pub fn sys_faccessat2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    access_common(ctx, a[0], a[1], a[2], a[3])
}

fn readlink_common(ctx: &mut Ctx<'_>, dirfd: u64, path: u64, buf: u64, size: u64) -> SysResult {
    let p = read_path(ctx, path)?;
    if size == 0 || size > i32::MAX as u64 {
        return Err(Errno::EINVAL);
    }
    match resolve_at(ctx, dirfd, &p, false)? {
        Node::Symlink { target, .. } => {
            let n = target.len().min(size as usize);
            ctx.mem.write(buf, &target[..n])?;
            Ok(n as u64)
        }
        _ => Err(Errno::EINVAL),
    }
}

/// readlink(path, buf, size)
pub fn sys_readlink(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    readlink_common(ctx, AT_FDCWD, a[0], a[1], a[2])
}

/// readlinkat(dirfd, path, buf, size)
pub fn sys_readlinkat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    readlink_common(ctx, a[0], a[1], a[2], a[3])
}

/// getdents64(fd, dirp, count)
pub fn sys_getdents64(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = ctx.proc.files.fds.get(a[0])?;
    let File::Dir { entries, .. } = &d.file else { return Err(Errno::ENOTDIR) };
    let entries = entries.clone();
    let mut index = d.offset as usize;
    let mut out = Vec::new();
    while let Some(e) = entries.get(index) {
        let reclen = (19 + e.name.len() + 1).next_multiple_of(8);
        if out.len() + reclen > a[2] as usize {
            if out.is_empty() {
                return Err(Errno::EINVAL);
            }
            break;
        }
        let mut rec = vec![0u8; reclen];
        rec[0..8].copy_from_slice(&e.ino.to_le_bytes());
        rec[8..16].copy_from_slice(&((index + 1) as u64).to_le_bytes());
        rec[16..18].copy_from_slice(&(reclen as u16).to_le_bytes());
        rec[18] = e.dtype;
        rec[19..19 + e.name.len()].copy_from_slice(&e.name);
        out.extend_from_slice(&rec);
        index += 1;
    }
    ctx.mem.write(a[1], &out)?;
    ctx.proc.files.fds.get_mut(a[0])?.offset = index as u64;
    Ok(out.len() as u64)
}

/// getcwd(buf, size)
pub fn sys_getcwd(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let mut cwd = ctx.proc.files.cwd.clone().into_bytes();
    cwd.push(0);
    if (a[1] as usize) < cwd.len() {
        return Err(Errno::ERANGE);
    }
    ctx.mem.write(a[0], &cwd)?;
    Ok(cwd.len() as u64)
}

fn change_dir(ctx: &mut Ctx<'_>, node: Node) -> SysResult {
    if !view::is_dir(&node, &ctx.proc.files.tmp) {
        return Err(Errno::ENOTDIR);
    }
    ctx.proc.files.cwd = node_path(&node).ok_or(Errno::ENOTDIR)?;
    Ok(0)
}

/// chdir(path)
pub fn sys_chdir(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let p = read_path(ctx, a[0])?;
    let n = resolve_at(ctx, AT_FDCWD, &p, true)?;
    change_dir(ctx, n)
}

/// fchdir(fd)
pub fn sys_fchdir(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let d = ctx.proc.files.fds.get(a[0])?;
    match (&d.file, &d.path) {
        (File::Dir { .. }, Some(p)) => {
            ctx.proc.files.cwd = p.clone();
            Ok(0)
        }
        _ => Err(Errno::ENOTDIR),
    }
}

/// Splits `path` into its directory (resolved) and last name, for calls that change /tmp.
fn parent_and_name(ctx: &Ctx<'_>, dirfd: u64, path: &[u8]) -> Result<(Node, String), Errno> {
    let trimmed = path.strip_suffix(b"/").filter(|t| !t.is_empty()).unwrap_or(path);
    let (parent, name): (&[u8], &[u8]) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (b".", trimmed),
    };
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    let name = String::from_utf8(name.to_vec()).map_err(|_| Errno::ENOENT)?;
    Ok((resolve_at(ctx, dirfd, parent, true)?, name))
}

/// The /tmp directory inode a change happens in, or the errno Linux gives elsewhere.
fn tmp_dir(ctx: &Ctx<'_>, parent: &Node, name: &str, must_exist: bool) -> Result<u64, Errno> {
    match parent {
        Node::Tmp { ino, .. } if view::is_dir(parent, &ctx.proc.files.tmp) => Ok(*ino),
        n if view::is_dir(n, &ctx.proc.files.tmp) => {
            if name == "." || name == ".." {
                return Err(Errno::EBUSY);
            }
            if must_exist {
                // Read-only everywhere else; EROFS if the name exists, as Linux checks it first.
                let exists = match n {
                    Node::HostDir { fd, .. } => hostfs::step(hostfs::borrow(fd), name).is_ok(),
                    Node::ViewDir { path } => ctx.proc.files.view.view_children(path).iter().any(|(c, _)| c == name),
                    _ => false,
                };
                if !exists {
                    return Err(Errno::ENOENT);
                }
            }
            Err(Errno(libc::EROFS))
        }
        _ => Err(Errno::ENOTDIR),
    }
}

fn mkdir_common(ctx: &mut Ctx<'_>, dirfd: u64, path: u64, mode: u64) -> SysResult {
    let p = read_path(ctx, path)?;
    let (parent, name) = parent_and_name(ctx, dirfd, &p)?;
    if name == "." || name == ".." {
        return Err(Errno::EEXIST);
    }
    let dir = match tmp_dir(ctx, &parent, &name, true) {
        Err(e) if e == Errno(libc::EROFS) => return Err(Errno::EEXIST),
        Err(e) if e == Errno::ENOENT => return Err(Errno(libc::EROFS)),
        r => r?,
    };
    ctx.proc.files.tmp.create(dir, &name, true, mode as u32 & 0o777 & !0o022)?;
    Ok(0)
}

/// mkdir(path, mode)
pub fn sys_mkdir(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    mkdir_common(ctx, AT_FDCWD, a[0], a[1])
}

/// mkdirat(dirfd, path, mode)
pub fn sys_mkdirat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    mkdir_common(ctx, a[0], a[1], a[2])
}

fn unlink_common(ctx: &mut Ctx<'_>, dirfd: u64, path: u64, directory: bool) -> SysResult {
    let p = read_path(ctx, path)?;
    let (parent, name) = parent_and_name(ctx, dirfd, &p)?;
    if directory && (name == "." || name == "..") {
        return Err(if name == "." { Errno::EINVAL } else { Errno::ENOTEMPTY });
    }
    let dir = tmp_dir(ctx, &parent, &name, true)?;
    ctx.proc.files.tmp.remove(dir, &name, directory)?;
    Ok(0)
}

/// unlink(path)
pub fn sys_unlink(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    unlink_common(ctx, AT_FDCWD, a[0], false)
}

/// rmdir(path)
pub fn sys_rmdir(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    unlink_common(ctx, AT_FDCWD, a[0], true)
}

/// unlinkat(dirfd, path, flags)
pub fn sys_unlinkat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[2] & !(libc::AT_REMOVEDIR as u64) != 0 {
        return Err(Errno::EINVAL);
    }
    unlink_common(ctx, a[0], a[1], a[2] != 0)
}

fn rename_common(ctx: &mut Ctx<'_>, olddir: u64, old: u64, newdir: u64, new: u64, flags: u64) -> SysResult {
    const NOREPLACE: u64 = 1;
    if flags & !NOREPLACE != 0 {
        return Err(Errno::EINVAL);
    }
    let (op, on) = (read_path(ctx, old)?, read_path(ctx, new)?);
    let (from_parent, from) = parent_and_name(ctx, olddir, &op)?;
    let (to_parent, to) = parent_and_name(ctx, newdir, &on)?;
    let from_dir = tmp_dir(ctx, &from_parent, &from, true)?;
    let to_dir = match tmp_dir(ctx, &to_parent, &to, false) {
        Err(e) if e == Errno(libc::EROFS) => return Err(Errno(libc::EXDEV)),
        r => r?,
    };
    if flags & NOREPLACE != 0 && ctx.proc.files.tmp.lookup(to_dir, &to).is_ok() {
        return Err(Errno::EEXIST);
    }
    ctx.proc.files.tmp.rename(from_dir, &from, to_dir, &to)?;
    Ok(0)
}

/// rename(old, new)
pub fn sys_rename(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    rename_common(ctx, AT_FDCWD, a[0], AT_FDCWD, a[1], 0)
}

/// renameat(olddir, old, newdir, new)
pub fn sys_renameat(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    rename_common(ctx, a[0], a[1], a[2], a[3], 0)
}

/// renameat2(olddir, old, newdir, new, flags): RENAME_NOREPLACE only.
pub fn sys_renameat2(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    rename_common(ctx, a[0], a[1], a[2], a[3], a[4])
}
