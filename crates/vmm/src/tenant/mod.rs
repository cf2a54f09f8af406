//! Tenants: a program booted once to its first `wait_for_request`, frozen into a
//! [`Snapshot`], and served by any number of [`Instance`]s made from it.
//!
//! ```text
//!  Tenant::boot:  program::boot ──run──> wait_for_request ──(warm-up requests)──> freeze
//!  Tenant::instance:  new VM, RAM = MAP_PRIVATE of the snapshot memfd (copy-on-write)
//! ```
//!
//! Instances of one tenant share the snapshot's pages; each pays only for what it writes.
//!
//! Layers, each importing only those below it: [`config`] (what the user asked for) <
//! [`snapshot`] (the frozen state) < [`instance`] (one VM serving requests, and its batches)
//! < this module (booting, making instances).  [`snapshot_file`] writes a snapshot to a file
//! and reads it back.

pub mod config;
pub mod instance;
pub mod snapshot;
pub mod snapshot_file;

use std::sync::Arc;
use std::time::Instant;

pub use config::TenantConfig;
pub use instance::{CallError, CallResult, Instance, InstanceStats, MAX_BATCH};
pub use snapshot::Snapshot;
pub use snapshot_file::SnapshotFileError;

use crate::error::{Error, Failure, Result};
use crate::guest::layout::VC_REQUEST;
use crate::guest::PAGE_SIZE;
use crate::machine::{Machine, RunEnd};
use crate::memory::{Mapping, Memfd};
use crate::program::{boot, captured_io, BootSpec, Program};
use crate::syscalls::Stop;
use crate::vm::SharedRegion;

/// Why a tenant could not be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A host-side failure.
    #[error(transparent)]
    Host(#[from] Error),
    /// The program ended or failed before its first `wait_for_request`.
    #[error("the tenant failed before its first wait_for_request: {failure}")]
    Guest {
        /// How it failed.
        failure: Failure,
        /// Its stdout up to then.
        stdout: Vec<u8>,
        /// Its stderr up to then.
        stderr: Vec<u8>,
    },
}

/// A booted tenant: makes instances.
#[derive(Debug, Clone)]
pub struct Tenant {
    snapshot: Arc<Snapshot>,
    kv: Option<crate::kv::KvAccess>,
}

fn shared_region(cfg: &TenantConfig) -> Result<Option<Arc<SharedRegion>>> {
    if cfg.shared_memory == 0 {
        return Ok(None);
    }
    let size = cfg.shared_memory.next_multiple_of(PAGE_SIZE);
    let file = match &cfg.shared_path {
        None => Memfd::new("tenantvm-shared", size)?,
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|source| Error::Os { op: "opening the shared-memory file", source })?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) < size {
                f.set_len(size).map_err(|source| Error::Os { op: "sizing the shared-memory file", source })?;
            }
            Memfd::from_fd(f.into())?
        }
    };
    Ok(Some(Arc::new(SharedRegion { map: Mapping::shared(&file, size as usize)? })))
}

impl Tenant {
    /// Boots `program` to its first `wait_for_request`, runs the warm-up requests, and
    /// freezes it.
    pub fn boot(program: &Program, cfg: TenantConfig) -> Result<Tenant, BootError> {
        let started = Instant::now();
        let deadline = started + cfg.boot_timeout;
        let request_area = (cfg.limits.max_request as u64).next_multiple_of(PAGE_SIZE);
        let shared = shared_region(&cfg)?;
        let spec = BootSpec {
            args: &cfg.args,
            env: &cfg.env,
            memory: cfg.memory,
            stack_size: cfg.stack_size,
            exe_path: None,
            request_area,
            shared: shared.clone(),
            fast_syscalls: true,
            io: captured_io(cfg.output_limit),
            limits: Some(cfg.limits),
            fs: &cfg.fs,
            file_pages: false,
        };
        let mut m = boot(program, spec)?;
        let fail = |m: &Machine, end: RunEnd| BootError::Guest {
            failure: end.failure(m.memory_exhausted, cfg.boot_timeout, cfg.memory),
            stdout: m.io.stdout.captured().to_vec(),
            stderr: m.io.stderr.captured().to_vec(),
        };
        let mut warmups = cfg.warmup.iter();
        loop {
            match m.run(deadline)? {
                RunEnd::Stopped(Stop::WaitForRequest | Stop::RespondedAndWaiting(_)) => {}
                RunEnd::Stopped(Stop::Responded(_)) => continue,
                end => return Err(fail(&m, end)),
            }
            let Some(req) = warmups.next() else { break };
            let bytes =
                instance::encode(req, request_area).map_err(|e| Error::Config(format!("warm-up request: {e}")))?;
            m.vm.vcpu_area.write(VC_REQUEST, &bytes);
        }
        let snapshot = snapshot::freeze(m, shared, request_area, cfg, started.elapsed())?;
        Ok(Tenant { snapshot: Arc::new(snapshot), kv: None })
    }

    /// Starts from the snapshot file at `path` (see [`snapshot_file`]) without booting: its
    /// RAM is mapped from the file as the copy-on-write base of every instance.  With
    /// `shared_path`, the tenant's shared memory (if it has any) is that file instead of the
    /// one it was booted with.
    pub fn from_snapshot_file(
        path: &std::path::Path,
        shared_path: Option<std::path::PathBuf>,
    ) -> Result<Tenant, SnapshotFileError> {
        let mut loaded = snapshot_file::read(path)?;
        if shared_path.is_some() {
            loaded.config.shared_path = shared_path;
        }
        let started = std::time::Instant::now();
        let shared = shared_region(&loaded.config)?;
        loaded.steps.push("shared memory", started.elapsed());
        Ok(Tenant { snapshot: Arc::new(Snapshot::from_file(loaded, shared)), kv: None })
    }

    /// Writes the snapshot to `path` (see [`snapshot_file`]).
    pub fn write_snapshot_file(&self, path: &std::path::Path) -> Result<(), SnapshotFileError> {
        snapshot_file::write(&self.snapshot, path)
    }

    /// A new instance, at the snapshot's state.
    pub fn instance(&self) -> Result<Instance> {
        Instance::with_kv(self.snapshot.clone(), self.kv.clone())
    }

    /// This tenant with `kv` as the key-value store of the instances made from now on (the
    /// embedder's store, bound to the tenant's namespace; not part of the snapshot).
    pub fn with_kv(mut self, kv: Option<crate::kv::KvAccess>) -> Tenant {
        self.kv = kv;
        self
    }

    /// The snapshot.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}
