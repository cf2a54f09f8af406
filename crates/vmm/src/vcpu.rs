//! One `KVM_RUN`, turned into a platform-neutral [`Exit`].
//!
//! The guest kernel leaves the VM only with `out` to a small set of ports (see
//! guest/layout.h), so most of KVM's exit reasons mean something went wrong.

use kvm_ioctls::VcpuExit;

use crate::error::{Error, Result};
use crate::vm::Vm;

/// Why `KVM_RUN` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `out` to `port`.
    Io {
        /// The port.
        port: u16,
    },
    /// An MMIO access outside every memory slot (a wild physical address).
    Mmio {
        /// Guest-physical address.
        address: u64,
    },
    /// `hlt`.
    Halt,
    /// The vCPU shut down (triple fault).
    Shutdown,
    /// A signal interrupted `KVM_RUN` (the deadline timer, or another signal).
    Interrupted,
    /// KVM could not enter the guest.
    FailEntry {
        /// Hardware failure reason.
        reason: u64,
    },
    /// KVM reported an internal error (e.g. an instruction it could not emulate).
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// Any other exit reason.
    Other {
        /// Description.
        what: &'static str,
    },
}

/// Enters the guest once.
pub fn run(vm: &mut Vm) -> Result<Exit> {
    let exit = match vm.vcpu().run() {
        Ok(VcpuExit::IoOut(port, _)) | Ok(VcpuExit::IoIn(port, _)) => Exit::Io { port },
        Ok(VcpuExit::MmioRead(address, _)) | Ok(VcpuExit::MmioWrite(address, _)) => Exit::Mmio { address },
        Ok(VcpuExit::Hlt) => Exit::Halt,
        Ok(VcpuExit::Shutdown) => Exit::Shutdown,
        Ok(VcpuExit::Intr) => Exit::Interrupted,
        Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry { reason },
        Ok(VcpuExit::InternalError) => {
            let run = vm.vcpu().get_kvm_run();
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live union
            // member.
            let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
            Exit::InternalError { suberror }
        }
        Ok(VcpuExit::Debug(_)) => Exit::Other { what: "debug" },
        Ok(VcpuExit::Exception) => Exit::Other { what: "exception" },
        Ok(_) => Exit::Other { what: "unexpected exit reason" },
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
        Err(e) => return Err(Error::Kvm { op: "KVM_RUN", source: e }),
    };
    Ok(exit)
}
