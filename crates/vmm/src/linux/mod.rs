//! The emulated Linux process state that is not memory or registers: open files, the file
//! system the program sees, its private `/tmp` and its working directory.
//!
//! Everything here is plain data over which the system-call handlers in
//! [`crate::syscalls`] are functions, so it can be tested without a VM:
//!
//! | module        | owns                                                              |
//! |---------------|-------------------------------------------------------------------|
//! | [`view`]      | the file-system view: allowed host paths, remaps, `/dev`, `/proc`, `/sys`, `/tmp`; path resolution |
//! | [`hostfs`]    | opening host files safely (openat2 beneath pre-opened roots, one component at a time) |
//! | [`tmpfs`]     | the private, size-limited in-memory `/tmp`                       |
//! | [`fdtable`]   | descriptors, open file descriptions, pipes, eventfds             |
//! | [`synthetic`] | generated files: `/proc/cpuinfo`, the format of `/proc/self/maps` |
//! | [`stat`]      | `struct stat` / `struct statx` as the guest sees them            |
//! | [`threads`]   | the threads: who runs, who waits for what, saved CPU states        |
//! | [`errno`]     | errno values                                                      |
//!
//! Reset: [`Files`] is part of [`crate::syscalls::Process`], which a snapshot holds by value;
//! a reset clones it back (only when a request made a system call that may have changed it).
//! Host files are read into memory when opened, so the state owns no host descriptor except
//! the view's root directories, which are shared (`Arc`) by every clone and never change.

pub mod errno;
pub mod fdtable;
pub mod hostfs;
pub mod stat;
pub mod synthetic;
pub mod threads;
pub mod tmpfs;
pub mod view;

use std::sync::Arc;

pub use fdtable::FdTable;
pub use view::{FsConfig, View};

/// Open files, the view, `/tmp` and the working directory.
#[derive(Debug, Clone)]
pub struct Files {
    /// Descriptors and what they refer to.
    pub fds: FdTable,
    /// What the program can see of the host (shared, immutable).
    pub view: Arc<View>,
    /// The private `/tmp`.
    pub tmp: tmpfs::Tmpfs,
    /// Current working directory, absolute, normalised (no `.`/`..`, no trailing `/`).
    pub cwd: String,
}

impl Files {
    /// Standard streams open, cwd `/`, empty `/tmp` of the view's size.
    pub fn new(view: Arc<View>) -> Files {
        let tmp = tmpfs::Tmpfs::new(view.tmp_limit());
        Files { fds: FdTable::default(), view, tmp, cwd: "/".into() }
    }
}

impl Default for Files {
    fn default() -> Self {
        Files::new(Arc::new(View::empty()))
    }
}
