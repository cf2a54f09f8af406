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

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{BatchBlock, MAX_BATCH};
use crate::error::{Error, Failure, GuestFault};
use crate::guest::layout::*;
use crate::guest::vcd;
use crate::kvm;
use crate::machine::{Machine, RunEnd};
use crate::memory::{GuestMemory, Mapping};
use crate::reset::{ResetReport, ResetTracker};
use crate::syscalls::api::{encode_request, encode_request_at, Request, Response};
use crate::syscalls::fs::Io;
use crate::syscalls::process::fill_random;
use crate::syscalls::{Input, Output, Stop, SyscallCounts};
use crate::tenant::Snapshot;
use crate::vm::{self, Vm};

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
    /// Time to create the instance (VM, memory, kernel start).
    pub create_time: Duration,
    /// Batches run ([`Instance::call_batch`] with more than one request).
    pub batches: u64,
    /// Resets done by the guest kernel between batched requests.
    pub guest_resets: u64,
    /// Pages those restored.
    pub guest_pages_restored: u64,
    /// Deadlines moved because a light request's thread had waited for a CPU (see
    /// [`crate::machine::Machine::run_until`]).
    pub starvation_grants: u64,
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

fn fresh_io(limit: usize) -> Io {
    Io {
        stdin: Input::Bytes { data: Vec::new(), pos: 0 },
        stdout: Output::capture(limit),
        stderr: Output::capture(limit),
    }
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
        let started = Instant::now();
        let host = kvm::host()?;
        let mut ram = GuestMemory::from_snapshot(snapshot.ram.clone())?;
        ram.track_host_writes(true);
        let pages = ram.size() / crate::guest::PAGE_SIZE;
        let kernel_pages = crate::loader::kernel_area(ram.size()) / crate::guest::PAGE_SIZE;
        let vcpu_area =
            Mapping::anonymous(vm::VcpuAreaLayout::new(snapshot.request_area, snapshot.ram.size()).size as usize)?;
        let vm = Vm::new(host, ram, vcpu_area, snapshot.shared.clone(), Some(snapshot.restore_view.clone()), true)?;
        let cfg = &snapshot.config;
        let io = fresh_io(cfg.output_limit);
        let mut machine = Machine::new(vm, snapshot.map.clone(), snapshot.proc.clone(), io, Some(cfg.limits));
        machine.start_kernel()?;
        let stats = InstanceStats { create_time: started.elapsed(), ..Default::default() };
        Ok(Instance {
            machine,
            snapshot,
            state: State::AtSnapshot,
            stopped_abnormally: false,
            tracker: ResetTracker::new(pages, kernel_pages),
            stats,
            request_len: 0,
        })
    }

    /// Whether the instance can still serve (not poisoned by a host failure).
    pub fn usable(&self) -> bool {
        !matches!(self.state, State::Poisoned(_))
    }

    /// The tenant's configuration.
    pub fn config(&self) -> &crate::tenant::TenantConfig {
        &self.snapshot.config
    }

    /// Counters.
    pub fn stats(&self) -> InstanceStats {
        let mut s = self.stats.clone();
        s.entries = self.machine.stats.entries;
        s.exits = self.machine.stats.exits;
        s.starvation_grants = self.machine.stats.starvation_grants;
        s.syscalls = self.machine.syscall_counts();
        let block = BatchBlock::new(&self.machine.vm.vcpu_area);
        s.guest_resets = block.get(VB_RESETS);
        s.guest_pages_restored = block.get(VB_RESTORED);
        s
    }

    /// Host bytes of this instance's own memory (private copies of RAM pages it wrote).
    pub fn private_pages(&self) -> u64 {
        self.stats.last_reset.hot_pages
    }

    /// Serves one request.
    pub fn call(&mut self, req: &Request) -> Result<CallResult, CallError> {
        if let State::Poisoned(why) = &self.state {
            return Err(CallError { kind: Failure::Host(why.clone()), stdout: Vec::new(), stderr: Vec::new() });
        }
        let cfg = &self.snapshot.config;
        let deadline = Instant::now() + cfg.timeout;
        let mut entropy = [0u8; 32];
        fill_random(&mut entropy);
        let bytes = encode_request(req, &entropy, self.snapshot.request_area as usize).map_err(|e| CallError {
            kind: Failure::RequestTooLarge(e),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })?;
        self.stats.calls += 1;
        let exits_before = self.machine.stats.exits;
        let end = self.run_request(&bytes, deadline);
        self.stopped_abnormally = !matches!(end, Ok(RunEnd::Stopped(_)));
        let stdout = take_output(&mut self.machine.io.stdout);
        let stderr = take_output(&mut self.machine.io.stderr);
        self.stats.last_call_exits = self.machine.stats.exits - exits_before;
        let outcome = match end {
            Ok(RunEnd::Stopped(Stop::Responded(response))) => Ok((response, State::AfterResponse)),
            Ok(RunEnd::Stopped(Stop::RespondedAndWaiting(response))) => Ok((response, State::Waiting)),
            Ok(end) => Err(self.classify(end)),
            Err(e) => {
                self.state = State::Poisoned(e.to_string());
                self.stats.errors += 1;
                return Err(CallError { kind: Failure::Host(e.to_string()), stdout, stderr });
            }
        };
        match &outcome {
            Ok((_, next)) if !self.snapshot.config.ephemeral => self.state = next.clone(),
            _ => {
                if let Err(e) = self.reset() {
                    self.state = State::Poisoned(e.to_string());
                }
            }
        }
        match outcome {
            Ok((response, _)) => Ok(CallResult { response, stdout, stderr, exits: self.stats.last_call_exits }),
            Err(kind) => {
                self.stats.errors += 1;
                Err(CallError { kind, stdout, stderr })
            }
        }
    }

    /// Serves `requests` in order, as separate calls would (each from the snapshot, each with
    /// its own time limit and result), but with the memory resets done by the guest kernel:
    /// a batch of requests that only compute and respond costs one exit in all.
    ///
    /// Stateful tenants and single requests go through [`Instance::call`] one by one.  At most [`MAX_BATCH`] requests, and as many as fit the
    /// request area together, run per `KVM_RUN`.
    pub fn call_batch(&mut self, requests: &[Request]) -> Vec<Result<CallResult, CallError>> {
        self.call_batch_within(requests, None)
    }

    /// [`Instance::call_batch`] that starts no request once `budget` has passed (for callers
    /// that must not be held up long, like an event loop): returns fewer results than
    /// requests then, one per request served, in order; the rest did not run.  At least one
    /// request is always served.
    pub fn call_batch_within(
        &mut self,
        requests: &[Request],
        budget: Option<Duration>,
    ) -> Vec<Result<CallResult, CallError>> {
        let stop_at = budget.map(|b| Instant::now() + b);
        let mut results = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while let Some(first) = rest.first() {
            if !results.is_empty() && stop_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            let packed = if self.can_batch() { self.pack(rest) } else { Vec::new() };
            if packed.len() < 2 {
                results.push(self.call(first));
                rest = &rest[1..];
                continue;
            }
            let before = results.len();
            self.stats.batches += 1;
            self.run_batch(packed, stop_at, &mut results);
            rest = &rest[results.len() - before..];
        }
        results
    }

    fn can_batch(&mut self) -> bool {
        self.snapshot.config.ephemeral && self.state == State::AtSnapshot
    }

    /// Encodes as many of `requests` as fit the request area together (up to [`MAX_BATCH`]),
    /// each at its place in it.
    fn pack(&self, requests: &[Request]) -> Vec<(u64, Vec<u8>)> {
        let area = self.snapshot.request_area as usize;
        let mut packed = Vec::new();
        let mut used = 0usize;
        // Each request's own entropy, drawn from the host with one system call for the lot.
        let mut entropy = [[0u8; 32]; MAX_BATCH];
        fill_random(entropy.as_flattened_mut());
        for (req, entropy) in requests.iter().take(MAX_BATCH).zip(&entropy) {
            let Ok(bytes) = encode_request_at(req, entropy, area - used, REQUEST_VA + used as u64) else { break };
            let at = used as u64;
            used = (used + bytes.len()).next_multiple_of(8).min(area);
            packed.push((at, bytes));
        }
        packed
    }

    /// Runs packed requests, pushing one result per request onto `results`.
    fn run_batch(
        &mut self,
        packed: Vec<(u64, Vec<u8>)>,
        stop_at: Option<Instant>,
        results: &mut Vec<Result<CallResult, CallError>>,
    ) {
        let n = packed.len();
        for (at, bytes) in &packed {
            self.machine.vm.vcpu_area.write(VC_REQUEST + at, bytes);
        }
        let (at, last) = packed.last().expect("a batch has requests");
        self.end_requests_at(*at as usize + last.len());
        let area = &self.machine.vm.vcpu_area;
        let layout = vm::VcpuAreaLayout::new(self.snapshot.request_area, self.snapshot.ram.size());
        let addresses: Vec<u64> = packed.iter().map(|(at, _)| REQUEST_VA + at).collect();
        let block = BatchBlock::new(area);
        block.start(&addresses, (layout.response, layout.response_size), layout.streak, &self.snapshot.config.limits);
        let timeout = self.snapshot.config.timeout;
        let mut check = (timeout / 8).max(Duration::from_millis(1));
        if let Some(t) = stop_at {
            check = check.min(t.saturating_duration_since(Instant::now()).max(Duration::from_micros(200)));
        }
        let mut next = 0;
        while next < n {
            if next > 0 && stop_at.is_some_and(|t| Instant::now() >= t) {
                break; // over the caller's budget: the rest do not run
            }
            // Request `next` starts from the snapshot's registers (the guest kernel starts the
            // ones after it itself).
            let exits_before = self.machine.stats.exits;
            // The guest kernel starts the requests after `next` without telling the host, so
            // the host looks every `CHECK` which one runs: a request's time counts from the
            // first look that saw it running (it may overrun its limit by up to one `CHECK`).
            let mut running = (next as u64, Instant::now());
            let end = self.start_batched(next).and_then(|()| {
                self.machine.run_until(Some(check), |m| {
                    let block = BatchBlock::new(&m.vm.vcpu_area);
                    let now_running = block.get(VB_NEXT);
                    if now_running != running.0 {
                        running = (now_running, Instant::now());
                    }
                    if stop_at.is_some_and(|t| Instant::now() >= t) {
                        // Over budget: the batch ends after the request that runs (the vCPU
                        // is stopped while this runs, so the guest kernel sees it next time).
                        block.set(VB_COUNT, block.get(VB_COUNT).min(now_running + 1));
                    }
                    running.1 + timeout
                })
            });
            self.stopped_abnormally = !matches!(end, Ok(RunEnd::Stopped(_)));
            let exits = self.machine.stats.exits - exits_before;
            let block = BatchBlock::new(&self.machine.vm.vcpu_area);
            // Requests the guest kernel answered (and reset after).
            let count = (block.get(VB_COUNT) as usize).min(n);
            let stopped_at = (block.get(VB_NEXT) as usize).min(count);
            self.stats.calls += (stopped_at - next) as u64;
            for i in next..stopped_at {
                let result = match block.response(i) {
                    Some(Ok(response)) => Ok(CallResult { response, stdout: Vec::new(), stderr: Vec::new(), exits: 0 }),
                    Some(Err(why)) => Err(Failure::Fault(GuestFault::Vm(why))),
                    None => Err(Failure::Fault(GuestFault::Vm(format!("batched request {i} has no response")))),
                };
                results.push(result.map_err(|kind| {
                    self.stats.errors += 1;
                    CallError { kind, stdout: Vec::new(), stderr: Vec::new() }
                }));
            }
            next = stopped_at;
            match end {
                Ok(RunEnd::Stopped(Stop::BatchDone)) if next == count => {
                    if let Some(Ok(last)) = results.last_mut() {
                        last.exits = exits;
                    }
                    self.stats.last_call_exits = exits;
                }
                Ok(RunEnd::Stopped(Stop::BatchDone)) => {
                    // Cannot happen with a correct guest kernel; never loop on it.
                    self.poison("the guest kernel ended a batch before its last request".into(), n - next, results);
                    return;
                }
                Err(e) => {
                    self.poison(e.to_string(), n - next, results);
                    return;
                }
                Ok(end) => {
                    // The host finishes request `next`, as `call` would.
                    self.stats.calls += 1;
                    let stdout = take_output(&mut self.machine.io.stdout);
                    let stderr = take_output(&mut self.machine.io.stderr);
                    self.stats.last_call_exits = exits;
                    let result = match end {
                        RunEnd::Stopped(Stop::Responded(response) | Stop::RespondedAndWaiting(response)) => {
                            Ok(CallResult { response, stdout, stderr, exits })
                        }
                        end => {
                            self.stats.errors += 1;
                            Err(CallError { kind: self.classify(end), stdout, stderr })
                        }
                    };
                    results.push(result);
                    next += 1;
                    if let Err(e) = self.reset() {
                        self.poison(e.to_string(), n - next, results);
                        return;
                    }
                }
            }
        }
        BatchBlock::new(&self.machine.vm.vcpu_area).set(VB_ACTIVE, 0);
    }

    /// Points the vCPU at the start of batched request `i`, from the snapshot's registers.
    fn start_batched(&mut self, i: usize) -> crate::Result<()> {
        let block = BatchBlock::new(&self.machine.vm.vcpu_area);
        block.set(VB_NEXT, i as u64);
        block.set(VB_HOST_TOUCHED, 0);
        block.set(VB_ACTIVE, 1);
        let request = block.get(VB_REQS + 8 * i as u64);
        self.start_from_snapshot(request)
    }

    /// A host failure in a batch: the instance is poisoned and the `left` requests not yet
    /// answered fail with it.
    fn poison(&mut self, why: String, left: usize, results: &mut Vec<Result<CallResult, CallError>>) {
        self.state = State::Poisoned(why.clone());
        self.stats.calls += left as u64;
        self.stats.errors += left as u64;
        for _ in 0..left {
            results.push(Err(CallError { kind: Failure::Host(why.clone()), stdout: Vec::new(), stderr: Vec::new() }));
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
        self.machine.vm.vcpu_area.write(VC_REQUEST, request);
        self.end_requests_at(request.len());
        if self.state == State::AtSnapshot {
            self.start_from_snapshot(REQUEST_VA)?;
        } else {
            self.refill_entropy_if_used();
        }
        self.machine.run(deadline)
    }

    /// The request area now holds `len` bytes of requests: zeroes the tail of longer ones
    /// before them, so that no request ever sees another's bytes.
    fn end_requests_at(&mut self, len: usize) {
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
        *regs = self.snapshot.regs;
        regs.rax = request;
        self.machine.vm.regs_changed();
        Ok(())
    }

    fn classify(&self, end: RunEnd) -> Failure {
        let cfg = &self.snapshot.config;
        end.failure(self.machine.memory_exhausted, cfg.timeout, cfg.memory)
    }

    /// Restores the snapshot: memory (changed pages only), the emulated process, and (at the
    /// next call) the registers.
    pub fn reset(&mut self) -> crate::Result<ResetReport> {
        let (ram, fd) = self.machine.vm.ram_and_fd();
        let report = self.tracker.reset(fd, ram, &self.snapshot.ram_view)?;
        if std::mem::take(&mut self.machine.proc_touched) {
            self.machine.proc.clone_from(&self.snapshot.proc);
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
