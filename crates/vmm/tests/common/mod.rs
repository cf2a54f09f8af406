//! Shared helpers of the VM tests: where the guest programs are, and the KVM policy.
//!
//! Guest programs come from `apps/build/` (built by `make -C apps`), or from the directory
//! in `TENANTVM_APPS`.  VM tests run only where KVM is usable (see [`require_kvm`]): elsewhere
//! they are reported as ignored, never as passed.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod hog;
pub mod probe;
pub mod stall;

pub fn apps_dir() -> PathBuf {
    match std::env::var_os("TENANTVM_APPS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../apps/build"),
    }
}

pub fn app(name: &str) -> vmm::Program {
    let path = apps_dir().join(name);
    vmm::Program::from_file(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (build the guest programs with `make -C apps`)", path.display()))
}

/// The first call of every VM test.  Such a test is marked
/// `#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]`: on a host without KVM it is
/// built ignored (build.rs decides, and never does under `TENANTVM_REQUIRE_KVM=1`), so it is
/// reported as ignored rather than passed.  One that runs needs KVM: it fails without it.
pub fn require_kvm() {
    if let Err(e) = vmm::kvm_host() {
        panic!("this VM test needs a usable /dev/kvm: {e}")
    }
}

/// Whether tests must not skip anything: `TENANTVM_REQUIRE_KVM=1` (set by `make test`).
pub fn strict() -> bool {
    std::env::var("TENANTVM_REQUIRE_KVM").as_deref() == Ok("1")
}

pub fn args(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Boots the tenant `name` (a program of the apps directory) with its config adjusted by `f`.
pub fn tenant(name: &str, f: impl FnOnce(&mut vmm::TenantConfig)) -> vmm::Tenant {
    let mut cfg = vmm::TenantConfig::new(args(&[name]));
    f(&mut cfg);
    vmm::Tenant::boot(&app(name), cfg).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// How a request to one of `misbehave`'s failing endpoints must end.
pub type FailureCheck = fn(&vmm::Failure) -> bool;

/// `misbehave`'s failing endpoints and the typed failure each must give (shared by the
/// single-call and batched tests, so both check the same list).
pub fn misbehave_failures() -> Vec<(&'static str, FailureCheck)> {
    use vmm::{Failure, GuestFault};
    vec![
        ("/fault", |k| matches!(k, Failure::Fault(GuestFault::PageFault { address: 0, .. }))),
        ("/illegal", |k| matches!(k, Failure::Fault(GuestFault::InvalidOpcode { .. }))),
        ("/spin", |k| matches!(k, Failure::Timeout { .. })),
        ("/exit", |k| matches!(k, Failure::NoResponse(m) if m.contains("status 3"))),
        ("/abort", |k| matches!(k, Failure::NoResponse(m) if m.contains("signal 6"))),
        ("/wait", |k| matches!(k, Failure::NoResponse(_))),
        ("/big", |k| matches!(k, Failure::Fault(GuestFault::ResponseTooLarge { what: "body", .. }))),
        ("/badptr", |k| matches!(k, Failure::Fault(GuestFault::BadPointer { address: 0x10, .. }))),
        ("/oom", |k| matches!(k, Failure::OutOfMemory { .. })),
    ]
}
