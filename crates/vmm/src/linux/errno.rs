//! Linux errno values, as the guest sees them (`-errno` in rax).

/// A Linux errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

#[allow(missing_docs)]
impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ESRCH: Errno = Errno(libc::ESRCH);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EMFILE: Errno = Errno(libc::EMFILE);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    pub const ESPIPE: Errno = Errno(libc::ESPIPE);
    pub const EPIPE: Errno = Errno(libc::EPIPE);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
}
