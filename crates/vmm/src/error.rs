//! Errors: what can go wrong on the host side ([`Error`]), what a guest can do wrong
//! ([`GuestFault`]), and how a program failed to do what its caller waited for ([`Failure`]).
//!
//! The split matters: an [`Error`] means the VM could not be built or driven (no KVM, bad
//! program, bad configuration, a failed ioctl); a [`GuestFault`] is something the program did
//! and is reported as the way its run ended, never as a host failure.  A [`Failure`] is the
//! one description of a failed run, call or boot: every kind carries the data its message and
//! the Python exception need (`crates/pyext` converts it in one function).

use std::time::Duration;

use crate::elf::ElfError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Host-side failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` is missing or cannot be opened.
    #[error("KVM is not available: {0}")]
    KvmUnavailable(String),
    /// The host's KVM lacks a capability tenantvm needs.
    #[error("the host KVM lacks {0}")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The errno KVM returned.
        source: kvm_ioctls::Error,
    },
    /// A host system call (mmap, memfd, timer, ...) failed.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program file is not something tenantvm can run.
    #[error("invalid program: {0}")]
    InvalidProgram(#[from] ElfError),
    /// The program does not fit the configured memory.
    #[error("program does not fit: {0}")]
    DoesNotFit(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The guest kernel did not start (PVM registration failed, unexpected first exit).
    #[error("guest kernel failed to start: {0}")]
    GuestKernel(String),
    /// An operation was asked of a VM in a state that does not allow it.
    #[error("{0}")]
    State(&'static str),
}

impl Error {
    /// Wraps a KVM ioctl error with what was being done.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    /// Wraps the current OS error with what was being done.
    pub fn last_os(op: &'static str) -> Error {
        Error::Os { op, source: std::io::Error::last_os_error() }
    }
}

/// A CPU exception the program caused, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    /// #PF: an access to an unmapped or protected address.
    #[error("page fault at address {address:#x} ({access}) at rip {rip:#x}")]
    PageFault {
        /// The faulting address (CR2).
        address: u64,
        /// Instruction pointer.
        rip: u64,
        /// The CPU's page-fault error code.
        error_code: u64,
        /// "read", "write" or "execute", from the error code.
        access: &'static str,
    },
    /// #UD: an illegal instruction.
    #[error("illegal instruction at rip {rip:#x}")]
    InvalidOpcode {
        /// Instruction pointer.
        rip: u64,
    },
    /// #GP: a privileged instruction or a protection violation.
    #[error("general protection fault (error code {error_code:#x}) at rip {rip:#x}")]
    GeneralProtection {
        /// Instruction pointer.
        rip: u64,
        /// The CPU's error code (a selector, or 0).
        error_code: u64,
    },
    /// #DE: integer division by zero or overflow.
    #[error("divide error at rip {rip:#x}")]
    DivideError {
        /// Instruction pointer.
        rip: u64,
    },
    /// Any other exception vector.
    #[error("CPU exception {vector} (error code {error_code:#x}) at rip {rip:#x}")]
    Exception {
        /// The exception vector (0-31).
        vector: u8,
        /// Instruction pointer.
        rip: u64,
        /// The CPU's error code, or 0.
        error_code: u64,
    },
    /// The vCPU shut down (triple fault): the guest's state was beyond repair.
    #[error("triple fault (vCPU shutdown) at rip {rip:#x}")]
    TripleFault {
        /// Instruction pointer at the time of the shutdown.
        rip: u64,
    },
    /// A tenantvm API call passed memory the program cannot access.
    #[error("bad pointer {address:#x} (+{len} bytes) passed to {call}")]
    BadPointer {
        /// The API call.
        call: &'static str,
        /// The address.
        address: u64,
        /// The length that was to be accessed.
        len: u64,
    },
    /// A response part exceeds its configured limit.
    #[error("response {what} of {size} exceeds the limit of {limit}")]
    ResponseTooLarge {
        /// Which part: "body", "headers", "header count".
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// KVM could not run the guest (entry failure, internal error, unexpected exit).
    #[error("the VM stopped unexpectedly: {0}")]
    Vm(String),
}

/// The request does not fit the request area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request of {size} bytes exceeds the limit of {limit} bytes")]
pub struct RequestTooLarge {
    /// Encoded size.
    pub size: usize,
    /// The limit.
    pub limit: usize,
}

/// How a program failed to do what its caller waited for: answer a request, reach its first
/// `wait_for_request`, or run to its exit.  Except for [`Failure::Host`], an instance that
/// reports one has been reset and serves the next call normally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The request does not fit the request area (nothing ran).
    #[error(transparent)]
    RequestTooLarge(RequestTooLarge),
    /// The program ran past its time limit.
    #[error("the program ran past its time limit of {} s", limit.as_secs_f64())]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The program would have waited forever (e.g. a futex wait with no other thread), so it
    /// was stopped before its time limit.
    #[error("the program would never finish ({why}); stopped before its time limit of {} s", limit.as_secs_f64())]
    Deadlock {
        /// What it waited for.
        why: &'static str,
        /// The limit it was stopped before.
        limit: Duration,
    },
    /// The program faulted (a CPU exception, a bad pointer to `respond`, an oversize response).
    #[error(transparent)]
    Fault(GuestFault),
    /// The program ended abnormally after a memory request of it was refused.
    #[error("the program ran out of its {} MiB of memory and {ended}", memory >> 20)]
    OutOfMemory {
        /// The VM's memory in bytes.
        memory: u64,
        /// How it ended ("exited with status 1", "was killed by signal 6", `stopped: <fault>`).
        ended: String,
        /// Its exit status if it exited by itself (e.g. after malloc failed).
        exit_code: Option<i32>,
    },
    /// The program stopped without responding (it exited, was killed, or waited again).
    #[error("no response: the program {0}")]
    NoResponse(String),
    /// The program stopped in a way that makes no sense where it was (e.g. it used the
    /// request API in a one-shot run).
    #[error("the program stopped unexpectedly: {0}")]
    Unexpected(String),
    /// The host failed (a KVM ioctl); the instance is poisoned and every later call fails.
    #[error("the instance failed on the host and is unusable: {0}")]
    Host(String),
}
