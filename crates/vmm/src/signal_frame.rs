//! Delivering signals: a CPU fault in a program that installed a handler for its signal is
//! delivered to that handler at once, as Linux does; a signal the program sent (pending, see
//! `crate::syscalls::signal`) when a thread that does not block it returns from a system call
//! or gets the vCPU at a time slice.  `rt_sigreturn` resumes where the handler says.
//!
//! ```text
//!   exception exit ──> signal for the vector (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP)
//!       handler installed, SA_RESTORER, not blocked? ── no ──> the run ends with the GuestFault
//!       yes: write an rt_sigframe (restorer, ucontext with the registers and the XSAVE state,
//!            siginfo) below the stack (or on the alternate stack), restart the guest kernel
//!            (the vCPU was stopped inside its exception stub) and enter the handler
//!   rt_sigreturn ──> registers, FPU state and mask back from the ucontext (trampoline path)
//! ```
//!
//! The frame is Linux's x86-64 layout, so handlers that read or edit `uc_mcontext` (to skip
//! an instruction, or Go's runtime injecting a panic) work unchanged.

use kvm_bindings::kvm_regs;

use crate::error::{Error, GuestFault, Result};
use crate::guest::kernel::sym;
use crate::guest::layout::*;
use crate::linux::threads::CpuState;
use crate::machine::sched::At;
use crate::machine::Machine;
use crate::syscalls::signal::{bit, unblockable, Disposition, SigAction};
use crate::syscalls::Stop;

const SA_SIGINFO: u64 = 4;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// rt_sigframe: restorer address, ucontext (304 bytes), siginfo (128 bytes).
const UCONTEXT: u64 = 8;
const UCONTEXT_SIZE: u64 = 304;
const SIGINFO: u64 = UCONTEXT + UCONTEXT_SIZE;
const FRAME_SIZE: u64 = SIGINFO + 128;
/// Offsets in the ucontext.
const UC_STACK: usize = 16;
const UC_MCONTEXT: usize = 40;
const UC_SIGMASK: usize = 296;
/// RFLAGS bits a handler may change through the frame (Linux's FIX_EFLAGS): CF PF AF ZF SF TF
/// DF OF RF AC.
const FIX_EFLAGS: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x1_0000 | 0x4_0000;

/// The signal a fault raises and its siginfo `si_code` and `si_addr`.
fn signal_of(fault: &GuestFault) -> Option<(u64, i32, u64)> {
    use libc::{SIGBUS, SIGFPE, SIGILL, SIGSEGV, SIGTRAP};
    const SI_KERNEL: i32 = 0x80;
    Some(match *fault {
        GuestFault::PageFault { address, error_code, .. } => {
            // Present (bit 0): a protection violation, else nothing mapped.
            (SIGSEGV as u64, if error_code & 1 != 0 { 2 } else { 1 }, address)
        }
        GuestFault::InvalidOpcode { rip } => (SIGILL as u64, 2, rip), // ILL_ILLOPN
        GuestFault::DivideError { rip } => (SIGFPE as u64, 1, rip),   // FPE_INTDIV
        GuestFault::GeneralProtection { .. } => (SIGSEGV as u64, SI_KERNEL, 0),
        GuestFault::Exception { vector, rip, .. } => match vector {
            1 => (SIGTRAP as u64, 2, rip),       // TRAP_TRACE
            3 => (SIGTRAP as u64, SI_KERNEL, 0), // int3
            4 => (SIGSEGV as u64, SI_KERNEL, 0), // into
            5 => (SIGSEGV as u64, SI_KERNEL, 0), // bound
            16 => (SIGFPE as u64, 0, rip),       // x87
            17 => (SIGBUS as u64, 1, 0),         // alignment check: BUS_ADRALN
            19 => (SIGFPE as u64, 0, rip),       // SIMD
            _ => return None,
        },
        _ => return None,
    })
}

/// Bytes of the XSAVE image for the guest's XCR0 (standard format), as CPUID 0xD reports.
fn xstate_size(m: &Machine) -> u64 {
    let xcr0 = crate::vm::Vm::xcr0(m.vm.host());
    let cpuid = m.vm.host().cpuid.as_slice();
    let mut size = 576; // legacy area + header
    for bit in 2..63u32 {
        if xcr0 & (1 << bit) == 0 {
            continue;
        }
        if let Some(e) = cpuid.iter().find(|e| e.function == 0xd && e.index == bit) {
            size = size.max(u64::from(e.ebx) + u64::from(e.eax));
        }
    }
    size.min(4096 - 4)
}

fn put(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// The general registers in sigcontext order (r8 .. r15, rdi, rsi, rbp, rbx, rdx, rax, rcx,
/// rsp, rip, eflags).
fn gregs(r: &kvm_regs) -> [u64; 18] {
    [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx, r.rax, r.rcx, r.rsp,
        r.rip, r.rflags,
    ]
}

impl Machine {
    /// The program's registers at an exception exit: the general ones are still the
    /// program's; rip, rflags and rsp are in the frame the stub left on the kernel stack.
    pub(crate) fn faulting_regs(&mut self) -> Option<kvm_regs> {
        let mut regs = *self.vm.regs();
        let mut frame = [0u8; 48];
        self.vm.vcpu_area.read(regs.rsp.checked_sub(KVCPU)?, &mut frame)?;
        let w = |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().unwrap());
        if w(2) & 3 == 0 {
            return None; // in the guest kernel: never the program's to handle
        }
        (regs.rip, regs.rflags, regs.rsp) = (w(1), w(3), w(4));
        Some(regs)
    }

    /// Delivers `fault` to the program's handler if it has one for the signal; false when it
    /// does not (or the frame cannot be written: Linux then kills the process too).
    pub(crate) fn deliver_fault(&mut self, vector: u64, fault: &GuestFault) -> Result<bool> {
        let Some((sig, code, addr)) = signal_of(fault) else { return Ok(false) };
        let action = self.proc.signals.action(sig);
        if action.handler <= 1
            || action.flags & SA_RESTORER == 0
            || self.proc.threads.current().sig_mask & bit(sig) != 0
        {
            return Ok(false);
        }
        let Some(regs) = self.faulting_regs() else { return Ok(false) };
        let error_code = match *fault {
            GuestFault::PageFault { error_code, .. }
            | GuestFault::GeneralProtection { error_code, .. }
            | GuestFault::Exception { error_code, .. } => error_code,
            _ => 0,
        };
        let (fs_base, gs_base) = self.vm.segment_bases()?;
        let cpu = CpuState { regs, fs_base, gs_base, xsave: self.vm.xsave()? };
        let mut info = [0u8; 128];
        info[8..12].copy_from_slice(&code.to_le_bytes());
        put(&mut info, 16, addr);
        let cr2 = if sig == libc::SIGSEGV as u64 { addr } else { 0 };
        let Some(entry) = self.push_frame(sig, action, info, &cpu, (error_code, vector, cr2))? else {
            return Ok(false);
        };
        // The vCPU stopped inside the exception stub: back to the guest kernel's start, then
        // into the handler.
        self.restart_kernel_after_exception()?;
        self.vm.regs().rip = sym::ENTER_USER;
        self.vm.regs().rflags = 0x2;
        self.load_cpu_at_syscall(&entry)?;
        Ok(true)
    }

    /// Delivers a signal sent by the program (`kill`, `tgkill`, ...) that is pending for the
    /// running thread and not blocked by it, if there is one: its handler runs (the vCPU's
    /// state, `at` the place it stopped, goes into the frame), or the signal is ignored, or
    /// the run ends as killed by it.  One handler per call: others still pending are
    /// delivered at the next system call (its `rt_sigreturn` at the latest).
    pub(crate) fn deliver_pending(&mut self, at: At) -> Result<Option<Stop>> {
        loop {
            let t = self.proc.threads.current();
            let ready = (t.sig_pending | self.proc.signals.pending) & !t.sig_mask;
            if ready == 0 {
                return Ok(None);
            }
            let sig = u64::from(ready.trailing_zeros()) + 1;
            let b = bit(sig);
            self.proc.threads.current_mut().sig_pending &= !b;
            self.proc.signals.pending &= !b;
            let tkill = self.proc.signals.sent_by_tkill & b != 0;
            self.proc.signals.sent_by_tkill &= !b;
            self.proc_touched = true;
            let action = match self.proc.signals.disposition(sig) {
                Disposition::Ignore => continue,
                Disposition::Terminate => return Ok(Some(Stop::Signaled(sig as i32))),
                Disposition::Handle(action) => action,
            };
            if action.flags & SA_RESTORER == 0 {
                // x86-64 Linux has no way back from such a handler: it kills the process.
                return Ok(Some(Stop::Signaled(libc::SIGSEGV)));
            }
            if at == At::User {
                // As at a time slice: a fault KVM holds is the thread's to raise again later.
                self.vm.discard_events()?;
            }
            let cpu = self.save_cpu(at)?;
            let mut info = [0u8; 128];
            const SI_USER: i32 = 0;
            const SI_TKILL: i32 = -6;
            info[8..12].copy_from_slice(&(if tkill { SI_TKILL } else { SI_USER }).to_le_bytes());
            info[16..20].copy_from_slice(&(self.proc.identity.pid as u32).to_le_bytes());
            info[20..24].copy_from_slice(&(self.proc.identity.uid as u32).to_le_bytes());
            let Some(entry) = self.push_frame(sig, action, info, &cpu, (0, 0, 0))? else {
                // No room for the frame: Linux kills the process with SIGSEGV.
                return Ok(Some(Stop::Signaled(libc::SIGSEGV)));
            };
            self.load_cpu_at(&entry, at)?;
            // A batch must not reset in the guest: the host changed the registers.
            self.vm.vcpu_area.write(VC_BATCH + VB_HOST_TOUCHED, &1u64.to_le_bytes());
            return Ok(None);
        }
    }

    /// Writes an rt_sigframe for `sig` (siginfo `info` with the number filled in here) on the
    /// stack of the thread whose user-mode state is `cpu`, and applies the handler's mask and
    /// SA_RESETHAND; the state that enters the handler, or None when the frame cannot be
    /// written.  `trap` is (error code, trap number, cr2) for the sigcontext.
    fn push_frame(
        &mut self,
        sig: u64,
        action: SigAction,
        mut info: [u8; 128],
        cpu: &CpuState,
        trap: (u64, u64, u64),
    ) -> Result<Option<CpuState>> {
        let regs = cpu.regs;
        let mask = self.proc.threads.current().sig_mask;
        // Where the frame goes: the alternate stack if asked for and not already on it, else
        // below the red zone.
        let (ss_sp, ss_flags, ss_size) = self.proc.threads.current().altstack;
        let on_alt = ss_size > 0 && regs.rsp > ss_sp && regs.rsp <= ss_sp + ss_size;
        let use_alt = action.flags & SA_ONSTACK != 0 && ss_flags & 2 == 0 && ss_size > 0 && !on_alt;
        let mut sp = if use_alt { ss_sp + ss_size } else { regs.rsp.wrapping_sub(128) };
        let xsize = xstate_size(self);
        sp = (sp.wrapping_sub(xsize + 4)) & !63;
        let fpstate = sp;
        sp = ((sp.wrapping_sub(FRAME_SIZE)) & !15).wrapping_sub(8);

        let mut fp = vec![0u8; (xsize + 4) as usize];
        let image: Vec<u8> = cpu.xsave.iter().flat_map(|w| w.to_le_bytes()).collect();
        fp[..xsize as usize].copy_from_slice(&image[..xsize as usize]);
        let xcr0 = crate::vm::Vm::xcr0(self.vm.host());
        let bv = get(&fp, 512) & xcr0;
        put(&mut fp, 512, bv);
        fp[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        fp[468..472].copy_from_slice(&((xsize + 4) as u32).to_le_bytes());
        put(&mut fp, 472, xcr0);
        fp[480..484].copy_from_slice(&(xsize as u32).to_le_bytes());
        fp[xsize as usize..].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());

        let mut frame = vec![0u8; FRAME_SIZE as usize];
        put(&mut frame, 0, action.restorer);
        let uc = UCONTEXT as usize;
        put(&mut frame, uc, UC_FP_XSTATE | UC_SIGCONTEXT_SS);
        put(&mut frame, uc + UC_STACK, ss_sp);
        frame[uc + UC_STACK + 8..uc + UC_STACK + 12].copy_from_slice(&(ss_flags | u32::from(on_alt)).to_le_bytes());
        put(&mut frame, uc + UC_STACK + 16, ss_size);
        let mc = uc + UC_MCONTEXT;
        for (i, v) in gregs(&regs).into_iter().enumerate() {
            put(&mut frame, mc + 8 * i, v);
        }
        let (error_code, trapno, cr2) = trap;
        // cs, gs, fs, ss (16 bits each)
        put(&mut frame, mc + 144, SEL_UCODE | (SEL_UDATA << 48));
        put(&mut frame, mc + 152, error_code);
        put(&mut frame, mc + 160, trapno);
        put(&mut frame, mc + 168, mask);
        put(&mut frame, mc + 176, cr2);
        put(&mut frame, mc + 184, fpstate);
        put(&mut frame, uc + UC_SIGMASK, mask);
        info[..4].copy_from_slice(&(sig as i32).to_le_bytes());
        frame[SIGINFO as usize..].copy_from_slice(&info);

        let mut mem = self.user_memory();
        if mem.write(fpstate, &fp).is_err() || mem.write(sp, &frame).is_err() {
            return Ok(None);
        }
        // The handler runs with its mask; SA_RESETHAND makes the next one the default.
        let mut block = action.mask;
        if action.flags & SA_NODEFER == 0 {
            block |= bit(sig);
        }
        self.proc.threads.current_mut().sig_mask |= block & !unblockable();
        if action.flags & SA_RESETHAND != 0 {
            self.proc.signals.reset_action(sig);
        }
        self.proc_touched = true;
        // A batch must not reset in the guest: the host wrote the frame, which the guest's
        // Dirty bits do not show.
        self.vm.vcpu_area.write(VC_BATCH + VB_HOST_TOUCHED, &1u64.to_le_bytes());
        self.stats.signals_delivered += 1;
        // rcx/r11 are free at a handler's entry.
        let mut entry = regs;
        entry.rip = action.handler;
        entry.rsp = sp;
        entry.rdi = sig;
        entry.rsi = if action.flags & SA_SIGINFO != 0 { sp + SIGINFO } else { 0 };
        entry.rdx = if action.flags & SA_SIGINFO != 0 { sp + UCONTEXT } else { 0 };
        entry.rax = 0;
        entry.rflags = regs.rflags & !(0x100 | 0x400 | 0x4_0000); // TF, DF, AC cleared
        entry.rcx = entry.rip;
        entry.r11 = entry.rflags;
        Ok(Some(CpuState { regs: entry, fs_base: cpu.fs_base, gs_base: cpu.gs_base, xsave: cpu.xsave.clone() }))
    }

    /// rt_sigreturn, at its system-call exit: the registers, FPU state and signal mask the
    /// ucontext at the user's rsp holds.  A frame that cannot be read or loaded is SIGSEGV,
    /// which here is the typed fault.
    pub(crate) fn sigreturn(&mut self) -> Result<Option<GuestFault>> {
        let r = *self.vm.regs();
        let bad = |why: &str| Ok(Some(GuestFault::Vm(format!("rt_sigreturn with a bad frame at {:#x}: {why}", r.rsp))));
        let mem = self.user_memory();
        let mut uc = vec![0u8; UCONTEXT_SIZE as usize];
        if mem.read(r.rsp, &mut uc).is_err() {
            return bad("unreadable");
        }
        let mc = UC_MCONTEXT;
        let g = |i: usize| get(&uc, mc + 8 * i);
        let mut regs = r;
        (regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15) =
            (g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7));
        (regs.rdi, regs.rsi, regs.rbp, regs.rbx, regs.rdx, regs.rax, regs.rcx, regs.rsp) =
            (g(8), g(9), g(10), g(11), g(12), g(13), g(14), g(15));
        regs.rip = g(16);
        regs.rflags = (r.r11 & !FIX_EFLAGS) | (g(17) & FIX_EFLAGS);
        if regs.rip >= USER_VA_LIMIT {
            return bad("rip outside the user half");
        }
        let mut xsave = self.vm.xsave()?;
        let fpstate = get(&uc, mc + 184);
        if fpstate != 0 {
            let size = xstate_size(self) as usize;
            let mut fp = vec![0u8; size];
            if self.user_memory().read(fpstate, &mut fp).is_err() {
                return bad("unreadable FPU state");
            }
            let xcr0 = crate::vm::Vm::xcr0(self.vm.host());
            let bv = get(&fp, 512) & xcr0;
            put(&mut fp, 512, bv);
            fp[464..512].fill(0); // software-reserved: the magic numbers
            for (i, w) in xsave.iter_mut().enumerate().take(size / 4) {
                *w = u32::from_le_bytes(fp[i * 4..i * 4 + 4].try_into().unwrap());
            }
        }
        self.proc.threads.current_mut().sig_mask = get(&uc, UC_SIGMASK) & !unblockable();
        self.proc_touched = true;
        let (fs_base, gs_base) = self.vm.segment_bases()?;
        match self.load_cpu_at_syscall(&CpuState { regs, fs_base, gs_base, xsave }) {
            Ok(()) => Ok(None),
            // KVM refuses an XSAVE image with reserved bits set (MXCSR, header): the frame's.
            Err(Error::Kvm { op: "KVM_SET_XSAVE", .. }) => bad("invalid FPU state"),
            Err(e) => Err(e),
        }
    }
}
