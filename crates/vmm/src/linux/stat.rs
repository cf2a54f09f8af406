//! File metadata as the guest sees it, and its two encodings (`struct stat`, `struct statx`).

/// `st_dev` of the pseudo file systems.
pub mod dev {
    /// pipes and eventfds (pipefs / anon_inodefs).
    pub const PIPEFS: u64 = 0xc;
    /// `/dev` (devtmpfs).
    pub const DEVTMPFS: u64 = 0x5;
    /// `/proc`.
    pub const PROC: u64 = 0x16;
    /// `/sys`.
    pub const SYSFS: u64 = 0x15;
    /// the private `/tmp`.
    pub const TMPFS: u64 = 0x2d;
    /// directories that exist only to lead to allowed paths.
    pub const VIEW: u64 = 0x2e;
}

/// What `stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStat {
    /// st_dev.
    pub dev: u64,
    /// st_ino.
    pub ino: u64,
    /// st_mode (type and permission bits).
    pub mode: u32,
    /// st_nlink.
    pub nlink: u32,
    /// st_uid.
    pub uid: u32,
    /// st_gid.
    pub gid: u32,
    /// st_rdev.
    pub rdev: u64,
    /// st_size.
    pub size: u64,
    /// st_mtime (seconds, nanoseconds); atime and ctime report the same.
    pub mtime: (i64, u32),
}

impl FileStat {
    /// A synthetic object of type/permissions `mode`.
    pub fn synthetic(dev: u64, ino: u64, mode: u32, size: u64) -> FileStat {
        FileStat { dev, ino, mode, nlink: 1, uid: 0, gid: 0, rdev: 0, size, mtime: (0, 0) }
    }

    /// The host's metadata of an open host file.
    pub fn from_host(st: &rustix::fs::Stat) -> FileStat {
        FileStat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: 0,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        }
    }

    /// The file type bits.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// `struct stat` (x86-64, 144 bytes).
    pub fn to_stat(self) -> [u8; 144] {
        let mut b = [0u8; 144];
        let blocks = self.size.div_ceil(512);
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16..24].copy_from_slice(&u64::from(self.nlink).to_le_bytes());
        b[24..28].copy_from_slice(&self.mode.to_le_bytes());
        b[28..32].copy_from_slice(&self.uid.to_le_bytes());
        b[32..36].copy_from_slice(&self.gid.to_le_bytes());
        b[40..48].copy_from_slice(&self.rdev.to_le_bytes());
        b[48..56].copy_from_slice(&self.size.to_le_bytes());
        b[56..64].copy_from_slice(&4096u64.to_le_bytes());
        b[64..72].copy_from_slice(&blocks.to_le_bytes());
        for at in [72, 88, 104] {
            b[at..at + 8].copy_from_slice(&self.mtime.0.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&u64::from(self.mtime.1).to_le_bytes());
        }
        b
    }

    /// `struct statx` (256 bytes) with the basic fields.
    pub fn to_statx(self) -> [u8; 256] {
        let mut b = [0u8; 256];
        let basic = 0x7ffu32; // STATX_BASIC_STATS
        b[0..4].copy_from_slice(&basic.to_le_bytes());
        b[4..8].copy_from_slice(&4096u32.to_le_bytes());
        b[16..20].copy_from_slice(&self.nlink.to_le_bytes());
        b[20..24].copy_from_slice(&self.uid.to_le_bytes());
        b[24..28].copy_from_slice(&self.gid.to_le_bytes());
        b[28..30].copy_from_slice(&(self.mode as u16).to_le_bytes());
        b[32..40].copy_from_slice(&self.ino.to_le_bytes());
        b[40..48].copy_from_slice(&self.size.to_le_bytes());
        b[48..56].copy_from_slice(&self.size.div_ceil(512).to_le_bytes());
        // atime, btime, ctime, mtime: { i64 sec; u32 nsec; i32 pad }
        for at in [64, 80, 96, 112] {
            b[at..at + 8].copy_from_slice(&self.mtime.0.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&self.mtime.1.to_le_bytes());
        }
        let (rmaj, rmin) = (major(self.rdev), minor(self.rdev));
        let (dmaj, dmin) = (major(self.dev), minor(self.dev));
        b[128..132].copy_from_slice(&rmaj.to_le_bytes());
        b[132..136].copy_from_slice(&rmin.to_le_bytes());
        b[136..140].copy_from_slice(&dmaj.to_le_bytes());
        b[140..144].copy_from_slice(&dmin.to_le_bytes());
        b
    }
}

fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

/// A device number from major and minor.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(FileStat { dev, ino, mode, nlink, uid, gid, rdev, size, mtime });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        let d = makedev(1, 9);
        assert_eq!((major(d), minor(d)), (1, 9));
        let d = makedev(259, 70000);
        assert_eq!((major(d), minor(d)), (259, 70000));
    }

    #[test]
    fn stat_layout_matches_libc() {
        use std::mem::offset_of;
        let st = FileStat {
            dev: 7,
            ino: 42,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            uid: 3,
            gid: 4,
            rdev: 0,
            size: 1000,
            mtime: (5, 6),
        };
        let raw = st.to_stat();
        assert_eq!(std::mem::size_of::<libc::stat>(), raw.len());
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap());
        assert_eq!(u64_at(offset_of!(libc::stat, st_dev)), 7);
        assert_eq!(u64_at(offset_of!(libc::stat, st_ino)), 42);
        assert_eq!(u32_at(offset_of!(libc::stat, st_mode)), libc::S_IFREG | 0o644);
        assert_eq!((u32_at(offset_of!(libc::stat, st_uid)), u32_at(offset_of!(libc::stat, st_gid))), (3, 4));
        assert_eq!(u64_at(offset_of!(libc::stat, st_size)), 1000);
        assert_eq!(u64_at(offset_of!(libc::stat, st_blocks)), 2);
        assert_eq!((u64_at(offset_of!(libc::stat, st_mtime)), u64_at(offset_of!(libc::stat, st_mtime_nsec))), (5, 6));
    }
}
