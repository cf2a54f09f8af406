//! Shared helpers of the VM tests: where the guest programs are, and the KVM policy.
//!
//! Guest programs come from `apps/build/` (built by `make -C apps`), or from the directory
//! in `TENANTVM_APPS`.  When `TENANTVM_REQUIRE_KVM=1` (set by the test command), a host
//! without a usable /dev/kvm fails the tests instead of skipping them.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod hog;

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

/// False (and the test should return) when KVM is missing and not required.
pub fn kvm_or_skip() -> bool {
    match vmm::kvm::host() {
        Ok(_) => true,
        Err(e) if std::env::var("TENANTVM_REQUIRE_KVM").as_deref() == Ok("1") => {
            panic!("KVM is required (TENANTVM_REQUIRE_KVM=1) but unusable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
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
