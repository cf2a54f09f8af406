//! Host mappings of guest memory: the only `mmap`, `munmap`, `memfd_create`, `madvise` and
//! `fallocate` calls of the VMM, and the raw copies in and out of mapped memory.
//!
//! Guest memory is shared with a running guest (and, for tenant shared memory, with other VMs
//! and processes), so no Rust reference ever points into it: every access is a bounds-checked
//! copy through raw pointers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// An anonymous in-memory file (`memfd_create`): the backing store of guest RAM and of
/// snapshots.  Pages that were never written cost nothing.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
    /// Where the memory starts in the file (page-aligned): 0, except for a snapshot file's
    /// RAM, which follows its header.
    offset: u64,
}

impl Memfd {
    /// Creates a memfd of `size` bytes (sparse: all zero, nothing allocated).
    pub fn new(name: &str, size: u64) -> Result<Memfd> {
        let cname = std::ffi::CString::new(name).map_err(|_| Error::Config("memfd name has a NUL".into()))?;
        // SAFETY: `cname` is a valid NUL-terminated string; the returned fd is checked and
        // then owned by `OwnedFd`.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain ftruncate on our own fd; the result is checked.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
            return Err(Error::last_os("ftruncate(memfd)"));
        }
        Ok(Memfd { fd, size, offset: 0 })
    }

    /// Opens an existing shared-memory object by fd (e.g. one inherited from a parent process).
    pub fn from_fd(fd: OwnedFd) -> Result<Memfd> {
        // SAFETY: fstat on a valid fd into a zeroed stat buffer; the result is checked.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(Error::last_os("fstat(shared memory)"));
        }
        Ok(Memfd { fd, size: st.st_size as u64, offset: 0 })
    }

    /// The `size` bytes at `offset` (page-aligned) of a regular file, e.g. a snapshot file's
    /// RAM: mapped from there, read-only or copy-on-write (the file is opened read-only).
    pub fn from_file_range(fd: OwnedFd, offset: u64, size: u64) -> Result<Memfd> {
        if offset % 4096 != 0 || size == 0 {
            return Err(Error::Config(format!("a file range at {offset} of {size} bytes cannot be mapped")));
        }
        Ok(Memfd { fd, size, offset })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Frees `[offset, offset + len)` and makes it read back as zeros (`FALLOC_FL_PUNCH_HOLE`).
    /// Shared mappings see the zeros at once; private copies already made are not affected.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own fd with a range inside the file; the result is checked.
        let ret = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (self.offset + offset) as libc::off_t,
                len as libc::off_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How a [`Mapping`] is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Private anonymous memory.
    Anonymous,
    /// `MAP_SHARED` of a memfd: writes go to the file.
    Shared,
    /// `MAP_PRIVATE` of a memfd: reads see the file, writes make private copies (CoW).
    Private,
}

/// One `mmap`ed range of host memory, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    sharing: Sharing,
}

// SAFETY: a Mapping is a plain range of bytes.  All accesses are copies through raw pointers
// (never references), so moving it to or using it from another thread cannot create aliasing
// references; concurrent writers (a running guest) only ever race on byte values.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only permits raw-pointer copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(len: usize, prot: i32, flags: i32, fd: i32, offset: u64, sharing: Sharing) -> Result<Mapping> {
        if len == 0 {
            return Err(Error::Config("cannot map 0 bytes".into()));
        }
        // SAFETY: a new mapping at an address of the kernel's choice; it cannot overlap any
        // Rust object.  The result is checked.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset as libc::off_t) };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap"));
        }
        Ok(Mapping { ptr: NonNull::new(ptr.cast()).expect("mmap never returns NULL on success"), len, sharing })
    }

    /// Private anonymous memory, allocated on first touch (`MAP_NORESERVE`).
    pub fn anonymous(len: usize) -> Result<Mapping> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
            Sharing::Anonymous,
        )
    }

    /// A writable `MAP_SHARED` mapping of the first `len` bytes of `file` (see
    /// [`ReadOnlyMapping`] for one that is not).
    pub fn shared(file: &Memfd, len: usize) -> Result<Mapping> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.fd.as_raw_fd(),
            file.offset,
            Sharing::Shared,
        )
    }

    /// A copy-on-write (`MAP_PRIVATE`) mapping of the first `len` bytes of `file`.
    pub fn private(file: &Memfd, len: usize) -> Result<Mapping> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            file.fd.as_raw_fd(),
            file.offset,
            Sharing::Private,
        )
    }

    /// Host address of the first byte (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (mappings are never empty).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How the mapping is backed.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    fn check(&self, offset: u64, len: usize) -> Option<usize> {
        let offset = usize::try_from(offset).ok()?;
        (offset.checked_add(len)? <= self.len).then_some(offset)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; `None` if out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Option<()> {
        let offset = self.check(offset, buf.len())?;
        // SAFETY: `offset + buf.len() <= self.len` (checked), the mapping is live for
        // `&self`, and `buf` is a distinct Rust buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Copies `data` to `offset`; `None` if out of range.
    pub fn write(&self, offset: u64, data: &[u8]) -> Option<()> {
        let offset = self.check(offset, data.len())?;
        // SAFETY: the destination range is inside the live, writable mapping (checked) and
        // cannot overlap the Rust slice `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) };
        Some(())
    }

    /// Sets `len` bytes at `offset` to `byte`; `None` if out of range.
    pub fn fill(&self, offset: u64, len: usize, byte: u8) -> Option<()> {
        let offset = self.check(offset, len)?;
        // SAFETY: the range is inside the live, writable mapping (checked).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) };
        Some(())
    }

    /// Moves `len` bytes from `src` to `dst` inside the mapping (ranges may overlap).
    pub fn copy_within(&self, src: u64, dst: u64, len: usize) -> Option<()> {
        let src = self.check(src, len)?;
        let dst = self.check(dst, len)?;
        // SAFETY: both ranges are inside the live mapping (checked); `copy` allows overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(src), self.ptr.as_ptr().add(dst), len) };
        Some(())
    }

    /// Copies `len` bytes at `offset` from `other` (a mapping of the same size) into this one.
    pub fn copy_from(&self, other: &ReadOnlyMapping, offset: u64, len: usize) -> Option<()> {
        let other = &other.map;
        let dst = self.check(offset, len)?;
        let src = other.check(offset, len)?;
        // SAFETY: both ranges are inside live mappings (checked), and two distinct mmaps never
        // overlap in the host's address space.
        unsafe { std::ptr::copy_nonoverlapping(other.ptr.as_ptr().add(src), self.ptr.as_ptr().add(dst), len) };
        Some(())
    }

    /// Fills `out` (one byte per page) with `mincore`'s residency: bit 0 set when the page
    /// is in memory.
    pub fn residency(&self, out: &mut [u8]) -> io::Result<()> {
        if out.len() < self.len.div_ceil(4096) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: mincore reads our own live mapping's page table state and writes one byte
        // per page into `out`, which is large enough (checked).
        let ret = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, out.as_mut_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops the pages of `[offset, offset + len)` (`MADV_DONTNEED`): anonymous memory reads
    /// back as zeros, a private file mapping as the file's content.
    pub fn discard(&self, offset: u64, len: usize) -> io::Result<()> {
        let offset = self.check(offset, len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the range lies inside our own mapping (checked); MADV_DONTNEED does not
        // unmap it, it only drops its pages.
        let ret = unsafe { libc::madvise(self.ptr.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A mapping the host can only read: `MAP_SHARED` with `PROT_READ`, and a type without any
/// method that writes (so a write is a compile error, not a `SIGSEGV`).  Snapshots hold their
/// memory this way.
#[derive(Debug)]
pub struct ReadOnlyMapping {
    /// Invariant: mapped `PROT_READ`; nothing here hands out a way to write it.
    map: Mapping,
}

impl ReadOnlyMapping {
    /// A read-only `MAP_SHARED` mapping of the first `len` bytes of `file`.
    pub fn of(file: &Memfd, len: usize) -> Result<ReadOnlyMapping> {
        let map =
            Mapping::map(len, libc::PROT_READ, libc::MAP_SHARED, file.fd.as_raw_fd(), file.offset, Sharing::Shared)?;
        Ok(ReadOnlyMapping { map })
    }

    /// One read-only range made of pieces of files, in order: each `(file, offset, len)` maps
    /// `len` bytes from `offset` of `file` (both page-aligned) right after the previous piece.
    /// A snapshot file's restore view is its index followed by pages of the file's RAM
    /// (`crate::restore_view::from_pages`): the same page-cache pages, not a copy.
    pub fn composed(pieces: &[(&Memfd, u64, u64)]) -> Result<ReadOnlyMapping> {
        let len: u64 = pieces.iter().map(|p| p.2).sum();
        if pieces.iter().any(|&(f, offset, n)| offset % 4096 != 0 || n == 0 || n % 4096 != 0 || offset + n > f.size) {
            return Err(Error::Config("a piece of a composed mapping is not whole pages of its file".into()));
        }
        // Reserved whole first (nothing else can be mapped into the range meanwhile), then
        // each piece mapped over its part; the one `Mapping` unmaps the whole range on drop.
        let map = Mapping::map(
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
            Sharing::Shared,
        )?;
        let mut at = 0;
        for &(file, offset, n) in pieces {
            // SAFETY: MAP_FIXED over `[at, at + n)`, a part of the reservation this function
            // made and `map` owns (at + n <= len); no Rust reference points into it.  The
            // result is checked.
            let ptr = unsafe {
                libc::mmap(
                    map.ptr.as_ptr().add(at as usize).cast(),
                    n as usize,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.fd.as_raw_fd(),
                    (file.offset + offset) as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(Error::last_os("mmap (a piece of a composed mapping)"));
            }
            at += n;
        }
        Ok(ReadOnlyMapping { map })
    }

    /// Host address of the first byte (for a `KVM_MEM_READONLY` memory slot).
    pub fn host_address(&self) -> u64 {
        self.map.host_address()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false (mappings are never empty).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; `None` if out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Option<()> {
        self.map.read(offset, buf)
    }

    /// Which pages are in memory (see [`Mapping::residency`]).
    pub fn residency(&self, out: &mut [u8]) -> io::Result<()> {
        self.map.residency(out)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and still owns; no
        // reference into it can exist (all accesses are copies).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_accesses_are_refused() {
        let m = Mapping::anonymous(8192).unwrap();
        assert!(m.write(8190, &[1, 2]).is_some());
        assert!(m.write(8191, &[1, 2]).is_none());
        assert!(m.write(u64::MAX, &[1]).is_none());
        let mut b = [0u8; 2];
        assert!(m.read(8190, &mut b).is_some());
        assert_eq!(b, [1, 2]);
        assert!(m.fill(0, 8193, 0).is_none());
        assert!(m.copy_within(0, 8000, 200).is_none());
    }

    #[test]
    fn private_mapping_of_memfd_is_copy_on_write() {
        let f = Memfd::new("t", 4096).unwrap();
        let shared = Mapping::shared(&f, 4096).unwrap();
        shared.write(0, b"snapshot").unwrap();
        let private = Mapping::private(&f, 4096).unwrap();
        private.write(0, b"changed!").unwrap();
        let mut b = [0u8; 8];
        shared.read(0, &mut b).unwrap();
        assert_eq!(&b, b"snapshot");
        private.discard(0, 4096).unwrap();
        let view = ReadOnlyMapping::of(&f, 4096).unwrap();
        private.read(0, &mut b).unwrap();
        assert_eq!(&b, b"snapshot", "MADV_DONTNEED on a private file mapping reverts to the file");
        view.read(0, &mut b).unwrap();
        assert_eq!(&b, b"snapshot");
        private.write(0, b"changed!").unwrap();
        private.copy_from(&view, 0, 8).unwrap();
        private.read(0, &mut b).unwrap();
        assert_eq!(&b, b"snapshot");
        f.punch_hole(0, 4096).unwrap();
        shared.read(0, &mut b).unwrap();
        assert_eq!(b, [0; 8]);
    }
}
