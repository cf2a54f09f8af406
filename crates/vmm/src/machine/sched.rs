//! Switching the vCPU between the program's threads (the table is [`crate::linux::threads`]).
//!
//! A switch saves the running thread's CPU state (registers from the sync area, FS/GS bases,
//! the XSAVE image) and loads the next one's.  Two places can switch, and they see the
//! registers differently:
//! - at a system-call exit ([`At::Syscall`]) the vCPU is in the guest kernel's forward path,
//!   about to return to user mode with `rip = rcx`, `rflags = r11`;
//! - at a timer exit ([`At::User`], a time slice ended) the vCPU is in user mode and its
//!   registers are exactly the program's.
//!
//! A thread saved at a system call resumes anywhere by the ordinary return (its rcx/r11 are
//! rip/rflags, as Linux leaves them).  A thread preempted in user mode resumes at a timer
//! exit by loading its registers as they are; at a system-call exit its rcx and r11 would be
//! lost to the return path, so it returns through the **trampoline**: a user page (r-x at
//! `TRAMPOLINE_VA`, outside the program's map) whose three instructions load rcx and r11 from
//! slots on the same page and jump to the saved rip.  A thread interrupted inside the
//! trampoline is saved as if it had finished it.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::guest::layout::*;
use crate::linux::threads::{CpuState, RunState, Wait};
use crate::machine::Machine;
use crate::syscalls::{Sched, Stop};

/// Longest a thread keeps the vCPU while another is runnable: CPU time of the vCPU's host
/// thread (checked when a wall-clock timer of the same length fires).  Long enough that a
/// request of a tenant whose snapshot has a runnable thread is almost never interrupted.
pub const TIME_SLICE: Duration = Duration::from_millis(10);

/// How soon to look again when a slice ended while the vCPU was in the guest kernel.
pub const RETRY_SOON: Duration = Duration::from_micros(200);

/// `mov rcx,[rip+0xf9]; mov r11,[rip+0xfa]; jmp [rip+0xfc]`: loads the slots below.
const TRAMPOLINE_CODE: [u8; 20] = [
    0x48, 0x8b, 0x0d, 0xf9, 0, 0, 0, // mov 0x100(%rip-relative), %rcx
    0x4c, 0x8b, 0x1d, 0xfa, 0, 0, 0, // mov 0x108(...), %r11
    0xff, 0x25, 0xfc, 0, 0, 0, // jmp *0x110(...)
];
const SLOT_RCX: u64 = 0x100;
const SLOT_R11: u64 = 0x108;
const SLOT_RIP: u64 = 0x110;

/// Where the vCPU stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// At a forwarded system call (guest kernel, about to return to user mode).
    Syscall,
    /// In user mode (a timer exit).
    User,
}

/// Writes the trampoline's code into a VM's vCPU area.
pub fn install_trampoline(area: &crate::memory::Mapping) {
    area.write(VC_TRAMPOLINE, &TRAMPOLINE_CODE);
}

/// What `rip` says about where the vCPU is: user code (not the guest kernel).
pub fn in_user_mode(rip: u64) -> bool {
    rip < USER_VA_LIMIT || (TRAMPOLINE_VA..TRAMPOLINE_VA + crate::guest::PAGE_SIZE).contains(&rip)
}

impl Machine {
    fn slot(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.vm.vcpu_area.read(VC_TRAMPOLINE + off, &mut b);
        u64::from_le_bytes(b)
    }

    /// The running thread's CPU state, in user-mode terms.
    pub(crate) fn save_cpu(&mut self, at: At) -> Result<CpuState> {
        let mut regs = *self.vm.regs();
        match at {
            At::Syscall if regs.rcx == TRAMPOLINE_VA => {
                // Loaded for the trampoline at this exit (rt_sigreturn): it has not run yet.
                regs.rflags = regs.r11;
                regs.rcx = self.slot(SLOT_RCX);
                regs.r11 = self.slot(SLOT_R11);
                regs.rip = self.slot(SLOT_RIP);
            }
            At::Syscall => {
                regs.rip = regs.rcx;
                regs.rflags = regs.r11;
            }
            At::User if (TRAMPOLINE_VA..TRAMPOLINE_VA + 4096).contains(&regs.rip) => {
                // Its loads have no side effects: finishing them here is the same.
                regs.rcx = self.slot(SLOT_RCX);
                regs.r11 = self.slot(SLOT_R11);
                regs.rip = self.slot(SLOT_RIP);
            }
            At::User => {}
        }
        let (fs_base, gs_base) = self.vm.segment_bases()?;
        Ok(CpuState { regs, fs_base, gs_base, xsave: self.vm.xsave()? })
    }

    /// Makes `cpu` the vCPU's state.
    fn load_cpu(&mut self, cpu: &CpuState, at: At) -> Result<()> {
        self.vm.set_segment_bases(cpu.fs_base, cpu.gs_base)?;
        self.vm.set_xsave(&cpu.xsave)?;
        let c = cpu.regs;
        match at {
            At::User => *self.vm.regs() = c,
            At::Syscall => {
                let exact = c.rcx == c.rip && c.r11 == c.rflags;
                if !exact {
                    let area = &self.vm.vcpu_area;
                    area.write(VC_TRAMPOLINE + SLOT_RCX, &c.rcx.to_le_bytes());
                    area.write(VC_TRAMPOLINE + SLOT_R11, &c.r11.to_le_bytes());
                    area.write(VC_TRAMPOLINE + SLOT_RIP, &c.rip.to_le_bytes());
                }
                let r = self.vm.regs();
                let (rip, rflags) = (r.rip, r.rflags);
                *r = c;
                (r.rip, r.rflags) = (rip, rflags);
                r.rcx = if exact { c.rip } else { TRAMPOLINE_VA };
                r.r11 = c.rflags;
            }
        }
        self.vm.regs_changed();
        Ok(())
    }

    /// Makes `cpu` the vCPU's state where it stopped (`at`).
    pub(crate) fn load_cpu_at(&mut self, cpu: &CpuState, at: At) -> Result<()> {
        self.load_cpu(cpu, at)
    }

    /// Makes `cpu` the vCPU's state at a system-call exit (or in the guest kernel after a
    /// restart, with rip already set where it is to continue).
    pub(crate) fn load_cpu_at_syscall(&mut self, cpu: &CpuState) -> Result<()> {
        self.load_cpu(cpu, At::Syscall)
    }

    /// Acts on a handler's request to the scheduler, at a system-call exit.  `deadline` is
    /// the run's: waiting for a sleeper past it ends the run as a timeout.
    pub(crate) fn on_sched(&mut self, sched: Sched, nr: u64, deadline: Instant) -> Result<Option<Stop>> {
        match sched {
            Sched::Spawn { index, stack, tls } => {
                let mut cpu = self.save_cpu(At::Syscall)?;
                cpu.regs.rax = 0;
                if stack != 0 {
                    cpu.regs.rsp = stack;
                }
                if let Some(t) = tls {
                    cpu.fs_base = t;
                }
                self.proc.threads.get_mut(index).cpu = Some(cpu);
                self.threads_started()?;
                Ok(None)
            }
            Sched::Switch => self.reschedule(At::Syscall, deadline),
            Sched::SigReturn => Ok(self.sigreturn()?.map(Stop::ApiFault)),
            Sched::Retry { until, recheck } => {
                self.proc.threads.current_mut().recheck_at = recheck;
                self.retry_later(nr, until, deadline)
            }
            Sched::Again => {
                let r = self.vm.regs();
                r.rax = nr;
                r.rcx -= 2; // back to the `syscall` instruction
                Ok(None)
            }
        }
    }

    /// The first `clone`: `sched_yield` has somewhere to go, so it goes to the host from now
    /// on.  (`gettid` stays in the guest kernel: the host keeps its answer the running
    /// thread's, `Machine::publish_tid`.)
    fn threads_started(&mut self) -> Result<()> {
        use crate::guest::kernel::sym;
        self.vm
            .ram
            .write_u64(GPA_FAST_TABLE + 8 * libc::SYS_sched_yield as u64, sym::FORWARD)
            .map_err(|e| crate::error::Error::GuestKernel(e.to_string()))?;
        Ok(())
    }

    /// A call that would block (it asked to stop with a deadlock) while other threads exist:
    /// the thread waits and makes the call again after another thread did something.
    pub(crate) fn retry_later(&mut self, nr: u64, until: Option<Instant>, deadline: Instant) -> Result<Option<Stop>> {
        let r = self.vm.regs();
        r.rax = nr;
        r.rcx -= 2; // back to the `syscall` instruction
        let me = self.proc.threads.current_mut();
        me.state = RunState::Waiting(Wait::Retry(until));
        me.retry_until = until;
        self.reschedule(At::Syscall, deadline)
    }

    /// The running thread's time slice ended (a timer exit): gives the vCPU to the next
    /// runnable thread if the vCPU is in user mode.  Whether it switched.
    pub(crate) fn preempt(&mut self, deadline: Instant) -> Result<Option<Stop>> {
        if !in_user_mode(self.vm.regs().rip) {
            return Ok(None);
        }
        // The timer may have interrupted the vCPU while it delivered a fault of this thread
        // (the CPU had raised it, or PVM had queued it, but a VM exit came first): KVM holds
        // the exception and injects it at the next entry into whatever registers are loaded
        // then.  A switch now would hand this thread's fault to the next thread (Go's
        // nil-pointer recovery under hardware KVM gave a thread parked in futex a SIGSEGV for
        // address 0).  Not delivered means not begun: this thread's rip is still at the
        // faulting instruction, which raises the same fault again when it runs next, so the
        // exception is dropped here.  (Waiting for the delivery instead can starve the other
        // threads: the timer's signal is mostly noticed right after such an exit.)
        self.vm.discard_events()?;
        self.proc.threads.current_mut().state = RunState::Runnable;
        if let Some(stop) = self.reschedule(At::User, deadline)? {
            return Ok(Some(stop));
        }
        // The thread now on the vCPU may have signals waiting for it (Go's SIGURG).
        self.deliver_pending(At::User)
    }

    /// When the run's wall-clock timer should fire: at `deadline`, and with several threads
    /// also when a sleeper's time is up (slices have their own CPU-time timer).
    pub(crate) fn next_alarm(&self, deadline: Instant) -> Instant {
        let threads = &self.proc.threads;
        if !threads.multi() {
            return deadline;
        }
        threads.earliest_timeout().map_or(deadline, |t| deadline.min(t))
    }

    /// Switches to the next runnable thread (the running one's state says why it leaves);
    /// waits on the host for a sleeper when all wait with a timeout; a deadlock when all wait
    /// without one.
    fn reschedule(&mut self, at: At, deadline: Instant) -> Result<Option<Stop>> {
        let outgoing = self.proc.threads.current_index();
        let parked = matches!(self.proc.threads.current().state, RunState::Waiting(Wait::Retry(_)));
        if !parked || self.proc.threads.active {
            // Something happened that a waiting read may have been waiting for (a thread that
            // only failed its own retry changed nothing).
            self.proc.threads.wake_retriers();
        }
        self.proc_touched = true;
        loop {
            let now = Instant::now();
            if let Some(how) = self.proc.threads.wake_expired(now) {
                // The running thread's own wait timed out (its registers are live).
                how.finish(self.vm.regs(), at == At::Syscall);
                self.vm.regs_changed();
            }
            if let Some(next) = self.proc.threads.pick_next() {
                if next == outgoing {
                    self.proc.threads.switch_to(next);
                    return Ok(None);
                }
                if self.proc.threads.current().state != RunState::Exited {
                    let cpu = self.save_cpu(at)?;
                    self.proc.threads.current_mut().cpu = Some(cpu);
                }
                let idx = self.proc.threads.switch_to(next);
                let cpu = self.proc.threads.get_mut(idx).cpu.take().expect("a runnable thread has a saved state");
                self.load_cpu(&cpu, at)?;
                self.stats.thread_switches += 1;
                // A batch must not reset in the guest: the host changed the running thread.
                self.vm.vcpu_area.write(VC_BATCH + VB_HOST_TOUCHED, &1u64.to_le_bytes());
                return Ok(None);
            }
            match self.proc.threads.earliest_timeout() {
                Some(t) if t <= deadline => {
                    std::thread::sleep(t.saturating_duration_since(now));
                    self.stats.blocked += now.elapsed();
                }
                Some(_) => return Ok(Some(Stop::Timeout)),
                None => {
                    return Ok(Some(Stop::Deadlock(
                        "every thread waits (futex, pipe, ...) and none is left to wake the others",
                    )))
                }
            }
        }
    }
}
