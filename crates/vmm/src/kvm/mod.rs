//! The host's KVM: which platform it is, what it can do, opened once per process.
//!
//! Two platforms need different guest set-ups (see docs/platform.md):
//! - **Hardware** KVM (VT-x / AMD-V): the classic set-up, ring-3 program, ring-0 guest kernel,
//!   `syscall`/`sysretq`.
//! - **PVM** (a paravirtual KVM for hosts without hardware virtualization, as in many cloud
//!   VMs): the guest kernel registers a per-vCPU page with a hypercall and returns to user
//!   mode with `int $0x19`; kernel page-table entries must be user-accessible and the program
//!   runs on a second page table (CR3 | 0x1000) that maps only the lower half.
//!
//! [`host()`] detects which once and caches it with the capabilities tenantvm relies on.

#[allow(unsafe_code)]
pub mod raw;

use std::sync::OnceLock;

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// MSR that exists only on PVM hosts; it reads as "PVM" (0x4d5650) there.
const MSR_PVM_SIGNATURE: u32 = 0x4b56_4d11;
const PVM_SIGNATURE: u64 = 0x4d_5650;

/// Which kind of KVM this host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Hardware-assisted KVM: AMD-V or Intel VT-x.
    Hardware(HardwareKind),
    /// PVM: paravirtualized KVM running guests with shadow page tables.
    Pvm,
}

/// The hardware virtualization extension behind a [`Platform::Hardware`] KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwareKind {
    /// AMD-V (SVM).
    AmdSvm,
    /// Intel VT-x (VMX).
    IntelVmx,
    /// Neither flag was visible (e.g. a nested set-up that hides it).
    Unknown,
}

impl Platform {
    /// Short name for reports: "pvm", "amd-svm", "intel-vmx", "hardware".
    pub fn name(&self) -> &'static str {
        match self {
            Platform::Pvm => "pvm",
            Platform::Hardware(HardwareKind::AmdSvm) => "amd-svm",
            Platform::Hardware(HardwareKind::IntelVmx) => "intel-vmx",
            Platform::Hardware(HardwareKind::Unknown) => "hardware",
        }
    }

    /// True on PVM.
    pub fn is_pvm(&self) -> bool {
        matches!(self, Platform::Pvm)
    }
}

/// CPU features of the host that shape the guest set-up.
#[derive(Debug, Clone, Copy)]
pub struct CpuFeatures {
    /// XSAVE/XRSTOR available (required: the reset path restores vector state with XRSTOR).
    pub xsave: bool,
    /// RDFSBASE/WRFSBASE available: the guest kernel can set FS/GS bases without an MSR write.
    pub fsgsbase: bool,
    /// The TSC runs at a constant rate (the in-guest clock depends on it).
    pub invariant_tsc: bool,
    /// AT_HWCAP for programs: CPUID.1:EDX, as Linux reports it.
    pub hwcap: u32,
}

/// The opened `/dev/kvm` with what tenantvm learned about it.
pub struct Host {
    kvm: Kvm,
    /// Which platform.
    pub platform: Platform,
    /// `KVM_GET_API_VERSION` (12 on every Linux since 2.6.22).
    pub api_version: i32,
    /// The CPUID table KVM supports, given to every vCPU.
    pub cpuid: kvm_bindings::CpuId,
    /// Host CPU features that matter for the guest set-up.
    pub cpu: CpuFeatures,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` is available (dirty-page reset of instances).
    pub manual_dirty_log: bool,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("platform", &self.platform)
            .field("api_version", &self.api_version)
            .field("cpu", &self.cpu)
            .field("manual_dirty_log", &self.manual_dirty_log)
            .finish()
    }
}

impl Host {
    /// The underlying KVM handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Named capabilities and whether this host has them, for `tenantvm doctor`.
    pub fn capabilities(&self) -> Vec<(&'static str, bool)> {
        let k = &self.kvm;
        vec![
            ("KVM_CAP_SYNC_REGS", k.check_extension(Cap::SyncRegs)),
            ("KVM_CAP_IMMEDIATE_EXIT", k.check_extension(Cap::ImmediateExit)),
            ("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", self.manual_dirty_log),
            ("KVM_CAP_XSAVE", k.check_extension(Cap::Xsave)),
            ("KVM_CAP_XCRS", k.check_extension(Cap::Xcrs)),
            ("KVM_CAP_GET_TSC_KHZ", k.check_extension(Cap::GetTscKhz)),
            ("KVM_CAP_USER_MEMORY", k.check_extension(Cap::UserMemory)),
            ("cpu: xsave", self.cpu.xsave),
            ("cpu: fsgsbase", self.cpu.fsgsbase),
            ("cpu: invariant tsc", self.cpu.invariant_tsc),
        ]
    }
}

static HOST: OnceLock<std::result::Result<Host, String>> = OnceLock::new();

/// The host's KVM, opened and probed on first use.
///
/// Fails with [`Error::KvmUnavailable`] when `/dev/kvm` cannot be used and with
/// [`Error::MissingCapability`] when it lacks something the VMM depends on.
pub fn host() -> Result<&'static Host> {
    let describe = |e: Error| match e {
        Error::KvmUnavailable(why) => why,
        other => other.to_string(),
    };
    match HOST.get_or_init(|| open().map_err(describe)) {
        Ok(host) => Ok(host),
        Err(message) => Err(Error::KvmUnavailable(message.clone())),
    }
}

/// Starts [`host()`]'s opening and probing of `/dev/kvm` on another thread, unless it is done
/// or under way, and returns at once; a later [`host()`] waits for it.  Loading a snapshot
/// file calls it first, so that a new process's KVM probe (1-3 ms on an idle PVM host, over
/// 10 ms on a loaded one: `KVM_GET_SUPPORTED_CPUID`, the probe VM and its first memory slot)
/// overlaps the reading and checking of the file.
pub fn open_in_background() {
    if HOST.get().is_none() {
        // A failure to start the thread only loses the overlap: host() opens it then.
        let _ = std::thread::Builder::new().name("tenantvm-kvm-open".into()).spawn(|| {
            let _ = host();
        });
    }
}

fn open() -> Result<Host> {
    let kvm = Kvm::new().map_err(|e| Error::KvmUnavailable(format!("/dev/kvm: {e}")))?;
    let api_version = kvm.get_api_version();
    if api_version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::KvmUnavailable(format!("unsupported KVM API version {api_version}")));
    }
    for (cap, name) in [
        (Cap::SyncRegs, "KVM_CAP_SYNC_REGS"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::Xsave, "KVM_CAP_XSAVE"),
        (Cap::Xcrs, "KVM_CAP_XCRS"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    let manual_dirty_log = kvm.check_extension_raw(kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into()) != 0;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let cpu = cpu_features();
    if !cpu.xsave {
        return Err(Error::MissingCapability("XSAVE in the host CPU"));
    }
    let platform = detect_platform(&kvm)?;
    Ok(Host { kvm, platform, api_version, cpuid, cpu, manual_dirty_log })
}

/// PVM answers a private MSR with its signature; hardware KVM refuses the read.
fn detect_platform(kvm: &Kvm) -> Result<Platform> {
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    let vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index: MSR_PVM_SIGNATURE, ..Default::default() }])
        .expect("one MSR entry fits");
    let read = vcpu.get_msrs(&mut msrs).unwrap_or(0);
    // Pays the process's first-memory-slot cost here, once (see raw::first_memory_slot); only
    // a speed-up, so a failure is left for the first real slot to report.
    let _ = raw::first_memory_slot(&vm);
    if read == 1 && msrs.as_slice()[0].data == PVM_SIGNATURE {
        return Ok(Platform::Pvm);
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| flags.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == flag));
    let kind = if has("svm") || std::path::Path::new("/sys/module/kvm_amd").exists() {
        HardwareKind::AmdSvm
    } else if has("vmx") || std::path::Path::new("/sys/module/kvm_intel").exists() {
        HardwareKind::IntelVmx
    } else {
        HardwareKind::Unknown
    };
    Ok(Platform::Hardware(kind))
}

fn cpu_features() -> CpuFeatures {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let (leaf1, leaf7, max_ext) = (__cpuid(1), __cpuid_count(7, 0), __cpuid(0x8000_0000).eax);
    let invariant_tsc = max_ext >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0;
    CpuFeatures { xsave: leaf1.ecx & (1 << 26) != 0, fsgsbase: leaf7.ebx & 1 != 0, invariant_tsc, hwcap: leaf1.edx }
}
