//! How a tenant is booted and served: the user's configuration, kept by its snapshot.

use std::path::PathBuf;
use std::time::Duration;

use crate::syscalls::api::{ApiLimits, Request};

/// How a tenant is booted and served.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// argv, including `argv[0]`.
    pub args: Vec<Vec<u8>>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<Vec<u8>>,
    /// Guest RAM in bytes (rounded up to 2 MiB).
    pub memory: u64,
    /// Stack size (default: 8 MiB, at most an eighth of memory).
    pub stack_size: Option<u64>,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Time limit of booting to the snapshot, warm-up included.
    pub boot_timeout: Duration,
    /// Reset after every request (true) or keep state between requests (false).
    pub ephemeral: bool,
    /// Bytes of shared memory mapped at SHARED_VA in every instance (0: none).
    pub shared_memory: u64,
    /// File backing the shared memory, so that several processes share it (None: private
    /// to this process).
    pub shared_path: Option<PathBuf>,
    /// Request and response size limits.
    pub limits: ApiLimits,
    /// Requests served before the snapshot is taken (to warm up JITs, caches).
    pub warmup: Vec<Request>,
    /// Most bytes of stdout/stderr kept per request.
    pub output_limit: usize,
    /// What the program sees of the host's files, and the size of its /tmp.
    pub fs: crate::linux::FsConfig,
}

impl TenantConfig {
    /// Defaults: 64 MiB, 1 s per request, 10 s boot, ephemeral, no shared memory.
    pub fn new(args: Vec<Vec<u8>>) -> TenantConfig {
        TenantConfig {
            args,
            env: Vec::new(),
            memory: 64 << 20,
            stack_size: None,
            timeout: Duration::from_secs(1),
            boot_timeout: Duration::from_secs(10),
            ephemeral: true,
            shared_memory: 0,
            shared_path: None,
            limits: ApiLimits::default(),
            warmup: Vec::new(),
            output_limit: 64 << 10,
            fs: crate::linux::FsConfig { tmp_bytes: crate::linux::view::DEFAULT_TMP_BYTES, ..Default::default() },
        }
    }
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(TenantConfig {
    args,
    env,
    memory,
    stack_size,
    timeout,
    boot_timeout,
    ephemeral,
    shared_memory,
    shared_path,
    limits,
    warmup,
    output_limit,
    fs
});
