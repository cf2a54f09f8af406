//! Signal dispositions, masks and the alternate stack.
//!
//! Recorded with Linux's validation so that C libraries and runtimes set up as usual.  A CPU
//! fault whose signal has a handler is delivered to it (`crate::signal_frame`, which also does
//! `rt_sigreturn`); without one it ends the run with a typed fault.  No signal is delivered
//! asynchronously: a signal the program sends itself takes the default action (see
//! `process::sys_kill`).

use super::{Ctx, Errno, Sched, SysResult};

const SIG_IGN: u64 = 1;
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

/// All signal state of the process.
#[derive(Debug, Clone)]
pub struct SignalState {
    actions: [SigAction; 64],
    /// The blocked set.
    pub mask: u64,
    /// sigaltstack: (sp, flags, size).
    pub altstack: (u64, u32, u64),
}

impl Default for SignalState {
    fn default() -> Self {
        SignalState { actions: [SigAction::default(); 64], mask: 0, altstack: (0, SS_DISABLE, 0) }
    }
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

    /// Whether `sig` is set to SIG_IGN.
    pub fn is_ignored(&self, sig: u64) -> bool {
        (1..=64).contains(&sig) && self.actions[sig as usize - 1].handler == SIG_IGN
    }
}

fn unblockable() -> u64 {
    (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1))
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
        let m = ctx.proc.signals.mask;
        ctx.mem.write_u64(old, m)?;
    }
    if let Some(s) = new {
        let m = &mut ctx.proc.signals.mask;
        *m = match how {
            libc::SIG_BLOCK => *m | s,
            libc::SIG_UNBLOCK => *m & !s,
            _ => s,
        } & !unblockable();
    }
    Ok(0)
}

/// sigaltstack(ss, old_ss)
pub fn sys_sigaltstack(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let new = if a[0] != 0 {
        let b = ctx.mem.read_vec(a[0], 24)?;
        let sp = u64::from_le_bytes(b[..8].try_into().unwrap());
        let flags = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let size = u64::from_le_bytes(b[16..].try_into().unwrap());
        let mode = flags & !SS_AUTODISARM;
        if mode != 0 && mode != SS_DISABLE && mode != SS_ONSTACK {
            return Err(Errno::EINVAL);
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
        let (sp, flags, size) = ctx.proc.signals.altstack;
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&sp.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[16..].copy_from_slice(&size.to_le_bytes());
        ctx.mem.write(a[1], &b)?;
    }
    if let Some(s) = new {
        ctx.proc.signals.altstack = s;
    }
    Ok(0)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(SignalState { actions, mask, altstack });

// Snapshot files (crate::persist).
crate::persist::persist_fields!(SigAction { handler, flags, restorer, mask });
