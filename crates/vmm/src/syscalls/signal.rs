//! Signals: dispositions (one set for the process), masks, pending sets and alternate
//! stacks (per thread), and sending (`kill`, `tgkill`, `tkill`).
//!
//! Recorded with Linux's validation so that C libraries and runtimes set up as usual.  A CPU
//! fault whose signal has a handler is delivered to it at once (`crate::signal_frame`, which
//! also does `rt_sigreturn`); without one it ends the run with a typed fault.  A signal the
//! program sends is pending on the thread (`tgkill`, `tkill`) or the process (`kill`) until a
//! thread that does not block it returns from a system call or is given the vCPU; then
//! `crate::signal_frame` delivers it: a handler runs, an ignored signal vanishes, a signal
//! whose default is to terminate ends the run as "killed by signal N".  Sending one to a
//! thread waiting in a call (futex, sleep, a read that would block) ends the wait as Linux
//! does: EINTR, or the call is made again after the handler with SA_RESTART.

use super::{Ctx, Errno, Sched, Stop, SysResult};

const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const SA_RESTART: u64 = 0x1000_0000;
const SS_ONSTACK: u32 = 1;
const SS_DISABLE: u32 = 2;
const SS_AUTODISARM: u32 = 1 << 31;
const MINSIGSTKSZ: u64 = 2048;

/// One `struct sigaction` (kernel layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigAction {
    /// Handler address, SIG_DFL (0) or SIG_IGN (1).
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// sa_restorer.
    pub restorer: u64,
    /// Blocked during the handler.
    pub mask: u64,
}

/// The signal state the process shares (each thread's mask, pending set and alternate stack
/// are in [`crate::linux::threads::Thread`]).
#[derive(Debug, Clone)]
pub struct SignalState {
    actions: [SigAction; 64],
    /// Signals sent to the process (`kill`) and not delivered yet: any thread that does not
    /// block one takes it.
    pub pending: u64,
    /// Of the pending signals (the process's and every thread's), those sent with `tgkill`
    /// or `tkill` (siginfo `si_code` SI_TKILL rather than SI_USER).
    pub sent_by_tkill: u64,
}

impl Default for SignalState {
    fn default() -> Self {
        SignalState { actions: [SigAction::default(); 64], pending: 0, sent_by_tkill: 0 }
    }
}

/// What happens to a signal that is delivered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Nothing (SIG_IGN, or a default action that ignores it).
    Ignore,
    /// The process ends, killed by the signal (the default action of most signals).
    Terminate,
    /// The handler runs.
    Handle(SigAction),
}

/// The bit of signal `sig` in a mask.
pub fn bit(sig: u64) -> u64 {
    1 << (sig - 1)
}

impl SignalState {
    /// The action of `sig` (1..=64).
    pub fn action(&self, sig: u64) -> SigAction {
        self.actions[sig as usize - 1]
    }

    /// Resets `sig` to SIG_DFL (SA_RESETHAND).
    pub fn reset_action(&mut self, sig: u64) {
        self.actions[sig as usize - 1] = SigAction::default();
    }

    /// What delivering `sig` (1..=64) does now.  Job control does not exist in a VM: the
    /// stop signals (and SIGCONT) are ignored by default, like SIGCHLD, SIGURG and SIGWINCH.
    pub fn disposition(&self, sig: u64) -> Disposition {
        let action = self.action(sig);
        match action.handler {
            _ if sig == libc::SIGKILL as u64 => Disposition::Terminate,
            SIG_IGN => Disposition::Ignore,
            SIG_DFL if ignored_by_default(sig) => Disposition::Ignore,
            SIG_DFL => Disposition::Terminate,
            _ => Disposition::Handle(action),
        }
    }
}

/// Signals whose default action does nothing here.
fn ignored_by_default(sig: u64) -> bool {
    matches!(
        sig as i32,
        libc::SIGCHLD
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGCONT
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    )
}

/// SIGKILL and SIGSTOP: never blocked.
pub fn unblockable() -> u64 {
    bit(libc::SIGKILL as u64) | bit(libc::SIGSTOP as u64)
}

/// Where a signal is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The process (`kill`): any thread that does not block it.
    Process,
    /// The thread with this tid (`tgkill`, `tkill`).
    Thread(u64),
}

/// Sends `sig` (0..=64; 0 only checks) to `target`, an existing thread or the process.
pub fn send(ctx: &mut Ctx<'_>, target: Target, sig: u64) -> SysResult {
    let threads = &mut ctx.proc.threads;
    let index = match target {
        Target::Thread(tid) => threads.index_of(tid).ok_or(Errno::ESRCH)?,
        Target::Process => threads.current_index(),
    };
    if sig > 64 {
        return Err(Errno::EINVAL);
    }
    if sig == 0 {
        return Ok(0);
    }
    let b = bit(sig);
    let blocked = threads.get_mut(index).sig_mask & b != 0;
    match ctx.proc.signals.disposition(sig) {
        // Discarded at once, as Linux does, unless blocked (the disposition may change
        // before it is unblocked).
        Disposition::Ignore if !blocked => return Ok(0),
        // A fatal signal ends the process at once (Linux kills every thread).
        Disposition::Terminate if !blocked || sig == libc::SIGKILL as u64 => {
            ctx.stop = Some(Stop::Signaled(sig as i32));
            return Ok(0);
        }
        _ => {}
    }
    let restart = ctx.proc.signals.action(sig).flags & SA_RESTART != 0;
    match target {
        Target::Thread(_) => {
            ctx.proc.signals.sent_by_tkill |= b;
            let t = threads.get_mut(index);
            t.sig_pending |= b;
            if !blocked {
                threads.interrupt(index, restart);
            }
        }
        Target::Process => {
            ctx.proc.signals.sent_by_tkill &= !b;
            ctx.proc.signals.pending |= b;
            if blocked {
                // The running thread blocks it: a waiting one that does not takes it.
                if let Some(i) = threads.waiter_accepting(b) {
                    threads.interrupt(i, restart);
                }
            }
        }
    }
    Ok(0)
}

/// rt_sigpending(set, sigsetsize): the pending signals the calling thread blocks.
pub fn sys_rt_sigpending(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    if a[1] > 8 {
        return Err(Errno::EINVAL);
    }
    let t = ctx.proc.threads.current();
    let pending = (t.sig_pending | ctx.proc.signals.pending) & t.sig_mask;
    ctx.mem.write(a[0], &pending.to_le_bytes()[..a[1] as usize])?;
    Ok(0)
}

/// rt_sigaction(sig, act, oldact, sigsetsize)
pub fn sys_rt_sigaction(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (sig, act, old, size) = (a[0], a[1], a[2], a[3]);
    if size != 8 || !(1..=64).contains(&sig) {
        return Err(Errno::EINVAL);
    }
    if act != 0 && (sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64) {
        return Err(Errno::EINVAL);
    }
    let new = if act != 0 {
        let b = ctx.mem.read_vec(act, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Some(SigAction { handler: w(0), flags: w(1), restorer: w(2), mask: w(3) & !unblockable() })
    } else {
        None
    };
    if old != 0 {
        let cur = ctx.proc.signals.actions[sig as usize - 1];
        let mut b = [0u8; 32];
        for (i, v) in [cur.handler, cur.flags, cur.restorer, cur.mask].into_iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        ctx.mem.write(old, &b)?;
    }
    if let Some(n) = new {
        ctx.proc.signals.actions[sig as usize - 1] = n;
    }
    Ok(0)
}

/// rt_sigreturn(): the machine restores the registers from the frame on the stack.
pub fn sys_rt_sigreturn(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    ctx.sched = Some(Sched::SigReturn);
    Ok(0)
}

/// rt_sigprocmask(how, set, oldset, sigsetsize)
pub fn sys_rt_sigprocmask(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (how, set, old, size) = (a[0] as i32, a[1], a[2], a[3]);
    if size != 8 {
        return Err(Errno::EINVAL);
    }
    let new = if set != 0 {
        if !matches!(how, libc::SIG_BLOCK | libc::SIG_UNBLOCK | libc::SIG_SETMASK) {
            return Err(Errno::EINVAL);
        }
        Some(ctx.mem.read_u64(set)?)
    } else {
        None
    };
    if old != 0 {
        let m = ctx.proc.threads.current().sig_mask;
        ctx.mem.write_u64(old, m)?;
    }
    if let Some(s) = new {
        // Pending signals it unblocks are delivered as the call returns (signal_frame).
        let m = &mut ctx.proc.threads.current_mut().sig_mask;
        *m = match how {
            libc::SIG_BLOCK => *m | s,
            libc::SIG_UNBLOCK => *m & !s,
            _ => s,
        } & !unblockable();
    }
    Ok(0)
}

/// sigaltstack(ss, old_ss): the calling thread's.
pub fn sys_sigaltstack(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let (cur_sp, cur_flags, cur_size) = ctx.proc.threads.current().altstack;
    let rsp = ctx.user_rsp;
    let on_stack = cur_size > 0 && rsp > cur_sp && rsp <= cur_sp + cur_size;
    let new = if a[0] != 0 {
        let b = ctx.mem.read_vec(a[0], 24)?;
        let sp = u64::from_le_bytes(b[..8].try_into().unwrap());
        let flags = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let size = u64::from_le_bytes(b[16..].try_into().unwrap());
        let mode = flags & !SS_AUTODISARM;
        if mode != 0 && mode != SS_DISABLE && mode != SS_ONSTACK {
            return Err(Errno::EINVAL);
        }
        if on_stack {
            // Linux refuses to change the stack a handler runs on.
            return Err(Errno::EPERM);
        }
        if mode == SS_DISABLE {
            Some((0, SS_DISABLE, 0))
        } else if size < MINSIGSTKSZ {
            return Err(Errno::ENOMEM);
        } else {
            Some((sp, flags & SS_AUTODISARM, size))
        }
    } else {
        None
    };
    if a[1] != 0 {
        // The flags as Linux reports them: whether the thread runs on the stack now.
        let (sp, flags, size) = (cur_sp, cur_flags | if on_stack { SS_ONSTACK } else { 0 }, cur_size);
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&sp.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[16..].copy_from_slice(&size.to_le_bytes());
        ctx.mem.write(a[1], &b)?;
    }
    if let Some(s) = new {
        ctx.proc.threads.current_mut().altstack = s;
    }
    Ok(0)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(SignalState { actions, pending, sent_by_tkill });

// Snapshot files (crate::persist).
crate::persist::persist_fields!(SigAction { handler, flags, restorer, mask });
