//! tenantvm's VMM: runs unmodified, statically linked Linux x86-64 programs inside tiny KVM
//! virtual machines, and resets them to a snapshot after every request.
//!
//! A VM here is one vCPU, a few memory slots and a 2 KiB guest kernel
//! ([`guest`]): the program runs in user mode, its system calls either stay in the guest
//! kernel (time, randomness, TLS) or exit to the host, where [`syscalls`] emulates them with
//! Linux semantics.  Nothing the program does can reach the host except through that table.
//!
//! Module map:
//! - [`kvm`]       the host's KVM: platform detection (hardware KVM or PVM), capabilities
//! - [`memory`]    host mappings of guest memory, bounds-checked copies, the user address map
//! - [`paging`]    4-level page tables with W^X
//! - [`elf`]       ELF64 parsing and validation; [`stack`] the initial process stack
//! - [`vm`]        one KVM VM + vCPU set up for the guest kernel; [`vcpu`] one `KVM_RUN`
//! - [`machine`]   a booted program: the run loop dispatching exits to [`syscalls`]
//! - [`timer`]     wall-clock limits that interrupt `KVM_RUN` from outside
//! - [`program`]   the one-shot API: [`program::run`]
//!
//! `unsafe` lives only in [`memory::mapping`], [`kvm::raw`] and [`timer`].
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod doctor;
pub mod elf;
pub mod error;
pub mod guest;
pub mod kvm;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod paging;
pub mod program;
pub mod reset;
pub mod restore_view;
pub mod sandbox;
pub mod stack;
pub mod syscalls;
pub mod tenant;
pub mod timer;
pub mod vcpu;
pub mod vm;
pub mod worker;

pub use error::{Error, Failure, GuestFault, RequestTooLarge, Result};
pub use program::{run, ExitKind, Program, RunConfig, RunOutcome};
pub use syscalls::api::{ApiLimits, Request, Response};
pub use syscalls::{Input, Output};
pub use tenant::{BootError, Tenant, TenantConfig};
pub use tenant::{CallError, CallResult, Instance, InstanceStats};
