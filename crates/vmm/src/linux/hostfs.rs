//! Opening host files for the guest, safely.
//!
//! The view ([`super::view`]) resolves a guest path itself, one component at a time; this
//! module performs each host step.  A step opens exactly one name (never `.`, `..` or a name
//! containing `/`) relative to a directory descriptor, with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the kernel itself refuses
//! to leave the directory or to follow any link, so a symlink (absolute or relative), `..`, a
//! mount trick or a race that swaps a component for a link cannot take the walk outside an
//! allowed root.  Symlinks are opened as such (`O_PATH | O_NOFOLLOW`), read, and their targets
//! resolved again *in the guest's view*, so they reach only what the view allows.
//!
//! Files are read whole into memory when opened (the guest copies them into its RAM for
//! `mmap` anyway): the emulated process then holds no host descriptor, a reset has nothing to
//! close, and a request cannot leak host descriptors.  Only regular files and directories are
//! opened; FIFOs, sockets and devices under an allowed root are refused (EACCES).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::errno::Errno;
use super::stat::FileStat;

/// Largest host file a program may open (it is held in host memory while open).
pub const MAX_FILE: u64 = 1 << 30;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// The errno the guest sees for a failed host step: what Linux would say for the same file
/// where it is meaningful, EACCES for anything that only the sandbox refuses (the seccomp
/// filter's EPERM, a resolution refusal).
fn guest_errno(e: rustix::io::Errno) -> Errno {
    match e.raw_os_error() {
        libc::ENOENT => Errno::ENOENT,
        libc::ENOTDIR => Errno::ENOTDIR,
        libc::ENAMETOOLONG => Errno::ENAMETOOLONG,
        libc::ENOMEM => Errno::ENOMEM,
        libc::EMFILE | libc::ENFILE => Errno(libc::ENFILE),
        _ => Errno::EACCES,
    }
}

fn check_name(name: &str) -> Result<(), Errno> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Errno::ENOENT);
    }
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// Opens a host path chosen by the operator (an allowed root) as an `O_PATH` descriptor:
/// symlinks in it are followed, as the operator wrote it.
pub fn open_root(path: &Path) -> std::io::Result<(OwnedFd, FileStat)> {
    let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, FileStat::from_host(&st)))
}

/// One step of a walk: `name` inside `dir`, not followed if it is a symlink.
pub fn step(dir: BorrowedFd<'_>, name: &str) -> Result<(OwnedFd, FileStat), Errno> {
    check_name(name)?;
    let fd = rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve_flags(),
    )
    .map_err(guest_errno)?;
    let st = rustix::fs::fstat(&fd).map_err(guest_errno)?;
    Ok((fd, FileStat::from_host(&st)))
}

/// The target of a symlink opened by [`step`].
pub fn readlink(link: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let target = rustix::fs::readlinkat(link, c"", Vec::new()).map_err(guest_errno)?;
    Ok(target.into_bytes())
}

/// Reads the whole regular file `name` inside `dir` (EACCES for anything but a regular
/// file, EFBIG past [`MAX_FILE`]).
pub fn read_file(dir: BorrowedFd<'_>, name: &str) -> Result<(Arc<[u8]>, FileStat), Errno> {
    check_name(name)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve_flags()).map_err(guest_errno)?;
    let st = rustix::fs::fstat(&fd).map_err(guest_errno)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Errno::EACCES);
    }
    if st.st_size as u64 > MAX_FILE {
        return Err(Errno::EFBIG);
    }
    let mut data = Vec::with_capacity(st.st_size as usize);
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        match rustix::io::read(&fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&chunk[..n]);
                if data.len() as u64 > MAX_FILE {
                    return Err(Errno::EFBIG);
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(guest_errno(e)),
        }
    }
    Ok((data.into(), FileStat::from_host(&st)))
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Name.
    pub name: Vec<u8>,
    /// Inode number.
    pub ino: u64,
    /// `DT_*` type.
    pub dtype: u8,
}

/// The entries of the directory open (as `O_PATH`) at `dir`, without `.` and `..`.
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Vec<DirEntry>, Errno> {
    let fd = rustix::fs::openat2(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve_flags(),
    )
    .map_err(guest_errno)?;
    let mut out = Vec::new();
    let d = rustix::fs::Dir::new(fd).map_err(guest_errno)?;
    for e in d {
        let e = e.map_err(guest_errno)?;
        let name: &CStr = e.file_name();
        let name = name.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let dtype = match e.file_type() {
            FileType::RegularFile => libc::DT_REG,
            FileType::Directory => libc::DT_DIR,
            FileType::Symlink => libc::DT_LNK,
            FileType::Fifo => libc::DT_FIFO,
            FileType::Socket => libc::DT_SOCK,
            FileType::CharacterDevice => libc::DT_CHR,
            FileType::BlockDevice => libc::DT_BLK,
            FileType::Unknown => libc::DT_UNKNOWN,
        };
        out.push(DirEntry { name: name.to_vec(), ino: e.ino(), dtype });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Borrows a descriptor (for callers holding `Arc<OwnedFd>`).
pub fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(DirEntry { name, ino, dtype });
