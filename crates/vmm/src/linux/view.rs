//! The file system a program sees, and path resolution in it.
//!
//! ```text
//!  /                      view directories lead to what is allowed (read-only)
//!  <allowed host paths>   read-only, at the same path or remapped (HOST:GUEST)
//!  /tmp                   private, writable, size-limited (see tmpfs)
//!  /dev/null /dev/zero /dev/random /dev/urandom
//!  /proc/self/exe         symlink to the program
//!  /proc/self/maps        generated from the VM's address map
//!  /proc/cpuinfo, /sys/devices/system/cpu/{online,possible}   one CPU
//! ```
//!
//! Resolution is done here, one component at a time, as Linux's `path_lookupat` does:
//! `..` goes to the parent *in the guest's tree* (never above `/`), a symlink found on a host
//! step is read and its target resolved again from the guest's `/` (absolute) or from the
//! link's directory (relative), at most 40 times (ELOOP).  A host step opens one name beneath
//! a directory descriptor with the kernel refusing every link and `..` (see [`super::hostfs`]),
//! so nothing outside the allowed roots is ever opened, whatever the links and races.
//! `/proc/self/root`, `/proc/self/fd/N`, `/proc/self/cwd` and the rest of `/proc` do not exist
//! (ENOENT).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::errno::Errno;
use super::hostfs;
use super::stat::{dev, makedev, FileStat};
use super::tmpfs::{self, Tmpfs};

/// Most symlinks followed in one resolution (Linux's MAXSYMLINKS).
pub const MAX_LINKS: u32 = 40;
/// Longest path accepted (PATH_MAX, including the NUL).
pub const PATH_MAX: usize = 4096;
/// Guest prefixes the view itself provides; nothing may be mounted on or under them.
const RESERVED: &[&str] = &["/tmp", "/dev", "/proc", "/sys"];

/// What the operator allows the program to see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsConfig {
    /// Host paths visible read-only at the same path (files or directories).
    pub allow_read: Vec<PathBuf>,
    /// Host paths visible read-only at another guest path: (host, guest).
    pub mounts: Vec<(PathBuf, String)>,
    /// Size limit of `/tmp` in bytes.
    pub tmp_bytes: u64,
}

/// Default size of `/tmp`.
pub const DEFAULT_TMP_BYTES: u64 = 16 << 20;

/// The devices in `/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `/dev/null`: reads EOF, swallows writes.
    Null,
    /// `/dev/zero`: reads zeros.
    Zero,
    /// `/dev/random`: fresh random bytes.
    Random,
    /// `/dev/urandom`: fresh random bytes.
    Urandom,
}

impl Device {
    /// Metadata (character devices with Linux's numbers).
    pub fn stat(self) -> FileStat {
        let (minor, ino) = match self {
            Device::Null => (3, 4),
            Device::Zero => (5, 5),
            Device::Random => (8, 6),
            Device::Urandom => (9, 7),
        };
        let mut st = FileStat::synthetic(dev::DEVTMPFS, ino, libc::S_IFCHR | 0o666, 0);
        st.rdev = makedev(1, minor);
        st
    }
}

/// Generated files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// `/proc/self/maps`.
    Maps,
    /// `/proc/cpuinfo`.
    CpuInfo,
    /// `/sys/devices/system/cpu/online` and `possible`.
    CpuOnline,
}

/// A resolved path.
#[derive(Debug, Clone)]
pub enum Node {
    /// A directory of the view itself (`/`, `/usr` leading to `/usr/lib`, `/proc`, ...).
    ViewDir {
        /// Guest path.
        path: String,
    },
    /// An allowed host directory (an `O_PATH` descriptor).
    HostDir {
        /// The directory.
        fd: Arc<OwnedFd>,
        /// Its metadata.
        stat: FileStat,
        /// Guest path.
        path: String,
    },
    /// An allowed host file (or other non-directory), by parent and name.
    HostFile {
        /// Its directory.
        parent: Arc<OwnedFd>,
        /// Its name there.
        name: String,
        /// Its metadata.
        stat: FileStat,
    },
    /// A file or directory in `/tmp`.
    Tmp {
        /// Inode.
        ino: u64,
        /// Guest path.
        path: String,
    },
    /// The last component does not exist, in a `/tmp` directory (where it may be created).
    TmpMissing {
        /// Directory inode.
        dir: u64,
        /// Name to create.
        name: String,
    },
    /// A device.
    Dev(Device),
    /// A generated file.
    Generated(Generated),
    /// A symlink (only returned when not followed).
    Symlink {
        /// Its target.
        target: Vec<u8>,
        /// Its metadata.
        stat: FileStat,
    },
}

#[derive(Debug)]
enum Root {
    Dir(Arc<OwnedFd>, FileStat),
    File { parent: Arc<OwnedFd>, name: String, stat: FileStat },
}

#[derive(Debug)]
struct Mount {
    guest: String,
    root: Root,
}

/// Identity of a host file's contents: device, inode, size, modification time.
type FileKey = (u64, u64, u64, (i64, u32));

/// The view: mounts (sorted by guest path), the size of `/tmp`, and the contents of host
/// files currently open in any process using this view (so that opening one file many times
/// holds one copy).
#[derive(Debug)]
pub struct View {
    mounts: Vec<Mount>,
    tmp_limit: u64,
    /// What it was made from (a snapshot file stores this and makes the view again).
    source: FsConfig,
    open_files: std::sync::Mutex<std::collections::HashMap<FileKey, std::sync::Weak<[u8]>>>,
}

/// A configuration problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    /// A guest path is not absolute, not normalised, or reserved.
    #[error("guest path {path:?}: {why}")]
    BadGuestPath {
        /// The path.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A host path cannot be opened.
    #[error("host path {path:?}: {error}")]
    Host {
        /// The path.
        path: String,
        /// The OS error.
        error: String,
    },
    /// Two entries name the same guest path.
    #[error("guest path {0:?} is given twice")]
    Duplicate(String),
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

fn check_guest_path(path: &str) -> Result<(), ViewError> {
    let bad = |why| Err(ViewError::BadGuestPath { path: path.to_string(), why });
    if !path.starts_with('/') {
        return bad("must be absolute");
    }
    if path == "/" {
        return bad("cannot mount over /");
    }
    if path.len() >= PATH_MAX
        || path.ends_with('/')
        || components(path).any(|c| c == "." || c == "..")
        || path.contains("//")
    {
        return bad("must be normalised (no '.', '..', '//' or trailing '/')");
    }
    if is_reserved(path) {
        return bad("/tmp, /dev, /proc and /sys are provided by tenantvm");
    }
    Ok(())
}

/// Whether a guest path is the view's own (`/tmp`, `/dev`, `/proc`, `/sys` or below).
pub fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|r| path == *r || path.starts_with(&format!("{r}/")))
}

/// Inode number for a directory of the view.
fn view_ino(path: &str) -> u64 {
    // FNV-1a: stable across runs, so a reset VM sees the same numbers.
    path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) | 1
}

impl View {
    /// Nothing but the view's own files and an empty 16 MiB `/tmp`.
    pub fn empty() -> View {
        View {
            mounts: Vec::new(),
            tmp_limit: DEFAULT_TMP_BYTES,
            source: FsConfig { tmp_bytes: DEFAULT_TMP_BYTES, ..Default::default() },
            open_files: Default::default(),
        }
    }

    /// Opens every allowed root (with the host's normal resolution: the operator chose these
    /// paths) and keeps `O_PATH` descriptors to them.
    pub fn new(cfg: &FsConfig) -> Result<View, ViewError> {
        let mut entries: Vec<(PathBuf, String)> = Vec::new();
        for p in &cfg.allow_read {
            let abs = std::path::absolute(p)
                .map_err(|e| ViewError::Host { path: p.display().to_string(), error: e.to_string() })?;
            let guest = normalise_host(&abs);
            entries.push((abs, guest));
        }
        entries.extend(cfg.mounts.iter().cloned());
        let mut mounts: Vec<Mount> = Vec::new();
        for (host, guest) in entries {
            check_guest_path(&guest)?;
            if mounts.iter().any(|m| m.guest == guest) {
                // The same path allowed twice (e.g. a default and the operator's) is harmless
                // if it is the same host path; a remap onto an allowed path is not.
                continue;
            }
            let host_err =
                |e: std::io::Error| ViewError::Host { path: host.display().to_string(), error: e.to_string() };
            let (fd, stat) = hostfs::open_root(&host).map_err(host_err)?;
            let root = if stat.is_dir() {
                Root::Dir(Arc::new(fd), stat)
            } else {
                // A file: keep its directory and name, so that it can be read later.
                let real = std::fs::canonicalize(&host).map_err(host_err)?;
                let parent_path = real.parent().unwrap_or(Path::new("/"));
                let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let (parent, _) = hostfs::open_root(parent_path).map_err(host_err)?;
                Root::File { parent: Arc::new(parent), name, stat }
            };
            mounts.push(Mount { guest, root });
        }
        mounts.sort_by(|a, b| a.guest.cmp(&b.guest));
        Ok(View { mounts, tmp_limit: cfg.tmp_bytes, source: cfg.clone(), open_files: Default::default() })
    }

    /// Reads host file `name` in `parent` (whose metadata is `stat`), sharing the copy with
    /// every other open of the same unchanged file.
    pub fn read_host_file(
        &self,
        parent: &OwnedFd,
        name: &str,
        stat: &FileStat,
    ) -> Result<(Arc<[u8]>, FileStat), Errno> {
        let key = (stat.dev, stat.ino, stat.size, stat.mtime);
        if let Some(data) = self.open_files.lock().ok().and_then(|m| m.get(&key).and_then(std::sync::Weak::upgrade)) {
            return Ok((data, *stat));
        }
        let (data, st) = hostfs::read_file(parent.as_fd(), name)?;
        if let Ok(mut m) = self.open_files.lock() {
            m.retain(|_, w| w.strong_count() > 0);
            m.insert((st.dev, st.ino, st.size, st.mtime), Arc::downgrade(&data));
        }
        Ok((data, st))
    }

    /// The configuration it was made from.
    pub fn source(&self) -> &FsConfig {
        &self.source
    }

    /// Size limit of `/tmp`.
    pub fn tmp_limit(&self) -> u64 {
        self.tmp_limit
    }

    /// Guest paths with something mounted (for docs and tests).
    pub fn mount_points(&self) -> Vec<&str> {
        self.mounts.iter().map(|m| m.guest.as_str()).collect()
    }

    fn mount_at(&self, path: &str) -> Option<Node> {
        let m = self.mounts.iter().find(|m| m.guest == path)?;
        Some(match &m.root {
            Root::Dir(fd, stat) => Node::HostDir { fd: fd.clone(), stat: *stat, path: path.to_string() },
            Root::File { parent, name, stat } => {
                Node::HostFile { parent: parent.clone(), name: name.clone(), stat: *stat }
            }
        })
    }

    fn leads_to_mount(&self, path: &str) -> bool {
        let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
        self.mounts.iter().any(|m| m.guest.starts_with(&prefix))
    }

    /// The view's own entries directly under view directory `path`.
    pub fn view_children(&self, path: &str) -> Vec<(String, u8)> {
        let mut names: BTreeSet<(String, u8)> = BTreeSet::new();
        let own: &[(&str, &str, u8)] = &[
            ("/", "tmp", libc::DT_DIR),
            ("/", "dev", libc::DT_DIR),
            ("/", "proc", libc::DT_DIR),
            ("/", "sys", libc::DT_DIR),
            ("/dev", "null", libc::DT_CHR),
            ("/dev", "zero", libc::DT_CHR),
            ("/dev", "random", libc::DT_CHR),
            ("/dev", "urandom", libc::DT_CHR),
            ("/proc", "self", libc::DT_DIR),
            ("/proc", "cpuinfo", libc::DT_REG),
            ("/proc/self", "exe", libc::DT_LNK),
            ("/proc/self", "maps", libc::DT_REG),
            ("/sys", "devices", libc::DT_DIR),
            ("/sys/devices", "system", libc::DT_DIR),
            ("/sys/devices/system", "cpu", libc::DT_DIR),
            ("/sys/devices/system/cpu", "online", libc::DT_REG),
            ("/sys/devices/system/cpu", "possible", libc::DT_REG),
        ];
        for (dir, name, t) in own {
            if *dir == path {
                names.insert((name.to_string(), *t));
            }
        }
        let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
        for m in &self.mounts {
            if let Some(rest) = m.guest.strip_prefix(&prefix) {
                let first = rest.split('/').next().unwrap_or(rest);
                let is_leaf = !rest.contains('/');
                let t = match (&m.root, is_leaf) {
                    (Root::File { .. }, true) => libc::DT_REG,
                    _ => libc::DT_DIR,
                };
                names.insert((first.to_string(), t));
            }
        }
        names.into_iter().collect()
    }

    /// Resolves `path` (relative paths from `cwd`).  `follow_last`: follow a symlink in the
    /// last component (stat vs lstat, O_NOFOLLOW).  `exe` is the target of `/proc/self/exe`.
    pub fn resolve(&self, tmp: &Tmpfs, exe: &[u8], cwd: &str, path: &[u8], follow_last: bool) -> Result<Node, Errno> {
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        if path.len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let path = std::str::from_utf8(path).map_err(|_| Errno::ENOENT)?;
        let mut links = 0;
        let node = self.walk(tmp, exe, if path.starts_with('/') { "/" } else { cwd }, path, follow_last, &mut links)?;
        if path.ends_with('/') && !is_dir(&node, tmp) {
            return Err(Errno::ENOTDIR);
        }
        Ok(node)
    }

    fn walk(
        &self,
        tmp: &Tmpfs,
        exe: &[u8],
        start: &str,
        path: &str,
        follow_last: bool,
        links: &mut u32,
    ) -> Result<Node, Errno> {
        // `at` is the guest path of `loc`, always a directory while components remain.
        let mut at = start.to_string();
        let mut loc = if start == "/" {
            Node::ViewDir { path: "/".into() }
        } else {
            self.walk(tmp, exe, "/", start, true, links)?
        };
        let comps: Vec<&str> = components(path).collect();
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            if comp.len() > 255 {
                return Err(Errno::ENAMETOOLONG);
            }
            if !is_dir(&loc, tmp) {
                return Err(Errno::ENOTDIR);
            }
            if *comp == "." {
                continue;
            }
            if *comp == ".." {
                at = match at.rfind('/') {
                    Some(0) | None => "/".to_string(),
                    Some(i) => at[..i].to_string(),
                };
                loc = self.walk(tmp, exe, "/", &at, true, links)?;
                continue;
            }
            let next = self.child(&loc, &at, comp, last, tmp, exe)?;
            if let Node::Symlink { target, .. } = &next {
                if !last || follow_last {
                    *links += 1;
                    if *links > MAX_LINKS {
                        return Err(Errno(libc::ELOOP));
                    }
                    let target = std::str::from_utf8(target).map_err(|_| Errno::ENOENT)?;
                    let rest = comps[i + 1..].join("/");
                    let spliced = if rest.is_empty() { target.to_string() } else { format!("{target}/{rest}") };
                    let from = if target.starts_with('/') { "/" } else { at.as_str() };
                    return self.walk(tmp, exe, from, &spliced, follow_last, links);
                }
            }
            at = join(&at, comp);
            loc = next;
        }
        Ok(loc)
    }

    fn child(&self, loc: &Node, at: &str, name: &str, last: bool, tmp: &Tmpfs, exe: &[u8]) -> Result<Node, Errno> {
        let path = join(at, name);
        if let Some(node) = self.mount_at(&path) {
            return Ok(node);
        }
        match loc {
            Node::HostDir { fd, path: dir_path, .. } => {
                let _ = dir_path;
                let (child, stat) = hostfs::step(fd.as_fd(), name)?;
                Ok(match stat.kind() {
                    libc::S_IFLNK => Node::Symlink { target: hostfs::readlink(child.as_fd())?, stat },
                    libc::S_IFDIR => Node::HostDir { fd: Arc::new(child), stat, path },
                    _ => Node::HostFile { parent: fd.clone(), name: name.to_string(), stat },
                })
            }
            Node::Tmp { ino, .. } => match tmp.lookup(*ino, name) {
                Ok(ino) => Ok(Node::Tmp { ino, path }),
                Err(e) if e == Errno::ENOENT && last => Ok(Node::TmpMissing { dir: *ino, name: name.to_string() }),
                Err(e) => Err(e),
            },
            Node::ViewDir { .. } => match path.as_str() {
                "/tmp" => Ok(Node::Tmp { ino: tmpfs::ROOT, path }),
                "/dev/null" => Ok(Node::Dev(Device::Null)),
                "/dev/zero" => Ok(Node::Dev(Device::Zero)),
                "/dev/random" => Ok(Node::Dev(Device::Random)),
                "/dev/urandom" => Ok(Node::Dev(Device::Urandom)),
                "/proc/self/exe" => Ok(Node::Symlink {
                    target: exe.to_vec(),
                    stat: FileStat::synthetic(dev::PROC, view_ino(&path), libc::S_IFLNK | 0o777, 0),
                }),
                "/proc/self/maps" => Ok(Node::Generated(Generated::Maps)),
                "/proc/cpuinfo" => Ok(Node::Generated(Generated::CpuInfo)),
                "/sys/devices/system/cpu/online" | "/sys/devices/system/cpu/possible" => {
                    Ok(Node::Generated(Generated::CpuOnline))
                }
                "/dev"
                | "/proc"
                | "/proc/self"
                | "/sys"
                | "/sys/devices"
                | "/sys/devices/system"
                | "/sys/devices/system/cpu" => Ok(Node::ViewDir { path }),
                _ if self.leads_to_mount(&path) => Ok(Node::ViewDir { path }),
                _ => Err(Errno::ENOENT),
            },
            _ => Err(Errno::ENOTDIR),
        }
    }
}

/// Whether a node is a directory.
pub fn is_dir(node: &Node, tmp: &Tmpfs) -> bool {
    match node {
        Node::ViewDir { .. } | Node::HostDir { .. } => true,
        Node::Tmp { ino, .. } => tmp.stat(*ino).is_some_and(|s| s.is_dir()),
        _ => false,
    }
}

/// Metadata of a node (`TmpMissing` has none: ENOENT).
pub fn stat(node: &Node, tmp: &Tmpfs) -> Result<FileStat, Errno> {
    Ok(match node {
        Node::ViewDir { path } => {
            let d = if path.starts_with("/proc") {
                dev::PROC
            } else if path.starts_with("/sys") {
                dev::SYSFS
            } else if path.starts_with("/dev") {
                dev::DEVTMPFS
            } else {
                dev::VIEW
            };
            let mut st = FileStat::synthetic(d, view_ino(path), libc::S_IFDIR | 0o555, 4096);
            st.nlink = 2;
            st
        }
        Node::HostDir { stat, .. } | Node::HostFile { stat, .. } | Node::Symlink { stat, .. } => *stat,
        Node::Tmp { ino, .. } => tmp.stat(*ino).ok_or(Errno::ENOENT)?,
        Node::TmpMissing { .. } => return Err(Errno::ENOENT),
        Node::Dev(d) => d.stat(),
        Node::Generated(g) => {
            let (d, mode, size, ino) = match g {
                Generated::Maps => (dev::PROC, 0o444, 0, 0x5001),
                Generated::CpuInfo => (dev::PROC, 0o444, 0, 0x5002),
                Generated::CpuOnline => (dev::SYSFS, 0o444, 4096, 0x5003),
            };
            FileStat::synthetic(d, ino, libc::S_IFREG | mode, size)
        }
    })
}

fn normalise_host(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    format!("/{}", out.join("/"))
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(FsConfig { allow_read, mounts, tmp_bytes });

impl crate::persist::Persist for Device {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        use Device::*;
        e.u64(match self {
            Null => 0,
            Zero => 1,
            Random => 2,
            Urandom => 3,
        });
        Ok(())
    }
    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use Device::*;
        Ok([Null, Zero, Random, Urandom][d.tag("device", 4)? as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        dir: PathBuf,
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// allowed/{a.txt, sub/b.txt, abs -> /etc/passwd-like secret, rel -> ../secret.txt,
    /// inside -> sub/b.txt, up -> .., loop1 -> loop2 -> loop1}; secret.txt next to allowed/.
    fn tree() -> Tree {
        // Not under /tmp: the guest's /tmp is the view's own, so host paths there cannot be
        // allowed.  The build tree is the natural place, unless the checkout itself is under
        // /tmp (CI may clone there): then /var/tmp.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let base = if is_reserved(&manifest.to_string_lossy()) {
            PathBuf::from("/var/tmp/tenantvm-tests")
        } else {
            manifest.join("../../target")
        };
        let dir = base.join("tvm-view-tests").join(format!("{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("allowed/sub")).unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        std::fs::write(dir.join("allowed/a.txt"), b"A").unwrap();
        std::fs::write(dir.join("allowed/sub/b.txt"), b"B").unwrap();
        std::fs::write(dir.join("secret.txt"), b"SECRET").unwrap();
        symlink(dir.join("secret.txt"), dir.join("allowed/abs")).unwrap();
        symlink("../secret.txt", dir.join("allowed/rel")).unwrap();
        symlink("sub/b.txt", dir.join("allowed/inside")).unwrap();
        symlink("..", dir.join("allowed/up")).unwrap();
        symlink("loop2", dir.join("allowed/loop1")).unwrap();
        symlink("loop1", dir.join("allowed/loop2")).unwrap();
        Tree { dir }
    }

    fn view(t: &Tree) -> (View, String) {
        let allowed = t.dir.join("allowed");
        let cfg = FsConfig {
            allow_read: vec![allowed.clone()],
            mounts: vec![(allowed.clone(), "/app".into())],
            tmp_bytes: 1 << 20,
        };
        (View::new(&cfg).unwrap(), allowed.display().to_string())
    }

    fn read(v: &View, path: &str) -> Result<Vec<u8>, Errno> {
        let tmp = Tmpfs::new(1 << 20);
        match v.resolve(&tmp, b"/app/a.txt", "/", path.as_bytes(), true)? {
            Node::HostFile { parent, name, .. } => Ok(hostfs::read_file(parent.as_fd(), &name)?.0.to_vec()),
            other => panic!("{path}: not a host file: {other:?}"),
        }
    }

    #[test]
    fn allowed_files_read_at_their_path_and_remapped() {
        let t = tree();
        let (v, allowed) = view(&t);
        assert_eq!(read(&v, &format!("{allowed}/a.txt")).unwrap(), b"A");
        assert_eq!(read(&v, "/app/sub/b.txt").unwrap(), b"B");
        assert_eq!(read(&v, "/app/inside").unwrap(), b"B", "a symlink inside the allowed tree works");
        assert_eq!(read(&v, "/app/sub/../a.txt").unwrap(), b"A");
        assert_eq!(read(&v, "/proc/self/exe").unwrap(), b"A", "/proc/self/exe leads to the program");
    }

    #[test]
    fn escapes_are_refused() {
        let t = tree();
        let (v, allowed) = view(&t);
        let secret = t.dir.join("secret.txt").display().to_string();
        for p in [
            secret.clone(),
            format!("{allowed}/../secret.txt"),
            "/app/../secret.txt".into(),
            "/app/abs".into(),
            "/app/rel".into(),
            "/app/up/secret.txt".into(),
            format!("/app/up/up/up/up/up/up/up/up/up/up/up/up/up/up/{secret}"),
            "/proc/self/root/etc/passwd".into(),
            "/proc/self/fd/0".into(),
            "/proc/1/root".into(),
            "/etc/passwd".into(),
        ] {
            let r = read(&v, &p);
            assert!(r.is_err(), "{p} must not be readable, got {r:?}");
        }
        assert_eq!(read(&v, "/app/loop1").unwrap_err(), Errno(libc::ELOOP));
        assert_eq!(read(&v, "/nothing/here").unwrap_err(), Errno::ENOENT);
        assert_eq!(read(&v, "/app/a.txt/x").unwrap_err(), Errno::ENOTDIR);
    }

    #[test]
    fn view_directories_lead_to_allowed_paths_only() {
        let t = tree();
        let (v, allowed) = view(&t);
        let tmp = Tmpfs::new(1 << 20);
        let first = components(&allowed).next().unwrap().to_string();
        let root: Vec<String> = v.view_children("/").into_iter().map(|(n, _)| n).collect();
        assert!(root.contains(&first) && root.contains(&"app".to_string()) && root.contains(&"tmp".to_string()));
        assert!(matches!(v.resolve(&tmp, b"", "/", format!("/{first}").as_bytes(), true), Ok(Node::ViewDir { .. })));
        assert!(matches!(v.resolve(&tmp, b"", "/app", b"sub", true), Ok(Node::HostDir { .. })));
        assert!(matches!(v.resolve(&tmp, b"", "/", b"/app/inside", false), Ok(Node::Symlink { .. })));
        assert!(matches!(v.resolve(&tmp, b"", "/", b"/tmp/new", true), Ok(Node::TmpMissing { .. })));
        assert_eq!(v.resolve(&tmp, b"", "/", b"/tmp/a/b", true).unwrap_err(), Errno::ENOENT);
        assert!(matches!(v.resolve(&tmp, b"", "/", b"/dev/urandom", true), Ok(Node::Dev(Device::Urandom))));
    }

    #[test]
    fn bad_configurations_are_errors() {
        for guest in ["relative", "/", "/tmp/x", "/proc", "/a/../b", "/a/"] {
            let cfg = FsConfig { mounts: vec![("/".into(), guest.into())], ..Default::default() };
            assert!(matches!(View::new(&cfg), Err(ViewError::BadGuestPath { .. })), "{guest}");
        }
        let cfg = FsConfig { allow_read: vec!["/does/not/exist".into()], ..Default::default() };
        assert!(matches!(View::new(&cfg), Err(ViewError::Host { .. })));
    }
}
