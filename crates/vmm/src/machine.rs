//! A booted program: its VM, its emulated process, and the run loop.
//!
//! ```text
//!   Machine::boot ──> (kernel_start: PVM registration, PORT_BOOTED) ──> user entry
//!   Machine::run  ──> KVM_RUN ──> exit ──┬─ PORT_SYSCALL: syscalls::dispatch, resume
//!                                        ├─ exception: the run ends with a GuestFault
//!                                        ├─ interrupted: deadline? end as Timeout : resume
//!                                        └─ a handler stopped the run: end with its Stop
//! ```
//!
//! Registers travel through kvm_run's sync area (no GET/SET_REGS ioctls on the way), so a
//! forwarded system call costs exactly one exit.

// Extensions of `Machine` in files of their own: switching between threads.
pub(crate) mod sched;

use std::time::{Duration, Instant};

use kvm_bindings::kvm_regs;

use crate::error::{Error, Failure, GuestFault, Result};
use crate::guest::kernel::sym;
use crate::guest::layout::*;
use crate::guest::vcd;
use crate::host::{clock_ns as now_ns, rdtsc};
use crate::memory::user::UserMap;
use crate::memory::Mapping;
use crate::syscalls::api::ApiLimits;
use crate::syscalls::fs::Io;
use crate::syscalls::{self, Ctx, Process, Sched, Stop, SyscallCounts, UserMemory};
use crate::timer::Deadline;
use crate::vcpu::{self, Exit};
use crate::vm::Vm;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// A system-call handler stopped it (exit, respond, wait_for_request, ...).
    Stopped(Stop),
    /// The program caused a CPU exception or misused the API.
    Fault(GuestFault),
    /// The deadline passed.
    Timeout,
}

impl RunEnd {
    /// The [`Failure`] this end is for a program that was to do something else (answer a
    /// request, reach `wait_for_request`, exit by itself): the one classification of how runs,
    /// boots and calls fail.  `out_of_memory` says that a memory request was refused during the
    /// run: an abnormal end after that is blamed on the cap rather than on the program, and
    /// `limit` and `memory` are the run's limits, carried in the failure.
    pub fn failure(self, out_of_memory: bool, limit: Duration, memory: u64) -> Failure {
        let oom = |ended: String, exit_code| Failure::OutOfMemory { memory, ended, exit_code };
        match self {
            RunEnd::Timeout | RunEnd::Stopped(Stop::Timeout) => Failure::Timeout { limit },
            RunEnd::Fault(f) | RunEnd::Stopped(Stop::ApiFault(f)) if out_of_memory => {
                oom(format!("stopped: {f}"), None)
            }
            RunEnd::Stopped(Stop::Exited(c)) if out_of_memory => oom(format!("exited with status {c}"), Some(c)),
            RunEnd::Stopped(Stop::Signaled(s)) if out_of_memory => oom(format!("was killed by signal {s}"), None),
            RunEnd::Fault(f) | RunEnd::Stopped(Stop::ApiFault(f)) => Failure::Fault(f),
            RunEnd::Stopped(Stop::Exited(c)) => Failure::NoResponse(format!("exited with status {c}")),
            RunEnd::Stopped(Stop::Signaled(s)) => Failure::NoResponse(format!("was killed by signal {s}")),
            RunEnd::Stopped(Stop::WaitForRequest) => {
                Failure::NoResponse("called wait_for_request without responding".into())
            }
            RunEnd::Stopped(Stop::Deadlock(why)) => Failure::Deadlock { why, limit },
            RunEnd::Stopped(Stop::BatchDone) => {
                Failure::Fault(GuestFault::Vm("the guest kernel ended a batch early".into()))
            }
            RunEnd::Stopped(stop @ (Stop::Responded(_) | Stop::RespondedAndWaiting(_))) => {
                Failure::Unexpected(format!("{stop:?}"))
            }
        }
    }
}

/// Counters of one machine, cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineStats {
    /// `KVM_RUN` calls.
    pub entries: u64,
    /// Returns from `KVM_RUN` (each is one exit from the guest).
    pub exits: u64,
    /// System calls answered by the host.
    pub host_syscalls: SyscallCounts,
    /// Time the host spent waiting on the program's behalf (its sleeps, its input).
    pub blocked: Duration,
    /// Deadlines moved because the thread had been kept waiting for a CPU.
    pub starvation_grants: u64,
    /// CPU time charged to this thread inside `KVM_RUN` after the guest should have been
    /// stopped (host stalls; see `Machine::run_until`), not charged to the program.
    pub host_stalls: Duration,
    /// Switches of the vCPU from one of the program's threads to another.
    pub thread_switches: u64,
    /// CPU faults delivered to the program's signal handlers.
    pub signals_delivered: u64,
}

/// Most time a run is given back for having waited for a CPU (see `Machine::run_until`).
pub const MAX_STARVATION_GRACE: Duration = Duration::from_millis(250);
/// Only a run charged for less than 1/LIGHT_SHARE of its time limit gets that grace.
pub const LIGHT_SHARE: u32 = 4;
/// A run looks at its clocks this many times per time limit (see `Machine::run_until`)...
pub const SAMPLES_PER_LIMIT: u32 = 8;
/// ...but not more often than this (each look is an exit).
pub const MIN_SAMPLE: Duration = Duration::from_millis(1);

/// A `KVM_RUN` that returns later than this after its alarm was held up by the host.
pub const LATE: Duration = Duration::from_micros(500);

/// How much of the CPU time a thread was charged between two looks at its clocks was the
/// host's, not the guest's: `cpu` is what it was charged since the last look, `to_alarm` the
/// wall time from that look to the alarm that ended the interval, which interrupted a `KVM_RUN`
/// entered before it, and `late` how long after the alarm that `KVM_RUN` returned.  The guest
/// cannot run past the alarm (the signal stops `KVM_RUN` within tens of microseconds): what
/// the thread was charged beyond `to_alarm` was the host's (its interrupt handling, or the
/// hypervisor below keeping the vCPU busy).  And a `KVM_RUN` that returned [`LATE`] was held
/// up by such a stall, which most likely began before the alarm too (a stall of 20 ms cut
/// into looks 2.5 ms apart otherwise left 2.5 ms of each look to the guest: over a quarter
/// of a 20 ms limit with two of them): then the whole interval is the host's.  A program
/// cannot make either: a guest that spins is stopped within tens of microseconds of each
/// alarm; the most a stall can give a spinning program is one interval (limit/8), and every
/// grace together is bounded by [`MAX_STARVATION_GRACE`].
pub fn host_stall(cpu: Duration, to_alarm: Duration, late: Duration) -> Duration {
    if late > LATE {
        cpu
    } else {
        cpu.saturating_sub(to_alarm)
    }
}

/// The TSC → nanoseconds conversion the guest kernel uses for its clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mult: u64,
    shift: u64,
    /// guest TSC − host TSC.
    offset: i64,
    anchored: Option<Instant>,
    mono_line: (u64, u64),
}

const CLOCK_SHIFT: u64 = 32;
/// How often the clock anchor is refreshed against the host's clocks.
const REANCHOR: Duration = Duration::from_secs(1);

/// CPU time the calling thread has used, guest time included (KVM accounts the time a vCPU
/// runs to the thread that runs it).
fn thread_cpu_time() -> Duration {
    Duration::from_nanos(now_ns(libc::CLOCK_THREAD_CPUTIME_ID))
}

impl Clock {
    fn new(vm: &mut Vm) -> Option<Clock> {
        if !vm.host().cpu.invariant_tsc {
            return None;
        }
        let khz = u64::from(vm.vcpu().get_tsc_khz().ok()?);
        if khz == 0 {
            return None;
        }
        // Guest TSC vs host TSC: read the guest's IA32_TSC between two host reads.
        let mut msrs =
            kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry { index: 0x10, ..Default::default() }])
                .expect("one entry");
        let t0 = rdtsc();
        let n = vm.vcpu().get_msrs(&mut msrs).ok()?;
        let t1 = rdtsc();
        if n != 1 {
            return None;
        }
        let guest = msrs.as_slice()[0].data;
        let offset = guest.wrapping_sub(t0 / 2 + t1 / 2) as i64;
        Some(Clock {
            mult: (1_000_000u64 << CLOCK_SHIFT) / khz,
            shift: CLOCK_SHIFT,
            offset,
            anchored: None,
            mono_line: (0, 0),
        })
    }

    fn at(&self, line: (u64, u64), tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(line.0) as u128;
        line.1 + ((delta * u128::from(self.mult)) >> self.shift) as u64
    }

    /// Writes a fresh anchor into the vCPU area if the last one is older than a second.
    /// The monotonic clock the guest sees never goes backwards across re-anchoring.
    fn refresh(&mut self, area: &Mapping) {
        if self.anchored.is_some_and(|t| t.elapsed() < REANCHOR) {
            return;
        }
        let host_tsc = rdtsc();
        let mono = now_ns(libc::CLOCK_MONOTONIC);
        let real = now_ns(libc::CLOCK_REALTIME);
        let tsc = host_tsc.wrapping_add(self.offset as u64);
        let mut mono_base = mono;
        if self.anchored.is_some() {
            mono_base = mono_base.max(self.at(self.mono_line, tsc));
        }
        self.mono_line = (tsc, mono_base);
        let put = |field: u64, v: u64| area.write(vcd(field), &v.to_le_bytes());
        put(VCD_TSC_BASE, tsc);
        put(VCD_TSC_MULT, self.mult);
        put(VCD_TSC_SHIFT, self.shift);
        put(VCD_MONO_BASE, mono_base);
        put(VCD_REAL_BASE, real);
        put(VCD_CLOCK_OK, 1);
        self.anchored = Some(Instant::now());
    }
}

/// What became of a page fault on memory on demand the guest kernel left to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lazy {
    /// Not such memory: an ordinary fault.
    Ordinary,
    /// The page is there; the program goes on.
    Resumed,
    /// The pool is empty (the memory cap).
    OutOfMemory,
}

/// A program in a VM.
pub struct Machine {
    /// The VM.
    pub vm: Vm,
    /// The program's address space.
    pub map: UserMap,
    /// The emulated process.
    pub proc: Process,
    /// Standard streams.
    pub io: Io,
    /// Request API limits (tenant mode).
    pub api: Option<ApiLimits>,
    /// The tenant's key-value store (instances of a tenant that has one; not while booting).
    pub kv: Option<crate::kv::KvAccess>,
    /// KV calls in the current request (reset by the instance when a request starts).
    pub kv_ops: u32,
    /// Counters.
    pub stats: MachineStats,
    /// Set when a memory request was refused for lack of guest memory.
    pub memory_exhausted: bool,
    /// Set when a system call that may change [`Process`] ran (anything but the request API).
    pub proc_touched: bool,
    /// Page-table changes are kept for a reset to undo (instances; see
    /// [`crate::pages`]).
    pub keep_ptlog: bool,
    clock: Option<Clock>,
}

/// Values that fully describe the registers at the user entry point.
fn entry_regs(entry: u64, rsp: u64) -> kvm_regs {
    // Linux starts a process with every register zero but rsp (and rdx = 0: no rtld_fini).
    kvm_regs { rip: sym::ENTER_USER, rcx: entry, r11: 0x202, rsp, rflags: 0x2, ..Default::default() }
}

impl Machine {
    /// Wraps a created VM whose RAM holds a loaded program.
    pub fn new(mut vm: Vm, map: UserMap, proc: Process, io: Io, api: Option<ApiLimits>) -> Machine {
        let clock = Clock::new(&mut vm);
        let (log, capacity) = crate::vm::VcpuAreaLayout::ptlog_of(vm.vcpu_area.len() as u64, vm.ram.size());
        crate::pages::init_log(&vm.vcpu_area, log, capacity);
        let machine = Machine {
            vm,
            map,
            proc,
            io,
            api,
            kv: None,
            kv_ops: 0,
            stats: MachineStats::default(),
            memory_exhausted: false,
            proc_touched: false,
            keep_ptlog: false,
            clock,
        };
        sched::install_trampoline(&machine.vm.vcpu_area);
        machine.refill_entropy();
        machine
    }

    /// Gives the guest kernel's getrandom fast path a fresh pool of host randomness.
    pub fn refill_entropy(&self) {
        let mut pool = [0u8; VCD_ENTROPY_SIZE as usize];
        crate::host::fill_random(&mut pool);
        self.vm.vcpu_area.write(vcd(VCD_ENTROPY), &pool);
        self.vm.vcpu_area.write(vcd(VCD_ENTROPY_POS), &0u64.to_le_bytes());
    }

    /// Runs `kernel_start` (PVM registration) up to its `PORT_BOOTED` exit.  The vCPU is then
    /// in the guest kernel, ready for [`Machine::enter_user`] or a snapshot's registers.
    pub fn start_kernel(&mut self) -> Result<()> {
        let regs = kvm_regs { rip: sym::KERNEL_START, rsp: KVCPU + VC_KSTACK_TOP, rflags: 0x2, ..Default::default() };
        self.vm.set_regs(&regs)?;
        let mut exit = Exit::Interrupted;
        // A run's deadline timer may interrupt a restart in the middle of a run (a signal
        // delivery): that is not a failure, the run loop sets the timer again afterwards.
        for _ in 0..3 {
            self.stats.entries += 1;
            exit = vcpu::run(&mut self.vm)?;
            self.stats.exits += 1;
            if exit != Exit::Interrupted {
                break;
            }
            self.vm.vcpu().get_kvm_run().immediate_exit = 0;
        }
        match exit {
            Exit::Io { port } if u64::from(port) == PORT_BOOTED => {
                let status = self.vm.regs().rax;
                if status != 0 {
                    return Err(Error::GuestKernel(format!("PVM registration hypercall returned {status:#x}")));
                }
                Ok(())
            }
            other => Err(Error::GuestKernel(format!("first exit was {other:?}, expected the boot port"))),
        }
    }

    /// Puts the vCPU back into the guest kernel's start state (system registers and
    /// `kernel_start`) from wherever it stopped.  A run that ended at its deadline may have
    /// been interrupted while the CPU delivered one of the program's faults: KVM still holds
    /// that exception and would inject it into `kernel_start` (an exception in the guest
    /// kernel instead of the boot exit), so it is dropped with the state it belonged to.
    pub fn restart_kernel(&mut self) -> Result<()> {
        self.vm.discard_events()?;
        self.restart_kernel_after_exception()
    }

    /// [`Machine::restart_kernel`] from an exception exit: the exception stub's `out`
    /// completed, so KVM holds nothing in flight (one ioctl less on each signal delivery).
    pub(crate) fn restart_kernel_after_exception(&mut self) -> Result<()> {
        self.vm.reset_system_registers()?;
        self.start_kernel()
    }

    /// Points the vCPU at the program's entry with a fresh register file.
    pub fn enter_user(&mut self, entry: u64, rsp: u64) {
        *self.vm.regs() = entry_regs(entry, rsp);
        self.vm.regs_changed();
    }

    /// Sum of the host's counts and the guest kernel's in-VM counts.
    pub fn syscall_counts(&self) -> SyscallCounts {
        let mut counts = self.stats.host_syscalls.clone();
        let mut raw = vec![0u8; 8 * FAST_SYSCALLS as usize];
        if self.vm.vcpu_area.read(VC_COUNTS, &mut raw).is_some() {
            for (nr, c) in raw.chunks_exact(8).enumerate() {
                let n = u64::from_le_bytes(c.try_into().unwrap());
                if n > 0 {
                    *counts.handled.entry(nr as u64).or_default() += n;
                }
            }
        }
        counts
    }

    /// Makes the running thread's id the guest kernel's answer to `gettid` (a constant of
    /// the fast-value table): the thread that runs changes only while the guest is stopped
    /// (a switch, a reset to the snapshot's threads), so it is compared before every entry
    /// and written when it differs.  Without it `gettid` cost an exit as soon as a program
    /// had started a thread (Deno's hello called it in every request).  The kernel area is
    /// left alone by resets, so the value written stays right until the next change.
    fn publish_tid(&mut self) {
        let slot = GPA_FAST_VALUE + 8 * libc::SYS_gettid as u64;
        let tid = self.proc.threads.current().tid;
        if self.vm.ram.read_u64(slot).ok() != Some(tid) {
            self.vm.ram.write_u64(slot, tid).expect("the fast-value table lies in RAM");
        }
    }

    /// The system calls the host answered (each one a VM exit), supported or not, by number.
    pub fn host_syscall_counts(&self) -> std::collections::BTreeMap<u64, u64> {
        let host = &self.stats.host_syscalls;
        let mut counts = host.handled.clone();
        for (&nr, &n) in &host.unsupported {
            *counts.entry(nr).or_default() += n;
        }
        counts
    }

    /// Runs the program until a handler stops it, it faults, or `deadline` passes.
    pub fn run(&mut self, deadline: Instant) -> Result<RunEnd> {
        let every = (deadline.saturating_duration_since(Instant::now()) / SAMPLES_PER_LIMIT).max(MIN_SAMPLE);
        self.run_until(Some(every), |_| deadline)
    }

    /// Like [`Machine::run`], with a deadline that may move while the guest runs (a batch
    /// gives each request its own): `deadline` is asked again every `check_every` (and when
    /// the current deadline arrives).
    ///
    /// A light request is not stopped for time the host kept its thread waiting for a CPU:
    /// when the deadline arrives and the run has been charged (CPU time of this thread, the
    /// guest's included, plus waits on the program's behalf, its sleeps) for less than
    /// 1/[`LIGHT_SHARE`] of its limit, the rest of its wall time, the wait for a CPU, is
    /// added to the deadline, up to [`MAX_STARVATION_GRACE`].  A program cannot make that
    /// time itself: spinning, faulting and host calls all run on this thread.  Heavier runs
    /// stop at the deadline, so on an overloaded host wall time still bounds a program that
    /// spins, and it cannot take more CPU from the others than their share.
    ///
    /// Nor is the run charged for CPU time the host took on this thread inside `KVM_RUN`
    /// ([`host_stall`]): on a nested host the thread's CPU clock also runs while its
    /// hypervisor keeps the vCPU busy or the kernel handles interrupts on it (a hello request,
    /// ~10 µs of guest work, was seen charged 8-12 ms of CPU with one exit and no KVM event;
    /// over a quarter of a 20 ms limit, which made a 20-ms stall a timeout with no grace).
    /// So the run looks at its clocks at least every `check_every`: a stall that lasts past
    /// a look delays it, and the CPU time charged past the look's alarm is not the guest's.
    pub fn run_until(
        &mut self,
        check_every: Option<Duration>,
        mut deadline: impl FnMut(&Machine) -> Instant,
    ) -> Result<RunEnd> {
        if let Some(clock) = self.clock.as_mut() {
            clock.refresh(&self.vm.vcpu_area);
        }
        let alarm = |deadline: Instant| match check_every {
            Some(every) => deadline.min(Instant::now() + every),
            None => deadline,
        };
        let started = Instant::now();
        let cpu_started = thread_cpu_time();
        let blocked_before = self.stats.blocked;
        let stalls_before = self.stats.host_stalls;
        // The last look at the clocks (see host_stall).
        let (mut looked, mut looked_cpu) = (started, cpu_started);
        // The deadline as last computed (with any grace), for system calls that wait (a sleep
        // past it is a timeout at once); `current` is when to look next, at most `check_every`
        // away.
        let mut due_at = deadline(self);
        let mut current = alarm(due_at);
        // The running guest thread's time slice, while another is runnable: CPU time of this
        // host thread (a host that keeps the thread waiting neither makes the guest switch
        // threads nor costs a tenant's request an extra exit), from `slice_cpu`.
        let mut slice_cpu = cpu_started;
        let mut slice_armed = false;
        let mut armed = current;
        let mut guard = Deadline::arm(self.vm.vcpu().get_kvm_run(), armed)?;
        // When the timer was last set to go off (`armed` may be moved to force a new arming).
        let mut alarm_at = armed;
        loop {
            let want = self.next_alarm(current);
            if want != armed {
                drop(guard);
                armed = want;
                alarm_at = want;
                slice_armed = false;
                guard = Deadline::arm(self.vm.vcpu().get_kvm_run(), armed)?;
            }
            let slice_wanted = self.proc.threads.others_runnable();
            if slice_wanted != slice_armed {
                let left = sched::TIME_SLICE.saturating_sub(thread_cpu_time().saturating_sub(slice_cpu));
                guard.set_cpu_slice(slice_wanted.then_some(left.max(sched::RETRY_SOON)))?;
                slice_armed = slice_wanted;
            }
            self.publish_tid();
            self.stats.entries += 1;
            let entered = Instant::now();
            let exit = vcpu::run(&mut self.vm)?;
            self.stats.exits += 1;
            match exit {
                Exit::Io { port } if u64::from(port) == PORT_SYSCALL => {
                    let switches = self.stats.thread_switches;
                    let limit_at = deadline(self).max(due_at);
                    if let Some(stop) = self.syscall(limit_at)? {
                        return Ok(RunEnd::Stopped(stop));
                    }
                    if self.stats.thread_switches != switches {
                        slice_cpu = thread_cpu_time();
                        slice_armed = false; // armed again, for the new thread
                    }
                }
                Exit::Io { port } if u64::from(port) == PORT_BATCH_DONE => return Ok(RunEnd::Stopped(Stop::BatchDone)),
                Exit::Io { port } if (PORT_EXCEPTION_BASE..PORT_EXCEPTION_BASE + 32).contains(&u64::from(port)) => {
                    let vector = u64::from(port) - PORT_EXCEPTION_BASE;
                    let lazy = if vector == 14 { self.lazy_fault()? } else { Lazy::Ordinary };
                    if lazy == Lazy::Resumed {
                        guard.rearm_after_interrupt();
                        armed = Instant::now();
                        continue;
                    }
                    let fault = self.exception(vector);
                    if lazy == Lazy::OutOfMemory {
                        // Linux would kill the program: no handler runs.
                        return Ok(RunEnd::Fault(fault));
                    }
                    if !self.deliver_fault(vector, &fault)? {
                        return Ok(RunEnd::Fault(fault));
                    }
                    // The restart inside may have swallowed the timer's signal: set it again.
                    guard.rearm_after_interrupt();
                    armed = Instant::now();
                }
                Exit::Interrupted => {
                    guard.rearm_after_interrupt();
                    let now = Instant::now();
                    let cpu_now = thread_cpu_time();
                    if entered < alarm_at && alarm_at <= now {
                        let stall = host_stall(
                            cpu_now.saturating_sub(looked_cpu),
                            alarm_at.saturating_duration_since(looked),
                            now - alarm_at,
                        );
                        self.stats.host_stalls += stall;
                    }
                    (looked, looked_cpu) = (now, cpu_now);
                    if self.proc.threads.multi() {
                        // Sleepers whose time is up become runnable (and so preempt).
                        self.proc.threads.wake_expired(now);
                    }
                    let used = cpu_now.saturating_sub(slice_cpu);
                    if self.proc.threads.others_runnable() && used >= sched::TIME_SLICE {
                        let switches = self.stats.thread_switches;
                        let limit_at = deadline(self).max(due_at);
                        if let Some(stop) = self.preempt(limit_at)? {
                            return Ok(RunEnd::Stopped(stop));
                        }
                        if self.stats.thread_switches != switches {
                            slice_cpu = thread_cpu_time();
                        } else {
                            // In the guest kernel: look again soon.
                            slice_cpu = thread_cpu_time().saturating_sub(sched::TIME_SLICE) + sched::RETRY_SOON;
                        }
                    }
                    // The slice timer is one-shot: arm it again (or not) before resuming.
                    slice_armed = false;
                    let mut due = deadline(self);
                    if now >= due {
                        let limit = due.saturating_duration_since(started);
                        let charged = (cpu_now.saturating_sub(cpu_started)
                            + self.stats.blocked.saturating_sub(blocked_before))
                        .saturating_sub(self.stats.host_stalls.saturating_sub(stalls_before));
                        if charged * LIGHT_SHARE < limit {
                            due += (now - started).saturating_sub(charged).min(MAX_STARVATION_GRACE);
                        }
                        if now >= due {
                            return Ok(RunEnd::Timeout);
                        }
                        self.stats.starvation_grants += 1;
                    }
                    due_at = due;
                    current = alarm(due);
                    if now >= armed {
                        // The timer fired: it must be set again even if nothing moved.
                        armed = now;
                    }
                }
                Exit::Shutdown => return Ok(RunEnd::Fault(GuestFault::TripleFault { rip: self.vm.regs().rip })),
                other => {
                    let rip = self.vm.regs().rip;
                    return Ok(RunEnd::Fault(GuestFault::Vm(format!("{other:?} at rip {rip:#x}"))));
                }
            }
        }
    }

    /// The program's memory, for code outside a system call (signal frames).
    pub(crate) fn user_memory(&mut self) -> UserMemory<'_> {
        user_memory(&mut self.vm, &self.map, self.keep_ptlog)
    }

    /// Handles a forwarded system call; `Some` when a handler stopped the run.  With
    /// several threads the call may leave the vCPU to another thread (`crate::machine::sched`).
    fn syscall(&mut self, deadline: Instant) -> Result<Option<Stop>> {
        let r = *self.vm.regs();
        let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        if !(crate::guest::api::BASE..=crate::guest::api::NOP).contains(&r.rax) {
            self.proc_touched = true;
            // A batch must not go on in the guest after the host answered a system call: the
            // host may have written memory the guest's Dirty bits do not show.
            self.vm.vcpu_area.write(VC_BATCH + VB_HOST_TOUCHED, &1u64.to_le_bytes());
        }
        if !self.keep_ptlog {
            crate::pages::truncate_log(&self.vm.vcpu_area);
        }
        let mut ctx = Ctx {
            mem: user_memory(&mut self.vm, &self.map, self.keep_ptlog),
            proc: &mut self.proc,
            io: &mut self.io,
            deadline: Some(deadline),
            api: self.api.as_ref(),
            kv: self.kv.as_ref(),
            kv_ops: self.kv_ops,
            stop: None,
            sched: None,
            memory_exhausted: false,
            blocked: Duration::ZERO,
            user_rsp: r.rsp,
        };
        let rax = syscalls::dispatch(&mut ctx, &mut self.stats.host_syscalls, r.rax, args);
        if syscalls::tracing() {
            eprintln!("tenantvm: syscall {} {args:x?} -> {:#x} at rip {:#x}", r.rax, rax, r.rcx);
            if std::env::var_os("TENANTVM_TRACE_STACK").is_some() {
                let words: Vec<u64> = (0..48).filter_map(|i| ctx.mem.read_u64(r.rsp + 8 * i).ok()).collect();
                eprintln!("tenantvm:   stack {words:x?}");
            }
        }
        let (stop, sched, exhausted) = (ctx.stop.take(), ctx.sched.take(), ctx.memory_exhausted || ctx.mem.exhausted);
        // /tmp's files share the memory cap with the pool.
        let tmp_pages = ctx.proc.files.tmp.used().div_ceil(crate::guest::PAGE_SIZE);
        let mut pages = ctx.mem.pages();
        let limit = pages.capacity().saturating_sub(tmp_pages);
        pages.set_limit(limit);
        self.kv_ops = ctx.kv_ops;
        self.stats.blocked += ctx.blocked;
        self.memory_exhausted |= exhausted;
        self.vm.regs().rax = rax;
        self.vm.regs_changed();
        let stop = self.after_syscall(r.rax, stop, sched, deadline)?;
        if stop.is_some() || !self.signals_pending() {
            return Ok(stop);
        }
        // A signal the call sent, unblocked, or that waits for the thread now on the vCPU.
        self.deliver_pending(sched::At::Syscall)
    }

    /// Whether any signal the program sent waits for delivery (one load and test: the
    /// common case costs nothing).
    fn signals_pending(&self) -> bool {
        self.proc.signals.pending != 0 || self.proc.threads.current().sig_pending != 0
    }

    /// The scheduler's part of a system call's end: a stop, a switch, a retry.
    fn after_syscall(
        &mut self,
        nr: u64,
        stop: Option<Stop>,
        sched: Option<Sched>,
        deadline: Instant,
    ) -> Result<Option<Stop>> {
        match (stop, sched) {
            (Some(Stop::Deadlock(_)), _) if self.proc.threads.multi() => self.retry_later(nr, None, deadline),
            (Some(stop), _) => Ok(Some(stop)),
            (None, Some(sched @ Sched::Retry { .. })) => self.on_sched(sched, nr, deadline),
            (None, sched) => {
                self.proc.threads.active = true;
                if self.proc.threads.multi() {
                    // A call made again after a wait is done: its deadline goes with it.
                    self.proc.threads.current_mut().retry_until = None;
                }
                match sched {
                    Some(sched) => self.on_sched(sched, nr, deadline),
                    None => Ok(None),
                }
            }
        }
    }

    /// Decodes the frame the exception stub left on the kernel stack.
    /// A page fault the guest kernel left to the VMM on memory on demand (its change log
    /// was full, or the pool empty): true when the page was given and the program resumed.
    /// An empty pool is the memory cap: the fault then ends the run as out of memory.
    fn lazy_fault(&mut self) -> Result<Lazy> {
        let address = self.vm.cr2();
        let mut frame = [0u8; 24];
        let rsp = self.vm.regs().rsp;
        if rsp.checked_sub(KVCPU).and_then(|off| self.vm.vcpu_area.read(off, &mut frame)).is_none() {
            return Ok(Lazy::Ordinary);
        }
        let (error_code, cs) = (u64::from_le_bytes(frame[..8].try_into().unwrap()), frame[16]);
        if cs & 3 == 0 || error_code & 1 != 0 {
            return Ok(Lazy::Ordinary);
        }
        if !self.keep_ptlog {
            crate::pages::truncate_log(&self.vm.vcpu_area);
        }
        let mut mem = self.user_memory();
        if !mem.pages().is_lazy(address) {
            return Ok(Lazy::Ordinary);
        }
        match mem.pages().translate(address, error_code & 2 != 0) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Lazy::Ordinary),
            Err(_) => {
                self.memory_exhausted = true;
                return Ok(Lazy::OutOfMemory);
            }
        }
        // Resume the faulting instruction, as a signal delivery resumes a handler.
        let Some(regs) = self.faulting_regs() else { return Ok(Lazy::Ordinary) };
        let xsave = self.vm.xsave()?;
        let (fs_base, gs_base) = self.vm.segment_bases()?;
        self.vm.vcpu_area.write(VC_BATCH + VB_HOST_TOUCHED, &1u64.to_le_bytes());
        self.restart_kernel()?;
        self.vm.regs().rip = sym::ENTER_USER;
        self.vm.regs().rflags = 0x2;
        self.load_cpu_at_syscall(&crate::linux::threads::CpuState { regs, fs_base, gs_base, xsave })?;
        Ok(Lazy::Resumed)
    }

    fn exception(&mut self, vector: u64) -> GuestFault {
        let rsp = self.vm.regs().rsp;
        let mut frame = [0u8; 48];
        let ok = rsp.checked_sub(KVCPU).and_then(|off| self.vm.vcpu_area.read(off, &mut frame)).is_some();
        let word = |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().unwrap());
        if !ok {
            return GuestFault::Vm(format!("exception {vector} with an unreadable frame (rsp {rsp:#x})"));
        }
        let (error_code, rip, cs) = (word(0), word(1), word(2));
        if cs & 3 == 0 {
            return GuestFault::Vm(format!("exception {vector} in the guest kernel at rip {rip:#x}"));
        }
        match vector {
            0 => GuestFault::DivideError { rip },
            6 => GuestFault::InvalidOpcode { rip },
            13 => GuestFault::GeneralProtection { rip, error_code },
            14 => {
                let access = if error_code & 0x10 != 0 {
                    "execute"
                } else if error_code & 2 != 0 {
                    "write"
                } else {
                    "read"
                };
                GuestFault::PageFault { address: self.vm.cr2(), rip, error_code, access }
            }
            v => GuestFault::Exception { vector: v as u8, rip, error_code },
        }
    }
}

/// The program's memory as system calls and signal frames see it: RAM through `map`, the vCPU
/// area (the page-table change log), shared memory.  A function of the parts, not a method, so
/// that a system call can hold it beside `&mut` the process state.
fn user_memory<'a>(vm: &'a mut Vm, map: &'a UserMap, keep_log: bool) -> UserMemory<'a> {
    let Vm { ram, vcpu_area, shared, image, .. } = vm;
    let (shared, file) = (shared.as_ref().map(|s| &s.map), image.as_deref());
    UserMemory { map, ram, vcpu_area, shared, file, keep_log, exhausted: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(500);
    const MEMORY: u64 = 16 << 20;

    fn fault() -> GuestFault {
        GuestFault::PageFault { address: 0x10, rip: 1, error_code: 6, access: "write" }
    }

    #[test]
    fn only_cpu_time_past_the_alarm_or_of_a_late_return_is_the_hosts() {
        let ms = Duration::from_millis;
        // Back on time: the time before the alarm may all have been the guest's.
        assert_eq!(host_stall(ms(2), ms(2), Duration::from_micros(60)), Duration::ZERO);
        assert_eq!(host_stall(ms(1), ms(2), Duration::from_micros(60)), Duration::ZERO);
        // Charged past the alarm (it came back within LATE, but late work was charged).
        assert_eq!(host_stall(ms(3), ms(2), LATE), ms(1));
        // Held up past LATE: the whole interval was the host's.
        assert_eq!(host_stall(ms(12), ms(2), ms(10)), ms(12));
        // Never more than the thread was charged (off the CPU is not a stall).
        assert_eq!(host_stall(ms(1), ms(2), ms(30)), ms(1));
    }

    #[test]
    fn an_abnormal_end_after_memory_ran_out_blames_the_memory() {
        let f = RunEnd::Fault(fault()).failure(true, LIMIT, MEMORY);
        assert!(
            matches!(&f, Failure::OutOfMemory { memory: MEMORY, exit_code: None, ended } if ended.contains("page fault"))
        );
        assert!(f.to_string().contains("16 MiB"), "{f}");
        let f = RunEnd::Stopped(Stop::Exited(3)).failure(true, LIMIT, MEMORY);
        assert!(matches!(f, Failure::OutOfMemory { exit_code: Some(3), .. }));
        assert_eq!(RunEnd::Fault(fault()).failure(false, LIMIT, MEMORY), Failure::Fault(fault()));
    }

    #[test]
    fn a_timeout_stays_a_timeout_even_after_memory_ran_out() {
        assert_eq!(RunEnd::Timeout.failure(true, LIMIT, MEMORY), Failure::Timeout { limit: LIMIT });
        assert_eq!(RunEnd::Stopped(Stop::Timeout).failure(false, LIMIT, MEMORY), Failure::Timeout { limit: LIMIT });
        assert!(Failure::Timeout { limit: LIMIT }.to_string().contains("0.5 s"));
    }

    #[test]
    fn ends_without_a_response_say_how_the_program_ended() {
        let f = RunEnd::Stopped(Stop::Exited(2)).failure(false, LIMIT, MEMORY);
        assert_eq!(f, Failure::NoResponse("exited with status 2".into()));
        let f = RunEnd::Stopped(Stop::Deadlock("futex wait")).failure(false, LIMIT, MEMORY);
        assert_eq!(f, Failure::Deadlock { why: "futex wait", limit: LIMIT });
        let f = RunEnd::Stopped(Stop::Responded(Default::default())).failure(false, LIMIT, MEMORY);
        assert!(matches!(f, Failure::Unexpected(_)));
    }
}
