//! The private `/tmp`: an in-memory tree of directories and files, limited in size.
//!
//! Names map to inodes; an open file refers to its inode, so a file unlinked while open stays
//! readable until closed, as on Linux.  File contents are `Arc`ed so that cloning the whole
//! tree for a snapshot or a reset costs a reference count per file; a write copies a file
//! that a snapshot still shares (copy-on-write at file granularity).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::errno::Errno;
use super::stat::{dev, FileStat};

/// Inode of the `/tmp` directory itself.
pub const ROOT: u64 = 1;
/// Bytes charged per inode on top of its contents (so that empty files are not free).
const INODE_COST: u64 = 256;

/// A file or directory.
#[derive(Debug, Clone)]
pub enum Content {
    /// A directory: names → inodes.
    Dir(BTreeMap<String, u64>),
    /// A regular file.
    File(Arc<Vec<u8>>),
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Inode {
    /// What it holds.
    pub content: Content,
    /// Permission bits.
    pub perm: u32,
    /// Names that refer to it (0: unlinked, alive only while open).
    pub nlink: u32,
    /// Open file descriptions that refer to it.
    pub open: u32,
    /// Modification time.
    pub mtime: (i64, u32),
}

/// The tree.
#[derive(Debug, Clone)]
pub struct Tmpfs {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    used: u64,
    limit: u64,
}

fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

impl Tmpfs {
    /// An empty `/tmp` holding at most `limit` bytes.
    pub fn new(limit: u64) -> Tmpfs {
        let root = Inode { content: Content::Dir(BTreeMap::new()), perm: 0o1777, nlink: 2, open: 0, mtime: now() };
        Tmpfs { inodes: BTreeMap::from([(ROOT, root)]), next_ino: ROOT + 1, used: INODE_COST, limit }
    }

    /// Bytes in use (contents plus a fixed cost per inode).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The size limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An inode.
    pub fn inode(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &str) -> Result<u64, Errno> {
        match self.inodes.get(&dir).map(|i| &i.content) {
            Some(Content::Dir(entries)) => entries.get(name).copied().ok_or(Errno::ENOENT),
            Some(Content::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Entries of a directory, sorted by name.
    pub fn list(&self, dir: u64) -> Result<Vec<(String, u64, bool)>, Errno> {
        match self.inodes.get(&dir).map(|i| &i.content) {
            Some(Content::Dir(entries)) => Ok(entries
                .iter()
                .map(|(n, &ino)| (n.clone(), ino, matches!(self.inodes[&ino].content, Content::Dir(_))))
                .collect()),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// Metadata of an inode.
    pub fn stat(&self, ino: u64) -> Option<FileStat> {
        let i = self.inodes.get(&ino)?;
        let (kind, size) = match &i.content {
            Content::Dir(_) => (libc::S_IFDIR, 4096),
            Content::File(d) => (libc::S_IFREG, d.len() as u64),
        };
        Some(FileStat {
            dev: dev::TMPFS,
            ino,
            mode: kind | i.perm,
            nlink: i.nlink.max(u32::from(ino == ROOT) * 2),
            uid: 1000,
            gid: 1000,
            rdev: 0,
            size,
            mtime: i.mtime,
        })
    }

    fn charge(&mut self, bytes: u64) -> Result<(), Errno> {
        let total = self.used.checked_add(bytes).ok_or(Errno::ENOSPC)?;
        if total > self.limit {
            return Err(Errno::ENOSPC);
        }
        self.used = total;
        Ok(())
    }

    fn dir_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<String, u64>, Errno> {
        match self.inodes.get_mut(&dir).map(|i| &mut i.content) {
            Some(Content::Dir(e)) => Ok(e),
            Some(Content::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Creates `name` in `dir` (a file, or a directory if `directory`); EEXIST if present.
    pub fn create(&mut self, dir: u64, name: &str, directory: bool, perm: u32) -> Result<u64, Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir_mut(dir)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.charge(INODE_COST)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let content = if directory { Content::Dir(BTreeMap::new()) } else { Content::File(Arc::new(Vec::new())) };
        let nlink = if directory { 2 } else { 1 };
        self.inodes.insert(ino, Inode { content, perm: perm & 0o7777, nlink, open: 0, mtime: now() });
        self.dir_mut(dir)?.insert(name.to_string(), ino);
        Ok(ino)
    }

    /// Removes `name` from `dir`: a file (`directory == false`, EISDIR for a directory) or an
    /// empty directory (ENOTDIR / ENOTEMPTY otherwise).
    pub fn remove(&mut self, dir: u64, name: &str, directory: bool) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        match (&self.inodes[&ino].content, directory) {
            (Content::Dir(_), false) => return Err(Errno::EISDIR),
            (Content::File(_), true) => return Err(Errno::ENOTDIR),
            (Content::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(dir)?.remove(name);
        let inode = self.inodes.get_mut(&ino).expect("linked inode exists");
        inode.nlink = 0;
        self.release_if_unused(ino);
        Ok(())
    }

    /// Moves `from_dir/from` to `to_dir/to`, replacing a file there (Linux's rename(2)).
    pub fn rename(&mut self, from_dir: u64, from: &str, to_dir: u64, to: &str) -> Result<(), Errno> {
        let ino = self.lookup(from_dir, from)?;
        if from_dir == to_dir && from == to {
            return Ok(());
        }
        if let Ok(existing) = self.lookup(to_dir, to) {
            let src_dir = matches!(self.inodes[&ino].content, Content::Dir(_));
            let dst_dir = matches!(self.inodes[&existing].content, Content::Dir(_));
            match (src_dir, dst_dir) {
                (false, true) => return Err(Errno::EISDIR),
                (true, false) => return Err(Errno::ENOTDIR),
                _ => self.remove(to_dir, to, dst_dir)?,
            }
        }
        if matches!(self.inodes[&ino].content, Content::Dir(_)) && self.is_ancestor(ino, to_dir) {
            return Err(Errno::EINVAL);
        }
        self.dir_mut(to_dir)?; // ENOTDIR before changing anything
        self.dir_mut(from_dir)?.remove(from);
        self.dir_mut(to_dir)?.insert(to.to_string(), ino);
        Ok(())
    }

    fn is_ancestor(&self, dir: u64, mut of: u64) -> bool {
        // Walk up from `of` by searching parents (trees in /tmp are small).
        for _ in 0..4096 {
            if of == dir {
                return true;
            }
            if of == ROOT {
                return false;
            }
            match self
                .inodes
                .iter()
                .find(|(_, i)| matches!(&i.content, Content::Dir(e) if e.values().any(|&c| c == of)))
            {
                Some((&parent, _)) => of = parent,
                None => return false,
            }
        }
        true
    }

    /// Contents of a file.
    pub fn data(&self, ino: u64) -> Result<&Arc<Vec<u8>>, Errno> {
        match self.inodes.get(&ino).map(|i| &i.content) {
            Some(Content::File(d)) => Ok(d),
            Some(Content::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::EBADF),
        }
    }

    /// Writes `bytes` at `offset` of file `ino`, growing it (ENOSPC past the limit, EFBIG past
    /// what a file may hold).
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(bytes.len() as u64).ok_or(Errno::EFBIG)?;
        let len = self.data(ino)?.len() as u64;
        if end > len {
            self.charge(end - len)?;
        }
        let t = now();
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        inode.mtime = t;
        let Content::File(d) = &mut inode.content else { unreachable!("checked above") };
        let d = Arc::make_mut(d);
        if end as usize > d.len() {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(bytes);
        Ok(())
    }

    /// Sets the size of file `ino`.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let len = self.data(ino)?.len() as u64;
        if size > len {
            self.charge(size - len)?;
        } else {
            self.used -= len - size;
        }
        let inode = self.inodes.get_mut(&ino).expect("checked above");
        inode.mtime = now();
        let Content::File(d) = &mut inode.content else { unreachable!("checked above") };
        Arc::make_mut(d).resize(size as usize, 0);
        Ok(())
    }

    /// An open file description now refers to `ino`.
    pub fn opened(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open += 1;
        }
    }

    /// An open file description that referred to `ino` was closed.
    pub fn closed(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open = i.open.saturating_sub(1);
        }
        self.release_if_unused(ino);
    }

    fn release_if_unused(&mut self, ino: u64) {
        let unused = self.inodes.get(&ino).is_some_and(|i| i.nlink == 0 && i.open == 0);
        if unused {
            let size = match self.inodes.remove(&ino).map(|i| i.content) {
                Some(Content::File(d)) => d.len() as u64,
                _ => 0,
            };
            self.used = self.used.saturating_sub(size + INODE_COST);
        }
    }
}

// Snapshot files (crate::persist): the whole tree, with its accounting.
crate::persist::persist_fields!(Tmpfs { inodes, next_ino, used, limit });
crate::persist::persist_fields!(Inode { content, perm, nlink, open, mtime });

impl crate::persist::Persist for Content {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        match self {
            Content::Dir(names) => {
                e.u64(0);
                names.save(e)
            }
            Content::File(data) => {
                e.u64(1);
                data.save(e)
            }
        }
    }

    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use crate::persist::Persist;
        Ok(match d.tag("/tmp inode", 2)? {
            0 => Content::Dir(Persist::load(d)?),
            _ => Content::File(Persist::load(d)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_grow_within_the_limit_and_free_on_unlink() {
        let mut t = Tmpfs::new(10_000);
        let f = t.create(ROOT, "a", false, 0o644).unwrap();
        t.write(f, 0, &[1; 4000]).unwrap();
        assert_eq!(t.write(f, 4000, &[1; 8000]), Err(Errno::ENOSPC));
        assert_eq!(t.data(f).unwrap().len(), 4000);
        let before = t.used();
        t.opened(f);
        t.remove(ROOT, "a", false).unwrap();
        assert_eq!(t.lookup(ROOT, "a"), Err(Errno::ENOENT));
        assert_eq!(t.data(f).unwrap().len(), 4000, "open after unlink stays readable");
        t.closed(f);
        assert!(t.inode(f).is_none());
        assert!(t.used() < before - 4000);
    }

    #[test]
    fn directories_rename_and_errors() {
        let mut t = Tmpfs::new(1 << 20);
        let d = t.create(ROOT, "d", true, 0o755).unwrap();
        let f = t.create(d, "f", false, 0o644).unwrap();
        assert_eq!(t.create(d, "f", false, 0o644), Err(Errno::EEXIST));
        assert_eq!(t.remove(ROOT, "d", true), Err(Errno::ENOTEMPTY));
        assert_eq!(t.remove(ROOT, "d", false), Err(Errno::EISDIR));
        assert_eq!(t.lookup(f, "x"), Err(Errno::ENOTDIR));
        t.rename(d, "f", ROOT, "g").unwrap();
        assert_eq!(t.lookup(ROOT, "g"), Ok(f));
        assert_eq!(t.rename(ROOT, "d", d, "inside"), Err(Errno::EINVAL));
        t.remove(ROOT, "d", true).unwrap();
        assert_eq!(t.list(ROOT).unwrap().into_iter().map(|e| e.0).collect::<Vec<_>>(), vec!["g".to_string()]);
    }

    #[test]
    fn clones_share_contents_until_written() {
        let mut t = Tmpfs::new(1 << 20);
        let f = t.create(ROOT, "a", false, 0o644).unwrap();
        t.write(f, 0, b"snapshot").unwrap();
        let snap = t.clone();
        t.write(f, 0, b"REQUEST!").unwrap();
        assert_eq!(snap.data(f).unwrap().as_slice(), b"snapshot");
        t = snap.clone();
        assert_eq!(t.data(f).unwrap().as_slice(), b"snapshot");
    }
}
