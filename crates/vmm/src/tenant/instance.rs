//! An instance: one VM made from a tenant's snapshot, serving one request at a time.
//!
//! ```text
//!   AtSnapshot --call--> running --respond--> ephemeral: reset --> AtSnapshot
//!                                        \--> stateful: AfterResponse --call--> (run to the
//!                                             next wait_for_request) --> running ...
//!   any guest error (fault, timeout, no response) --> reset --> AtSnapshot
//!   a host error (a failed KVM ioctl)             --> Poisoned (every later call fails)
//! ```
//!
//! In the ephemeral steady state a call is one `KVM_RUN` and one exit: the registers of the
//! snapshot (with rax = the request) go in through kvm_run's sync area, the guest kernel's
//! reset entry reloads the FPU state and segment bases, the program handles the request and
//! its `respond` is the exit.  The reset that follows touches only changed pages
//! ([`crate::reset`]).
//!
//! Every request the host sees to its end, alone or inside a batch ([`batch`]), ends in
//! [`Instance::finish`]: output taken, result classified, instance reset or kept.

mod batch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::batch::BatchBlock;
use super::config::TenantConfig;
use super::snapshot::Snapshot;
use crate::error::{Error, Failure, GuestFault, RequestTooLarge};
use crate::guest::layout::*;
use crate::guest::vcd;
use crate::host::fill_random;
use crate::kvm;
use crate::machine::{Machine, RunEnd};
use crate::memory::{GuestMemory, Mapping};
use crate::program::captured_io;
use crate::reset::{ResetReport, ResetTracker};
use crate::steps::StepClock;
use crate::syscalls::api::{encode_request, Request, Response};
use crate::syscalls::{Output, Stop, SyscallCounts};
use crate::vm::{self, Vm};

pub use self::batch::MAX_BATCH;

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Registers and memory are the snapshot's (registers still to be loaded).
    AtSnapshot,
    /// Stateful: stopped in `respond`; must run to the next `wait_for_request`.
    AfterResponse,
    /// Stateful: stopped in `respond_and_wait`; ready for the next request.
    Waiting,
    /// A host-side failure left the VM unusable.
    Poisoned(String),
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// The program's response.
    pub response: Response,
    /// What the program wrote to stdout during the call.
    pub stdout: Vec<u8>,
    /// What the program wrote to stderr during the call.
    pub stderr: Vec<u8>,
    /// VM exits during the call.
    pub exits: u64,
}

/// A failed call, with the output the program produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct CallError {
    /// What went wrong.
    pub kind: Failure,
    /// stdout during the call.
    pub stdout: Vec<u8>,
    /// stderr during the call.
    pub stderr: Vec<u8>,
}

/// Counters of an instance, cumulative unless named `last_*`.
#[derive(Debug, Clone, Default)]
pub struct InstanceStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// `KVM_RUN` entries.
    pub entries: u64,
    /// VM exits.
    pub exits: u64,
    /// Exits of the last call.
    pub last_call_exits: u64,
    /// Resets done.
    pub resets: u64,
    /// Pages restored by all resets.
    pub pages_restored: u64,
    /// Total time spent resetting.
    pub reset_time: Duration,
    /// The last reset.
    pub last_reset: ResetReport,
    /// System calls (host and in-guest), by number.
    pub syscalls: SyscallCounts,
    /// System calls the host answered (each one cost a VM exit), by number: the ones the
    /// guest kernel could not answer itself, supported or not.
    pub host_syscalls: BTreeMap<u64, u64>,
    /// Time to create the instance (VM, memory, kernel start).
    pub create_time: Duration,
    /// How long each step of creating it took.
    pub create_steps: crate::steps::Steps,
    /// Batches run ([`Instance::call_batch`] with more than one request).
    pub batches: u64,
    /// Resets done by the guest kernel between batched requests.
    pub guest_resets: u64,
    /// Pages those restored.
    pub guest_pages_restored: u64,
    /// Pages whose Dirty bit those cleared (re-protected: the next write to each is a trapped
    /// page-table write, an `invlpg` and a write fault under PVM; hot pages are not).
    pub guest_pages_reprotected: u64,
    /// Deadlines moved because a light request's thread had waited for a CPU (see
    /// `Machine::run_until`).
    pub starvation_grants: u64,
    /// CPU time the host took on the instance's thread inside `KVM_RUN` (a stall below or
    /// interrupt handling), not charged to the program's time limit (see `Machine::run_until`).
    pub host_stalls: Duration,
}

/// One VM serving a tenant's requests.
pub struct Instance {
    machine: Machine,
    snapshot: Arc<Snapshot>,
    state: State,
    /// The last run did not stop at a system call (a fault, a timeout): the vCPU may be in
    /// user mode or in an exception handler, so the next resume restarts the guest kernel.
    stopped_abnormally: bool,
    tracker: ResetTracker,
    stats: InstanceStats,
    request_len: usize,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("state", &self.state).field("calls", &self.stats.calls).finish()
    }
}

/// `req` encoded for the request area (of `area` bytes), with fresh entropy for its
/// `getrandom` pool: how a request enters a VM, a tenant's warm-ups included.
pub(super) fn encode(req: &Request, area: u64) -> Result<Vec<u8>, RequestTooLarge> {
    let mut entropy = [0u8; 32];
    fill_random(&mut entropy);
    encode_request(req, &entropy, area as usize)
}

fn take_output(out: &mut Output) -> Vec<u8> {
    match out {
        Output::Capture { buf, truncated, .. } => {
            *truncated = false;
            std::mem::take(buf)
        }
        _ => Vec::new(),
    }
}

impl Instance {
    /// Creates a VM whose RAM is a copy-on-write view of the snapshot.
    pub fn new(snapshot: Arc<Snapshot>) -> crate::Result<Instance> {
        Instance::with_kv(snapshot, None)
    }

    /// Like [`Instance::new`], with the tenant's key-value store (the request API's `kv_*`
    /// calls; without one they return ENOSYS).
    pub fn with_kv(snapshot: Arc<Snapshot>, kv: Option<crate::kv::KvAccess>) -> crate::Result<Instance> {
        let started = Instant::now();
        let mut clock = StepClock::start();
        let host = kvm::host()?;
        let mut ram = GuestMemory::from_snapshot(snapshot.ram().clone())?;
        ram.track_host_writes(true);
        let pages = ram.size() / crate::guest::PAGE_SIZE;
        let kernel_pages = crate::loader::kernel_area(ram.size()) / crate::guest::PAGE_SIZE;
        let vcpu_area =
            Mapping::anonymous(vm::VcpuAreaLayout::new(snapshot.request_area(), snapshot.ram().size()).size as usize)?;
        let slots = vm::OptionalSlots {
            shared: snapshot.shared().cloned(),
            restore_view: Some(snapshot.restore_view().clone()),
            image: None,
        };
        clock.step("RAM and vCPU area: map");
        let vm = Vm::new(host, ram, vcpu_area, slots, true, &mut clock)?;
        let cfg = snapshot.config();
        let io = captured_io(cfg.output_limit);
        let mut machine = Machine::new(vm, snapshot.map().clone(), snapshot.proc().clone(), io, Some(cfg.limits));
        machine.kv = kv;
        machine.keep_ptlog = true;
        clock.step("emulated process: copy");
        let mut tracker = ResetTracker::new(pages, kernel_pages);
        tracker.keep_tables(&crate::pages::Pages::tables(&machine.vm.ram));
        clock.step("reset tracker, page tables");
        machine.start_kernel()?;
        clock.step("guest kernel start (first KVM_RUN)");
        let stats =
            InstanceStats { create_time: started.elapsed(), create_steps: clock.finish(), ..Default::default() };
        Ok(Instance {
            machine,
            snapshot,
            state: State::AtSnapshot,
            stopped_abnormally: false,
            tracker,
            stats,
            request_len: 0,
        })
    }

    /// Whether the instance can still serve (not poisoned by a host failure).
    pub fn usable(&self) -> bool {
        !matches!(self.state, State::Poisoned(_))
    }

    /// The tenant's configuration.
    pub fn config(&self) -> &TenantConfig {
        self.snapshot.config()
    }

    /// Counters.
    pub fn stats(&self) -> InstanceStats {
        let mut s = self.stats.clone();
        s.entries = self.machine.stats.entries;
        s.exits = self.machine.stats.exits;
        s.starvation_grants = self.machine.stats.starvation_grants;
        s.host_stalls = self.machine.stats.host_stalls;
        s.syscalls = self.machine.syscall_counts();
        s.host_syscalls = self.machine.host_syscall_counts();
        let block = BatchBlock::new(&self.machine.vm.vcpu_area);
        s.guest_resets = block.get(VB_RESETS);
        s.guest_pages_restored = block.get(VB_RESTORED);
        s.guest_pages_reprotected = block.get(VB_REPROTECTED);
        s
    }

    /// Serves `requests`, each once, and discards their results, with the key-value store off
    /// (as during the warm-up before the snapshot).  The guest touches the pages those requests
    /// need (PVM's shadow page tables, the host's copy-on-write, the pages kept writable
    /// between resets), so that the instance's first real requests do not pay for it: a new
    /// CPython instance's first call costs 50-100 ms, its third ~0.3 ms (docs/platform.md).
    /// Only an ephemeral instance is primed (reset after each request); a stateful one is
    /// left as it is.  Fails only when the host failed (the instance is then unusable).
    pub fn prime(&mut self, requests: &[Request]) -> Result<(), CallError> {
        if !self.config().ephemeral {
            return Ok(());
        }
        let kv = self.machine.kv.take();
        let mut outcome = Ok(());
        for req in requests {
            if let Err(e) = self.call(req) {
                if !self.usable() {
                    outcome = Err(e);
                    break;
                }
            }
        }
        self.machine.kv = kv;
        outcome
    }

    /// Serves one request.
    pub fn call(&mut self, req: &Request) -> Result<CallResult, CallError> {
        if let State::Poisoned(why) = &self.state {
            return Err(CallError { kind: Failure::Host(why.clone()), stdout: Vec::new(), stderr: Vec::new() });
        }
        let deadline = Instant::now() + self.config().timeout;
        let bytes = encode(req, self.snapshot.request_area()).map_err(|e| CallError {
            kind: Failure::RequestTooLarge(e),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })?;
        self.stats.calls += 1;
        let exits_before = self.machine.stats.exits;
        let end = self.run_request(&bytes, deadline);
        self.finish(end, self.machine.stats.exits - exits_before)
    }

    /// Finishes a request the host saw to its end (`end`, after `exits` exits): takes its
    /// output, classifies how it ended, and resets the instance (ephemeral tenants, and any
    /// failure) or keeps its state (a stateful tenant's response).  A host failure poisons it.
    fn finish(&mut self, end: crate::Result<RunEnd>, exits: u64) -> Result<CallResult, CallError> {
        self.stopped_abnormally = !matches!(end, Ok(RunEnd::Stopped(_)));
        let stdout = take_output(&mut self.machine.io.stdout);
        let stderr = take_output(&mut self.machine.io.stderr);
        self.stats.last_call_exits = exits;
        let outcome = match end {
            Ok(RunEnd::Stopped(Stop::Responded(response))) => Ok((response, State::AfterResponse)),
            Ok(RunEnd::Stopped(Stop::RespondedAndWaiting(response))) => Ok((response, State::Waiting)),
            Ok(end) => {
                let cfg = self.config();
                Err(end.failure(self.machine.memory_exhausted, cfg.timeout, cfg.memory))
            }
            Err(e) => {
                self.state = State::Poisoned(e.to_string());
                self.stats.errors += 1;
                return Err(CallError { kind: Failure::Host(e.to_string()), stdout, stderr });
            }
        };
        match &outcome {
            Ok((_, next)) if !self.config().ephemeral => self.state = next.clone(),
            _ => {
                if let Err(e) = self.reset() {
                    self.state = State::Poisoned(e.to_string());
                }
            }
        }
        match outcome {
            Ok((response, _)) => Ok(CallResult { response, stdout, stderr, exits }),
            Err(kind) => {
                self.stats.errors += 1;
                Err(CallError { kind, stdout, stderr })
            }
        }
    }

    fn run_request(&mut self, request: &[u8], deadline: Instant) -> crate::Result<RunEnd> {
        if self.state == State::AfterResponse {
            match self.machine.run(deadline)? {
                RunEnd::Stopped(Stop::WaitForRequest) => {}
                RunEnd::Stopped(Stop::Responded(_) | Stop::RespondedAndWaiting(_)) => {
                    return Ok(RunEnd::Stopped(Stop::ApiFault(GuestFault::Vm(
                        "respond called twice without wait_for_request".into(),
                    ))))
                }
                other => return Ok(other),
            }
        }
        self.place_request(request);
        self.machine.kv_ops = 0;
        if self.state == State::AtSnapshot {
            self.start_from_snapshot(REQUEST_VA)?;
        } else {
            self.refill_entropy_if_used();
        }
        self.machine.run(deadline)
    }

    /// Puts an encoded request into the request area and zeroes the tail of a longer one
    /// before it, so that no request ever sees another's bytes.
    fn place_request(&mut self, request: &[u8]) {
        self.machine.vm.vcpu_area.write(VC_REQUEST, request);
        let len = request.len();
        if self.request_len > len {
            self.machine.vm.vcpu_area.fill(VC_REQUEST + len as u64, self.request_len - len, 0);
        }
        self.request_len = len;
    }

    fn refill_entropy_if_used(&mut self) {
        let mut pos = [0u8; 8];
        self.machine.vm.vcpu_area.read(vcd(VCD_ENTROPY_POS), &mut pos);
        if u64::from_le_bytes(pos) != 0 {
            self.machine.refill_entropy();
        }
    }

    /// Points the vCPU at the start of a request (its address in `rax`) from the snapshot's
    /// registers, with a full entropy pool.
    fn start_from_snapshot(&mut self, request: u64) -> crate::Result<()> {
        self.refill_entropy_if_used();
        if std::mem::take(&mut self.stopped_abnormally) {
            // Interrupted in user mode, or stopped in an exception handler: bring the vCPU
            // back to the guest kernel's entry state before loading the snapshot's registers.
            self.machine.restart_kernel()?;
        }
        let regs = self.machine.vm.regs();
        *regs = *self.snapshot.regs();
        regs.rax = request;
        self.machine.vm.regs_changed();
        Ok(())
    }

    /// Restores the snapshot: memory (changed pages only), the emulated process, and (at the
    /// next call) the registers.
    pub fn reset(&mut self) -> crate::Result<ResetReport> {
        // The guest undoes the page-table changes at reset_entry, except inside tables the
        // request made: those pages get their snapshot contents here.
        let tracker = &self.tracker;
        crate::pages::filter_log(&self.machine.vm.vcpu_area, &self.machine.vm.ram, |page| tracker.left_alone(page));
        let (ram, fd) = self.machine.vm.ram_and_fd();
        let report = self.tracker.reset(fd, ram, self.snapshot.ram_view())?;
        if std::mem::take(&mut self.machine.proc_touched) {
            self.machine.proc.clone_from(self.snapshot.proc());
        }
        self.machine.memory_exhausted = false;
        self.state = State::AtSnapshot;
        self.stats.resets += 1;
        self.stats.pages_restored += report.pages_restored;
        self.stats.reset_time += report.duration;
        self.stats.last_reset = report;
        Ok(report)
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError { kind: Failure::Host(e.to_string()), stdout: Vec::new(), stderr: Vec::new() }
    }
}
