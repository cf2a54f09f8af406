//! What this host offers, and what one VM round trip costs here (`tenantvm doctor`).

use std::time::{Duration, Instant};

use crate::elf::tiny_executable;
use crate::error::{Error, Result};
use crate::guest::api;
use crate::kvm;
use crate::program::{run, ExitKind, Program, RunConfig};

/// The host's KVM as `tenantvm doctor` reports it.
#[derive(Debug, Clone)]
pub struct Report {
    /// "pvm", "amd-svm", "intel-vmx" or "hardware".
    pub platform: &'static str,
    /// How the guest is set up on it.
    pub guest_setup: &'static str,
    /// KVM API version.
    pub api_version: i32,
    /// Capabilities and CPU features, each present or not.
    pub capabilities: Vec<(&'static str, bool)>,
}

/// Describes the host's KVM (fails when there is none).
pub fn report() -> Result<Report> {
    let host = kvm::host()?;
    let guest_setup = if host.platform.is_pvm() {
        "PVM user mode: guest kernel registers its VIF page (hypercall 0x100c), returns to the program with int $0x19"
    } else {
        "classic: ring-3 program, ring-0 guest kernel, syscall/sysretq"
    };
    Ok(Report {
        platform: host.platform.name(),
        guest_setup,
        api_version: host.api_version,
        capabilities: host.capabilities(),
    })
}

/// A program that makes `n` tenantvm no-op calls (each one exit to the host), then exits.
fn round_trip_program(n: u32) -> Program {
    let mut code = vec![0xbb];
    code.extend_from_slice(&n.max(1).to_le_bytes()); //       mov $n, %ebx
    code.push(0xb8);
    code.extend_from_slice(&(api::NOP as u32).to_le_bytes()); // 1: mov $NOP, %eax
    code.extend_from_slice(&[0x0f, 0x05]); //                        syscall
    code.extend_from_slice(&[0xff, 0xcb]); //                        dec %ebx
    code.extend_from_slice(&[0x75, 0xf5]); //                        jnz 1b
    code.extend_from_slice(&[0xb8, 60, 0, 0, 0]); //                 mov $SYS_exit, %eax
    code.extend_from_slice(&[0x31, 0xff]); //                        xor %edi, %edi
    code.extend_from_slice(&[0x0f, 0x05]); //                        syscall
    Program::from_bytes(tiny_executable(&code)).expect("the round-trip program is a valid ELF")
}

/// Cost of one exit from running guest code to the host and back (a forwarded system call),
/// and of creating, booting and destroying a VM.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    /// Median time per exit round trip.
    pub exit: Duration,
    /// Median time to create, boot, run and destroy a minimal VM.
    pub vm_lifecycle: Duration,
}

fn time_run(program: &Program) -> Result<(Duration, u64)> {
    let mut cfg = RunConfig::new(vec![b"round-trip".to_vec()]);
    cfg.memory = 8 << 20;
    let t = Instant::now();
    let out = run(program, cfg)?;
    let elapsed = t.elapsed();
    if out.exit != ExitKind::Exited(0) {
        return Err(Error::GuestKernel(format!("the round-trip program failed: {:?}", out.exit)));
    }
    Ok((elapsed, out.exits))
}

/// Measures [`RoundTrip`] with `samples` runs of `exits` exits each (at least 100 exits, so
/// that the difference to a one-exit run is well above timer noise).
pub fn measure(exits: u32, samples: usize) -> Result<RoundTrip> {
    let exits = exits.max(100);
    let short = round_trip_program(1);
    let long = round_trip_program(exits);
    let mut per_exit = Vec::new();
    let mut lifecycle = Vec::new();
    for _ in 0..samples.max(1) {
        let (t1, e1) = time_run(&short)?;
        let (tn, en) = time_run(&long)?;
        lifecycle.push(t1);
        per_exit.push(tn.saturating_sub(t1) / (en.saturating_sub(e1).max(1) as u32));
    }
    per_exit.sort();
    lifecycle.sort();
    Ok(RoundTrip { exit: per_exit[per_exit.len() / 2], vm_lifecycle: lifecycle[lifecycle.len() / 2] })
}
