//! tenantvm's VMM: runs unmodified, statically linked Linux x86-64 programs inside tiny KVM
//! virtual machines, and resets them to a snapshot after every request.
//!
//! A VM here is one vCPU, a few memory slots and a 2 KiB guest kernel (`guest`): the
//! program runs in user mode, its system calls either stay in the guest kernel (time,
//! randomness, TLS) or exit to the host, where `syscalls` emulates them with Linux
//! semantics.  Nothing the program does can reach the host except through that table.
//!
//! # Public surface
//!
//! What the Python extension (`crates/pyext`), the examples and the integration tests use, and
//! nothing else: the modules are crate-private and this file re-exports their API.
//! - one-shot runs: [`Program`], [`run`] with a [`RunConfig`] → [`RunOutcome`] / [`ExitKind`]
//! - tenants: [`Tenant::boot`] with a [`TenantConfig`] → [`Instance::call`] /
//!   [`Instance::call_batch`]; [`worker`] runs instances on vCPU threads of their own
//! - errors: [`Error`] (host), [`Failure`] (how a program failed), [`GuestFault`]
//! - host checks: [`doctor`], [`sandbox`] (the seccomp filter of vCPU threads), [`kvm_host`]
//!
//! # Module map
//!
//! Lower layers first: a module uses only modules listed before it (so no two modules use
//! each other); each bullet starts with the modules it is about, read left to right.
//! `tools/layers.py` (run by `make lint` and `tests/test_layers.py`) checks this against the
//! code, and that no two submodules of a module use each other.
//! - `guest`         the guest/host contract generated from `guest/layout.h`, the kernel image
//! - `steps`         step timings of loading a snapshot file and creating an instance
//!   ([`steps::Steps`], for benchmarks)
//! - `elf`           ELF64 parsing and validation
//! - `error`         host errors, guest faults, [`Failure`]s
//! - `host`          the host-OS calls outside KVM and mappings: clocks, randomness, stdio, eventfd
//! - `persist`       the binary encoding of state in snapshot files (each type a snapshot holds
//!   implements it next to its definition)
//! - `kv`            the host side of the tenant key-value calls ([`kv::KvStore`], [`kv::KvAccess`])
//! - `kvm`           the host's KVM: platform detection (hardware KVM or PVM), raw ioctls
//! - `memory`        host mappings of guest memory (`ReadOnlyMapping` for snapshots),
//!   bounds-checked copies, the user address map
//! - `paging`, `pages`, `stack`   4-level page tables with W^X; the program's memory on demand
//!   (its page tables at run time and the page pool); the initial process stack
//! - `timer`         wall-clock limits that interrupt `KVM_RUN` from outside
//! - `restore_view`  what in-guest resets copy back (slot 3)
//! - `vm`, `vcpu`    one KVM VM + vCPU set up for the guest kernel; one `KVM_RUN`
//! - `linux`         the emulated process's files as plain data: descriptors, the file-system
//!   view (allowed host paths, `/dev`, `/proc`, `/tmp`) and its safe host resolution, threads
//! - `syscalls`      the Linux system-call table and the emulated process state
//! - `loader`        a guest's initial RAM: kernel, page tables, program image, stack
//! - `machine`       a booted program: the run loop dispatching exits to `syscalls`, and how a
//!   run failed (`RunEnd::failure`, the one classification of failures); `machine::sched`
//!   switches the vCPU between the program's threads (the thread table is `linux::threads`)
//! - `signal_frame`  delivering a CPU fault to the program's signal handler, `rt_sigreturn`
//!   (an extension of `Machine`)
//! - `reset`         restoring an instance's RAM from its snapshot
//! - `program`       [`Program`], the one boot path (`program::boot`), the one-shot [`run`]
//! - `tenant`        [`Tenant`]: `config` < `snapshot` (the frozen state) < `instance` (one VM
//!   serving requests; `instance::batch` the batch block and its loop) < booting
//! - `sandbox`, `worker`, `doctor`   seccomp for vCPU threads, instances on vCPU threads,
//!   the host report
//!
//! `unsafe` is denied crate-wide and allowed only in the modules that own a raw resource:
//! `memory::mapping` (mmaps), `kvm::raw`, `vm` and `vcpu` (KVM file descriptors and the
//! `kvm_run` area), `timer` (POSIX timers and their signal), `host` (clocks, getrandom, fds).
//! Outside them, one test (`sandbox`'s, which forks to show that a vCPU thread may not).
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod doctor;
mod elf;
mod error;
mod guest;
#[allow(unsafe_code)]
mod host;
pub mod kv;
mod kvm;
mod linux;
mod loader;
mod machine;
mod memory;
mod pages;
mod paging;
mod persist;
mod program;
mod reset;
mod restore_view;
pub mod sandbox;
mod signal_frame;
mod stack;
pub mod steps;
mod syscalls;
mod tenant;
#[allow(unsafe_code)]
mod timer;
#[allow(unsafe_code)]
mod vcpu;
#[allow(unsafe_code)]
mod vm;
pub mod worker;

pub use elf::ElfError;
pub use error::{Error, Failure, GuestFault, RequestTooLarge, Result};
pub use guest::api::NAMES as API_SYSCALLS;
pub use kvm::host as kvm_host;
pub use linux::FsConfig;
pub use machine::MAX_STARVATION_GRACE;
pub use program::{run, ExitKind, Program, RunConfig, RunOutcome};
pub use syscalls::api::{ApiLimits, Request, Response};
pub use syscalls::{Input, Output, SyscallCounts};
pub use tenant::{
    BootError, CallError, CallResult, Instance, InstanceStats, Snapshot, SnapshotFileError, Tenant, TenantConfig,
    MAX_BATCH,
};

/// Internals the cargo-fuzz targets (`fuzz/`) drive directly.  Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::elf::ElfImage;
    pub use crate::guest::layout::REQUEST_VA;
    pub use crate::loader::window;
    pub use crate::syscalls::api::{encode_request, encoded_len, HEADER_ENTRY, REQUEST_HEADER};
}
