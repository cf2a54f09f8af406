//! File descriptors and the open file descriptions they refer to.
//!
//! As on Linux, `dup`ed descriptors share one description (offset and status flags); a
//! description lives until its last descriptor is closed.  Pipes keep their buffer here, with
//! counts of open read and write ends, so that EOF and EPIPE are exact.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::errno::Errno;
use super::hostfs::DirEntry;
use super::stat::FileStat;
use super::view::Device;

/// Most descriptors a program may hold (RLIMIT_NOFILE).
pub const MAX_FDS: usize = 1024;
/// Capacity of a pipe (Linux's default).
pub const PIPE_CAPACITY: usize = 64 << 10;

/// What a description refers to.
#[derive(Debug, Clone)]
pub enum File {
    /// The standard streams (pipes to the host).
    Stdin,
    /// See [`File::Stdin`].
    Stdout,
    /// See [`File::Stdin`].
    Stderr,
    /// A host file, read into memory when opened.
    Host {
        /// Contents.
        data: Arc<[u8]>,
        /// Metadata.
        stat: FileStat,
    },
    /// A directory (host, view or `/tmp`): its entries as of `open`.
    Dir {
        /// Entries, without `.` and `..`.
        entries: Arc<Vec<DirEntry>>,
        /// Metadata.
        stat: FileStat,
    },
    /// A file in `/tmp`.
    Tmp {
        /// Inode.
        ino: u64,
    },
    /// A device.
    Device(Device),
    /// A generated file, its contents fixed at `open` (as Linux's seq files at first read).
    Generated {
        /// Contents.
        data: Arc<[u8]>,
        /// Metadata.
        stat: FileStat,
    },
    /// The read end of pipe `id`.
    PipeRead(u32),
    /// The write end of pipe `id`.
    PipeWrite(u32),
    /// An eventfd.
    EventFd {
        /// The counter.
        count: u64,
        /// EFD_SEMAPHORE.
        semaphore: bool,
    },
    /// An epoll instance: its interest list, descriptor → (events, data).
    Epoll(BTreeMap<u64, (u32, u64)>),
    /// One end of a `socketpair`: reads come from pipe `rx`, writes go to pipe `tx` (the other
    /// end has them the other way round).
    Socket {
        /// The pipe it reads.
        rx: u32,
        /// The pipe it writes.
        tx: u32,
    },
    /// A timerfd (see `syscalls::timerfd`).
    TimerFd {
        /// The host clock it counts on.
        clock: libc::clockid_t,
        /// Next expiry in that clock's nanoseconds, 0 when disarmed.
        next: u64,
        /// Interval in nanoseconds (0: one-shot).
        interval: u64,
        /// Expirations not yet read.
        ticks: u64,
    },
}

/// An open file description.
#[derive(Debug, Clone)]
pub struct Description {
    /// What it refers to.
    pub file: File,
    /// Access mode and status flags (`O_RDONLY`/`O_WRONLY`/`O_RDWR`, `O_APPEND`, `O_NONBLOCK`).
    pub flags: u32,
    /// File offset.
    pub offset: u64,
    /// Guest path it was opened by (directories, for `fchdir`).
    pub path: Option<String>,
    refs: u32,
}

impl Description {
    /// A new description.
    pub fn new(file: File, flags: u32, path: Option<String>) -> Description {
        Description { file, flags, offset: 0, path, refs: 0 }
    }

    /// Opened for reading.
    pub fn readable(&self) -> bool {
        self.flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32
    }

    /// Opened for writing.
    pub fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32
    }

    /// O_NONBLOCK is set.
    pub fn nonblocking(&self) -> bool {
        self.flags & libc::O_NONBLOCK as u32 != 0
    }
}

/// A pipe's buffer and its open ends.
#[derive(Debug, Clone, Default)]
pub struct Pipe {
    /// Bytes written and not yet read.
    pub buf: VecDeque<u8>,
    /// Open read ends (descriptions).
    pub readers: u32,
    /// Open write ends (descriptions).
    pub writers: u32,
}

/// One descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fd {
    /// Description id.
    pub desc: u32,
    /// FD_CLOEXEC.
    pub cloexec: bool,
}

/// The table.
#[derive(Debug, Clone)]
pub struct FdTable {
    fds: Vec<Option<Fd>>,
    descs: BTreeMap<u32, Description>,
    /// Pipes by id.
    pub pipes: BTreeMap<u32, Pipe>,
    next_id: u32,
}

impl Default for FdTable {
    fn default() -> Self {
        let mut t = FdTable { fds: Vec::new(), descs: BTreeMap::new(), pipes: BTreeMap::new(), next_id: 0 };
        for (file, flags) in
            [(File::Stdin, libc::O_RDONLY), (File::Stdout, libc::O_WRONLY), (File::Stderr, libc::O_WRONLY)]
        {
            t.open(Description::new(file, flags as u32, None), false).expect("three descriptors fit");
        }
        t
    }
}

impl FdTable {
    /// The descriptor `fd`, or EBADF.
    pub fn fd(&self, fd: u64) -> Result<Fd, Errno> {
        usize::try_from(fd).ok().and_then(|i| self.fds.get(i).copied().flatten()).ok_or(Errno::EBADF)
    }

    /// The description of `fd`.
    pub fn get(&self, fd: u64) -> Result<&Description, Errno> {
        let f = self.fd(fd)?;
        Ok(&self.descs[&f.desc])
    }

    /// The description of `fd`, mutably.
    pub fn get_mut(&mut self, fd: u64) -> Result<&mut Description, Errno> {
        let f = self.fd(fd)?;
        Ok(self.descs.get_mut(&f.desc).expect("a descriptor's description exists"))
    }

    /// The open file descriptions.
    pub fn descriptions(&self) -> impl Iterator<Item = &Description> {
        self.descs.values()
    }

    /// Number of open descriptors.
    pub fn open_count(&self) -> usize {
        self.fds.iter().flatten().count()
    }

    /// The lowest free descriptor at or above `from` (EMFILE if none).
    pub fn lowest_free(&self, from: usize) -> Result<usize, Errno> {
        (from..MAX_FDS).find(|&i| self.fds.get(i).copied().flatten().is_none()).ok_or(Errno::EMFILE)
    }

    fn attach(&mut self, fd: usize, desc: u32, cloexec: bool) {
        if self.fds.len() <= fd {
            self.fds.resize(fd + 1, None);
        }
        self.fds[fd] = Some(Fd { desc, cloexec });
        let d = self.descs.get_mut(&desc).expect("attached description exists");
        d.refs += 1;
    }

    /// Installs a new description at the lowest free descriptor.
    pub fn open(&mut self, desc: Description, cloexec: bool) -> Result<usize, Errno> {
        let fd = self.lowest_free(0)?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match desc.file {
            File::PipeRead(p) => self.pipes.entry(p).or_default().readers += 1,
            File::PipeWrite(p) => self.pipes.entry(p).or_default().writers += 1,
            File::Socket { rx, tx } => {
                self.pipes.entry(rx).or_default().readers += 1;
                self.pipes.entry(tx).or_default().writers += 1;
            }
            _ => {}
        }
        self.descs.insert(id, desc);
        self.attach(fd, id, cloexec);
        Ok(fd)
    }

    /// A new pipe id.
    pub fn new_pipe(&mut self) -> u32 {
        let id = self.pipes.keys().next_back().map_or(0, |k| k + 1);
        self.pipes.insert(id, Pipe::default());
        id
    }

    /// Closes `fd`; returns the description's file if this was its last descriptor.
    pub fn close(&mut self, fd: u64) -> Result<Option<File>, Errno> {
        let f = self.fd(fd)?;
        self.fds[fd as usize] = None;
        while self.fds.last() == Some(&None) {
            self.fds.pop();
        }
        let d = self.descs.get_mut(&f.desc).expect("a descriptor's description exists");
        d.refs -= 1;
        if d.refs > 0 {
            return Ok(None);
        }
        let d = self.descs.remove(&f.desc).expect("just seen");
        match d.file {
            File::PipeRead(p) | File::PipeWrite(p) => {
                let pipe = self.pipes.get_mut(&p).expect("an open end's pipe exists");
                if matches!(d.file, File::PipeRead(_)) {
                    pipe.readers -= 1;
                } else {
                    pipe.writers -= 1;
                }
                if pipe.readers == 0 && pipe.writers == 0 {
                    self.pipes.remove(&p);
                }
            }
            File::Socket { rx, tx } => {
                for (p, reader) in [(rx, true), (tx, false)] {
                    let pipe = self.pipes.get_mut(&p).expect("an open socket's pipes exist");
                    if reader {
                        pipe.readers -= 1;
                    } else {
                        pipe.writers -= 1;
                    }
                    if pipe.readers == 0 && pipe.writers == 0 {
                        self.pipes.remove(&p);
                    }
                }
            }
            _ => {}
        }
        Ok(Some(d.file))
    }

    /// `dup` / `F_DUPFD`: the lowest free descriptor at or above `from`.
    pub fn dup(&mut self, old: u64, from: usize, cloexec: bool) -> Result<usize, Errno> {
        let f = self.fd(old)?;
        let fd = self.lowest_free(from)?;
        self.attach(fd, f.desc, cloexec);
        Ok(fd)
    }

    /// `dup2`/`dup3`: `new` refers to `old`'s description (closing what `new` was).  Returns
    /// the file of a description that lost its last descriptor.
    pub fn dup_to(&mut self, old: u64, new: u64, cloexec: bool) -> Result<Option<File>, Errno> {
        let f = self.fd(old)?;
        if new >= MAX_FDS as u64 {
            return Err(Errno::EBADF);
        }
        let closed = if self.fd(new).is_ok() { self.close(new)? } else { None };
        self.attach(new as usize, f.desc, cloexec);
        Ok(closed)
    }

    /// Sets FD_CLOEXEC.
    pub fn set_cloexec(&mut self, fd: u64, on: bool) -> Result<(), Errno> {
        self.fd(fd)?;
        if let Some(Some(f)) = self.fds.get_mut(fd as usize) {
            f.cloexec = on;
        }
        Ok(())
    }
}

// Snapshot files (crate::persist): the table as it is, descriptions with their share counts.
crate::persist::persist_fields!(FdTable { fds, descs, pipes, next_id });
crate::persist::persist_fields!(Description { file, flags, offset, path, refs });
crate::persist::persist_fields!(Pipe { buf, readers, writers });
crate::persist::persist_fields!(Fd { desc, cloexec });

impl crate::persist::Persist for File {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        match self {
            File::Stdin => e.u64(0),
            File::Stdout => e.u64(1),
            File::Stderr => e.u64(2),
            File::Host { data, stat } => {
                e.u64(3);
                data.save(e)?;
                stat.save(e)?;
            }
            File::Dir { entries, stat } => {
                e.u64(4);
                entries.save(e)?;
                stat.save(e)?;
            }
            File::Tmp { ino } => {
                e.u64(5);
                ino.save(e)?;
            }
            File::Device(d) => {
                e.u64(6);
                d.save(e)?;
            }
            File::Generated { data, stat } => {
                e.u64(7);
                data.save(e)?;
                stat.save(e)?;
            }
            File::PipeRead(id) => {
                e.u64(8);
                id.save(e)?;
            }
            File::PipeWrite(id) => {
                e.u64(9);
                id.save(e)?;
            }
            File::EventFd { count, semaphore } => {
                e.u64(10);
                count.save(e)?;
                semaphore.save(e)?;
            }
            File::Epoll(interest) => {
                e.u64(11);
                interest.save(e)?;
            }
            File::Socket { rx, tx } => {
                e.u64(12);
                rx.save(e)?;
                tx.save(e)?;
            }
            File::TimerFd { clock, next, interval, ticks } => {
                // The expiry is a reading of this host's clock: written relative to the
                // snapshot's epoch, rebased onto the loader's.
                e.u64(13);
                clock.save(e)?;
                crate::persist::save_expiry(*clock, *next, e)?;
                interval.save(e)?;
                ticks.save(e)?;
            }
        }
        Ok(())
    }

    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use crate::persist::Persist;
        Ok(match d.tag("open file", 14)? {
            0 => File::Stdin,
            1 => File::Stdout,
            2 => File::Stderr,
            3 => File::Host { data: Persist::load(d)?, stat: Persist::load(d)? },
            4 => File::Dir { entries: Persist::load(d)?, stat: Persist::load(d)? },
            5 => File::Tmp { ino: Persist::load(d)? },
            6 => File::Device(Persist::load(d)?),
            7 => File::Generated { data: Persist::load(d)?, stat: Persist::load(d)? },
            8 => File::PipeRead(Persist::load(d)?),
            9 => File::PipeWrite(Persist::load(d)?),
            10 => File::EventFd { count: Persist::load(d)?, semaphore: Persist::load(d)? },
            11 => File::Epoll(Persist::load(d)?),
            12 => File::Socket { rx: Persist::load(d)?, tx: Persist::load(d)? },
            _ => {
                let clock = Persist::load(d)?;
                File::TimerFd {
                    clock,
                    next: crate::persist::load_expiry(clock, d)?,
                    interval: Persist::load(d)?,
                    ticks: Persist::load(d)?,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dup_shares_the_description_and_close_frees_it_last() {
        let mut t = FdTable::default();
        let data: Arc<[u8]> = Arc::from(&b"abc"[..]);
        let fd = t.open(Description::new(File::Host { data, stat: FileStat::default() }, 0, None), true).unwrap();
        assert_eq!(fd, 3);
        let d = t.dup(3, 0, false).unwrap();
        assert_eq!(d, 4);
        t.get_mut(3).unwrap().offset = 2;
        assert_eq!(t.get(4).unwrap().offset, 2, "dup shares the offset");
        assert!(t.fd(3).unwrap().cloexec && !t.fd(4).unwrap().cloexec);
        assert!(t.close(3).unwrap().is_none());
        assert!(matches!(t.close(4).unwrap(), Some(File::Host { .. })));
        assert_eq!(t.close(4).unwrap_err(), Errno::EBADF);
        assert_eq!(t.open_count(), 3);
    }

    #[test]
    fn exhaustion_is_emfile_and_dup2_replaces() {
        let mut t = FdTable::default();
        for _ in 3..MAX_FDS {
            t.dup(1, 0, false).unwrap();
        }
        assert_eq!(t.dup(1, 0, false).unwrap_err(), Errno::EMFILE);
        assert_eq!(t.dup_to(1, MAX_FDS as u64, false).unwrap_err(), Errno::EBADF);
        t.dup_to(0, 5, false).unwrap();
        assert!(matches!(t.get(5).unwrap().file, File::Stdin));
    }

    #[test]
    fn pipe_ends_are_counted() {
        let mut t = FdTable::default();
        let p = t.new_pipe();
        let r = t.open(Description::new(File::PipeRead(p), libc::O_RDONLY as u32, None), false).unwrap();
        let w = t.open(Description::new(File::PipeWrite(p), libc::O_WRONLY as u32, None), false).unwrap();
        let w2 = t.dup(w as u64, 0, false).unwrap();
        assert_eq!((t.pipes[&p].readers, t.pipes[&p].writers), (1, 1));
        t.close(w as u64).unwrap();
        t.close(w2 as u64).unwrap();
        assert_eq!(t.pipes[&p].writers, 0, "EOF once every write end is closed");
        t.close(r as u64).unwrap();
        assert!(t.pipes.is_empty());
    }
}
