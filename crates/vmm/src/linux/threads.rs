//! The program's threads as plain data: who exists, who runs, who waits for what.
//!
//! Every thread of a tenantvm program runs on the VM's one vCPU.  The thread that runs owns
//! the vCPU's registers; every other thread keeps its CPU state here ([`CpuState`]), saved
//! and loaded by `crate::machine::sched` when the vCPU switches between them.  Switches happen only
//! where a thread cannot go on (a futex wait, a sleep, a read that would block, exit), where
//! it asks for it (`sched_yield`), or when its time slice ends: scheduling is cooperative
//! with a preemptive backstop, so a spinning thread cannot starve the one it waits for.
//!
//! Futex waiters are threads in [`Wait::Futex`]; a wake takes them in the order they started
//! waiting.  The table is part of [`crate::syscalls::Process`], so threads are in a tenant's
//! snapshot and a reset brings back exactly the threads (and their states) of the snapshot.

use std::time::Instant;

use super::errno::Errno;

/// Most threads a VM may have at once; `clone` beyond is EAGAIN.
pub const MAX_THREADS: usize = 64;

/// The CPU state of a thread that is not running, as it would be in user mode: `rip` and
/// `rflags` are the program's (a thread stopped in a system call has `rcx = rip` and
/// `r11 = rflags`, as Linux leaves them after `syscall`).
#[derive(Debug, Clone)]
pub struct CpuState {
    /// General registers, rip and rflags.
    pub regs: kvm_bindings::kvm_regs,
    /// FS base (the thread pointer).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// The XSAVE image (x87, SSE, AVX state), as KVM_GET_XSAVE gives it.
    pub xsave: Box<[u32; 1024]>,
}

/// What a thread that is not runnable waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `futex` WAIT on `addr` (matching `bitset` on wakes), until `until` if set.
    Futex {
        /// The futex word's address.
        addr: u64,
        /// The waiter's bitset (all ones for plain FUTEX_WAIT).
        bitset: u32,
        /// Timeout.
        until: Option<Instant>,
        /// Order of arrival (wakes take the oldest first).
        seq: u64,
    },
    /// A sleep until the instant.
    Sleep(Instant),
    /// A call that would have blocked (an empty pipe, `epoll_wait`, ...): it is made again
    /// once another thread has done something, or returns 0 at the instant if set.
    Retry(Option<Instant>),
}

/// Where a thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// On the vCPU.
    Running,
    /// Ready to run.
    Runnable,
    /// Waiting.
    Waiting(Wait),
    /// Called `exit`; removed at the next switch.
    Exited,
}

/// How a wait whose time is up ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    /// A futex wait: ETIMEDOUT.
    Futex,
    /// A call waiting to be made again: it returns 0 instead (nothing became ready).
    Retry,
    /// A sleep: 0 (already in rax).
    Sleep,
}

impl TimedOut {
    /// Sets the result in `regs`, a thread stopped at its `syscall` instruction (made again)
    /// or after it.  `at_syscall_exit`: the registers are the vCPU's at a system-call exit
    /// (user rip in rcx) rather than a saved user-mode state.
    pub fn finish(self, regs: &mut kvm_bindings::kvm_regs, at_syscall_exit: bool) {
        match self {
            TimedOut::Futex => regs.rax = (-i64::from(libc::ETIMEDOUT)) as u64,
            TimedOut::Retry => {
                // Step over the `syscall` instruction it was to make again.
                regs.rax = 0;
                regs.rcx += 2;
                if !at_syscall_exit {
                    regs.rip += 2;
                }
            }
            TimedOut::Sleep => {}
        }
    }
}

/// One thread.
#[derive(Debug, Clone)]
pub struct Thread {
    /// Its id (the first thread's is the pid).
    pub tid: u64,
    /// Where it is.
    pub state: RunState,
    /// Its CPU state while it is not running.
    pub cpu: Option<CpuState>,
    /// set_tid_address / CLONE_CHILD_CLEARTID: zeroed and futex-woken at exit.
    pub clear_child_tid: u64,
    /// set_robust_list head.
    pub robust_list: u64,
    /// rseq area, length and signature.
    pub rseq: Option<(u64, u32, u32)>,
    /// The deadline of the call it waits to make again (kept across its attempts).
    pub retry_until: Option<Instant>,
    /// When a call waiting to be made again is made again anyway (a timer it waits on).
    pub recheck_at: Option<Instant>,
    /// Its signal mask (bit n-1 blocks signal n), inherited by the threads it creates.
    pub sig_mask: u64,
    /// Signals sent to this thread (`tgkill`, `tkill`) and not delivered yet.
    pub sig_pending: u64,
    /// Its alternate signal stack (`sigaltstack`): sp, flags, size.
    pub altstack: (u64, u32, u64),
}

impl Thread {
    fn new(tid: u64, state: RunState) -> Thread {
        Thread {
            tid,
            state,
            cpu: None,
            clear_child_tid: 0,
            robust_list: 0,
            rseq: None,
            retry_until: None,
            recheck_at: None,
            sig_mask: 0,
            sig_pending: 0,
            altstack: NO_ALTSTACK,
        }
    }
}

/// A thread's alternate signal stack before `sigaltstack` (SS_DISABLE).
pub const NO_ALTSTACK: (u64, u32, u64) = (0, 2, 0);

/// All threads of the process.
#[derive(Debug, Clone)]
pub struct Threads {
    /// The running thread made a system call (other than one that only parked it) since it
    /// got the vCPU: what a thread waiting to make a call again may have waited for.
    pub active: bool,
    list: Vec<Thread>,
    current: usize,
    next_tid: u64,
    seq: u64,
}

impl Threads {
    /// One running thread whose tid is `pid`.
    pub fn new(pid: u64) -> Threads {
        Threads {
            active: false,
            list: vec![Thread::new(pid, RunState::Running)],
            current: 0,
            next_tid: pid + 1,
            seq: 0,
        }
    }

    /// How many threads exist (exited ones not yet removed included).
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Whether more than one thread exists: the scheduler has work to do.
    pub fn multi(&self) -> bool {
        self.list.len() > 1
    }

    /// The running thread.
    pub fn current(&self) -> &Thread {
        &self.list[self.current]
    }

    /// The running thread, mutably.
    pub fn current_mut(&mut self) -> &mut Thread {
        &mut self.list[self.current]
    }

    /// Index of the running thread.
    pub fn current_index(&self) -> usize {
        self.current
    }

    /// Thread by index.
    pub fn get_mut(&mut self, i: usize) -> &mut Thread {
        &mut self.list[i]
    }

    /// Whether `tid` is one of the threads.
    pub fn contains(&self, tid: u64) -> bool {
        self.list.iter().any(|t| t.tid == tid && t.state != RunState::Exited)
    }

    /// Whether a thread other than the running one could run now.
    pub fn others_runnable(&self) -> bool {
        self.list.iter().enumerate().any(|(i, t)| i != self.current && t.state == RunState::Runnable)
    }

    /// Adds a runnable thread (its CPU state to be filled in by the caller); its index and tid.
    pub fn spawn(&mut self) -> Result<(usize, u64), Errno> {
        if self.list.len() >= MAX_THREADS {
            return Err(Errno::EAGAIN);
        }
        let tid = self.next_tid;
        self.next_tid += 1;
        self.list.push(Thread::new(tid, RunState::Runnable));
        Ok((self.list.len() - 1, tid))
    }

    /// Puts the running thread to wait on futex `addr`.
    pub fn wait_futex(&mut self, addr: u64, bitset: u32, until: Option<Instant>) {
        self.seq += 1;
        let seq = self.seq;
        self.current_mut().state = RunState::Waiting(Wait::Futex { addr, bitset, until, seq });
    }

    /// Waiters on `addr` whose bitset meets `bitset`, oldest first.
    fn waiters(&self, addr: u64, bitset: u32) -> Vec<usize> {
        let mut w: Vec<(u64, usize)> = self
            .list
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.state {
                RunState::Waiting(Wait::Futex { addr: a, bitset: b, seq, .. }) if a == addr && b & bitset != 0 => {
                    Some((seq, i))
                }
                _ => None,
            })
            .collect();
        w.sort_unstable();
        w.into_iter().map(|(_, i)| i).collect()
    }

    /// Wakes up to `n` waiters on `addr` (bitset matching); how many were woken.  A woken
    /// waiter's `futex` returns 0 (the value its saved registers already hold).
    pub fn futex_wake(&mut self, addr: u64, bitset: u32, n: u64) -> u64 {
        let mut woken = 0;
        for i in self.waiters(addr, bitset) {
            if woken >= n {
                break;
            }
            self.list[i].state = RunState::Runnable;
            woken += 1;
        }
        woken
    }

    /// Wakes up to `wake` waiters on `addr` and moves up to `requeue` of the rest to `addr2`;
    /// (woken, requeued).
    pub fn futex_requeue(&mut self, addr: u64, wake: u64, addr2: u64, requeue: u64) -> (u64, u64) {
        let (mut woken, mut moved) = (0, 0);
        for i in self.waiters(addr, u32::MAX) {
            if woken < wake {
                self.list[i].state = RunState::Runnable;
                woken += 1;
            } else if moved < requeue {
                if let RunState::Waiting(Wait::Futex { addr: a, .. }) = &mut self.list[i].state {
                    *a = addr2;
                }
                moved += 1;
            } else {
                break;
            }
        }
        (woken, moved)
    }

    /// Makes runnable every waiter whose time is up at `now`: a futex wait that timed out
    /// returns ETIMEDOUT, a call waiting to be made again returns 0 (both written into the
    /// saved registers), a sleep 0.  When that waiter is the running thread (whose registers
    /// are on the vCPU, not saved here), says how the caller must finish its call.
    pub fn wake_expired(&mut self, now: Instant) -> Option<TimedOut> {
        let mut current = None;
        for (i, t) in self.list.iter_mut().enumerate() {
            if matches!(t.state, RunState::Waiting(Wait::Retry(_))) && t.recheck_at.is_some_and(|r| r <= now) {
                // Made again, as after another thread's activity.
                t.state = RunState::Runnable;
                t.recheck_at = None;
                continue;
            }
            let how = match t.state {
                RunState::Waiting(Wait::Futex { until: Some(u), .. }) if u <= now => Some(TimedOut::Futex),
                RunState::Waiting(Wait::Retry(Some(u))) if u <= now => Some(TimedOut::Retry),
                RunState::Waiting(Wait::Sleep(u)) if u <= now => Some(TimedOut::Sleep),
                _ => None,
            };
            let Some(how) = how else { continue };
            t.state = RunState::Runnable;
            if how == TimedOut::Retry {
                t.retry_until = None;
            }
            match t.cpu.as_mut() {
                Some(cpu) => how.finish(&mut cpu.regs, false),
                None if i == self.current => current = Some(how),
                None => {}
            }
        }
        current
    }

    /// The earliest time a waiting thread becomes runnable by itself.
    pub fn earliest_timeout(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter_map(|t| match t.state {
                RunState::Waiting(Wait::Futex { until, .. }) => until,
                RunState::Waiting(Wait::Sleep(u)) => Some(u),
                RunState::Waiting(Wait::Retry(u)) => match (u, t.recheck_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                _ => None,
            })
            .min()
    }

    /// Makes every thread waiting to retry a call runnable (another thread did something).
    pub fn wake_retriers(&mut self) {
        for t in &mut self.list {
            if matches!(t.state, RunState::Waiting(Wait::Retry(_))) {
                t.state = RunState::Runnable;
            }
        }
    }

    /// Index of the thread `tid` (exited ones excluded).
    pub fn index_of(&self, tid: u64) -> Option<usize> {
        self.list.iter().position(|t| t.tid == tid && t.state != RunState::Exited)
    }

    /// Index of a waiting thread that does not block the signals in `bit`, if any.
    pub fn waiter_accepting(&self, bit: u64) -> Option<usize> {
        self.list.iter().position(|t| matches!(t.state, RunState::Waiting(_)) && t.sig_mask & bit == 0)
    }

    /// Ends the wait of thread `i` for a signal handler to run (a thread that does not wait
    /// is left alone).  Its call returns EINTR, or is made again after the handler when
    /// `restart` (SA_RESTART) and Linux restarts that call: a futex wait without timeout, a
    /// read, write or other call parked to be made again (not `poll`/`epoll_wait`, which
    /// Linux never restarts after a handler).
    pub fn interrupt(&mut self, i: usize, restart: bool) {
        let t = &mut self.list[i];
        let RunState::Waiting(wait) = t.state else { return };
        let Some(cpu) = t.cpu.as_mut() else { return };
        let eintr = (-i64::from(libc::EINTR)) as u64;
        let r = &mut cpu.regs;
        match wait {
            Wait::Futex { until: None, .. } if restart => {
                // Back to the `syscall` instruction, with the call's number in rax again.
                r.rip -= 2;
                r.rax = libc::SYS_futex as u64;
            }
            Wait::Futex { .. } | Wait::Sleep(_) => r.rax = eintr,
            Wait::Retry(_) => {
                // Saved at its `syscall` instruction with the number in rax.
                let never = [libc::SYS_poll, libc::SYS_ppoll, libc::SYS_epoll_wait, libc::SYS_epoll_pwait];
                if !restart || never.contains(&(r.rax as i64)) {
                    r.rip += 2;
                    r.rax = eintr;
                }
            }
        }
        r.rcx = r.rip;
        t.retry_until = None;
        t.recheck_at = None;
        t.state = RunState::Runnable;
    }

    /// The next runnable thread after the running one, round robin (the running one last).
    pub fn pick_next(&self) -> Option<usize> {
        let n = self.list.len();
        (1..=n).map(|k| (self.current + k) % n).find(|&i| self.list[i].state == RunState::Runnable)
    }

    /// Makes thread `next` the running one; drops the previous one if it exited.  Returns
    /// the new index of `next`.
    pub fn switch_to(&mut self, next: usize) -> usize {
        let mut next = next;
        if self.list[self.current].state == RunState::Exited && self.current != next {
            self.list.remove(self.current);
            if next > self.current {
                next -= 1;
            }
        }
        self.current = next;
        self.list[next].state = RunState::Running;
        self.active = false;
        next
    }
}

// Snapshot files (crate::persist): every thread with its CPU state, its wait and its
// registrations, and the scheduler's state.  Deadlines are written relative to the snapshot's
// epoch and rebased onto the loader's (crate::persist::Epoch).
crate::persist::persist_fields!(Thread {
    tid,
    state,
    cpu,
    clear_child_tid,
    robust_list,
    rseq,
    retry_until,
    recheck_at,
    sig_mask,
    sig_pending,
    altstack
});

impl crate::persist::Persist for CpuState {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        let CpuState { regs, fs_base, gs_base, xsave } = self;
        regs.save(e)?;
        fs_base.save(e)?;
        gs_base.save(e)?;
        // The XSAVE image as its 4 KiB of bytes (not 1024 eight-byte integers).
        e.bytes(&xsave.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>());
        Ok(())
    }

    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use crate::persist::Persist;
        let regs = Persist::load(d)?;
        let fs_base = Persist::load(d)?;
        let gs_base = Persist::load(d)?;
        let bytes = d.bytes()?;
        if bytes.len() != 4096 {
            return Err(crate::persist::Malformed(format!("an XSAVE image of {} bytes", bytes.len())));
        }
        let mut xsave = Box::new([0u32; 1024]);
        for (w, b) in xsave.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
        Ok(CpuState { regs, fs_base, gs_base, xsave })
    }
}

impl crate::persist::Persist for Wait {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        match self {
            Wait::Futex { addr, bitset, until, seq } => {
                e.u64(0);
                addr.save(e)?;
                bitset.save(e)?;
                until.save(e)?;
                seq.save(e)
            }
            Wait::Sleep(until) => {
                e.u64(1);
                until.save(e)
            }
            Wait::Retry(until) => {
                e.u64(2);
                until.save(e)
            }
        }
    }

    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use crate::persist::Persist;
        Ok(match d.tag("thread wait", 3)? {
            0 => Wait::Futex {
                addr: Persist::load(d)?,
                bitset: Persist::load(d)?,
                until: Persist::load(d)?,
                seq: Persist::load(d)?,
            },
            1 => Wait::Sleep(Persist::load(d)?),
            _ => Wait::Retry(Persist::load(d)?),
        })
    }
}

impl crate::persist::Persist for RunState {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        match self {
            RunState::Running => e.u64(0),
            RunState::Runnable => e.u64(1),
            RunState::Waiting(w) => {
                e.u64(2);
                w.save(e)?;
            }
            RunState::Exited => e.u64(3),
        }
        Ok(())
    }

    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        Ok(match d.tag("thread state", 4)? {
            0 => RunState::Running,
            1 => RunState::Runnable,
            2 => RunState::Waiting(crate::persist::Persist::load(d)?),
            _ => RunState::Exited,
        })
    }
}

impl crate::persist::Persist for Threads {
    fn save(&self, e: &mut crate::persist::Enc) -> Result<(), crate::persist::Unsupported> {
        let Threads { active, list, current, next_tid, seq } = self;
        active.save(e)?;
        list.save(e)?;
        current.save(e)?;
        next_tid.save(e)?;
        seq.save(e)
    }

    /// Refuses a table the scheduler could not run: no thread, too many, the current one not
    /// running (or with a saved state), another running or without a saved state to resume
    /// from, tids repeated or not below `next_tid`.
    fn load(d: &mut crate::persist::Dec<'_>) -> Result<Self, crate::persist::Malformed> {
        use crate::persist::{Malformed, Persist};
        let t = Threads {
            active: Persist::load(d)?,
            list: Persist::load(d)?,
            current: Persist::load(d)?,
            next_tid: Persist::load(d)?,
            seq: Persist::load(d)?,
        };
        let n = t.list.len();
        if n == 0 || n > MAX_THREADS || t.current >= n {
            return Err(Malformed(format!("thread {} of {n} is current", t.current)));
        }
        for (i, th) in t.list.iter().enumerate() {
            let ok = if i == t.current {
                th.state == RunState::Running && th.cpu.is_none()
            } else {
                !matches!(th.state, RunState::Running | RunState::Exited) && th.cpu.is_some()
            };
            if !ok {
                return Err(Malformed(format!("thread {} cannot be resumed from its state {:?}", th.tid, th.state)));
            }
            if th.tid >= t.next_tid || t.list[..i].iter().any(|o| o.tid == th.tid) {
                return Err(Malformed(format!("thread id {} repeated or past the next one", th.tid)));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn three() -> Threads {
        let mut t = Threads::new(2);
        assert_eq!(t.spawn().unwrap(), (1, 3));
        assert_eq!(t.spawn().unwrap(), (2, 4));
        t
    }

    #[test]
    fn wakes_take_the_oldest_waiters_first_and_respect_bitsets() {
        let mut t = three();
        t.wait_futex(0x1000, u32::MAX, None); // thread 0
        t.switch_to(1);
        t.wait_futex(0x1000, 0b10, None); // thread 1
        t.switch_to(2);
        assert_eq!(t.futex_wake(0x1000, 0b01, 5), 1, "only thread 0's bitset matches");
        assert_eq!(t.list[0].state, RunState::Runnable);
        assert!(matches!(t.list[1].state, RunState::Waiting(_)));
        assert_eq!(t.futex_wake(0x2000, u32::MAX, 5), 0);
        assert_eq!(t.futex_wake(0x1000, u32::MAX, 5), 1);
    }

    #[test]
    fn requeue_wakes_some_and_moves_the_rest() {
        let mut t = three();
        t.wait_futex(0x10, u32::MAX, None);
        t.switch_to(1);
        t.wait_futex(0x10, u32::MAX, None);
        t.switch_to(2);
        assert_eq!(t.futex_requeue(0x10, 1, 0x20, 10), (1, 1));
        assert_eq!(t.list[0].state, RunState::Runnable, "the oldest is woken");
        assert_eq!(t.futex_wake(0x10, u32::MAX, 10), 0);
        assert_eq!(t.futex_wake(0x20, u32::MAX, 10), 1);
    }

    #[test]
    fn the_cap_is_eagain_and_exited_threads_leave_at_the_switch() {
        let mut t = Threads::new(2);
        for _ in 1..MAX_THREADS {
            t.spawn().unwrap();
        }
        assert_eq!(t.spawn(), Err(Errno::EAGAIN));
        t.current_mut().state = RunState::Exited;
        let next = t.pick_next().unwrap();
        assert_eq!(t.switch_to(next), 0);
        assert_eq!(t.count(), MAX_THREADS - 1);
        assert_eq!(t.current().tid, 3);
    }

    #[test]
    fn timeouts_make_waiters_runnable_with_etimedout() {
        let mut t = three();
        let now = Instant::now();
        t.wait_futex(0x10, u32::MAX, Some(now));
        t.list[0].cpu = Some(CpuState { regs: Default::default(), fs_base: 0, gs_base: 0, xsave: Box::new([0; 1024]) });
        t.switch_to(1);
        t.current_mut().state = RunState::Waiting(Wait::Sleep(now + Duration::from_secs(60)));
        assert_eq!(t.earliest_timeout(), Some(now));
        assert_eq!(t.wake_expired(now), None, "the running thread sleeps on");
        assert_eq!(t.list[0].state, RunState::Runnable);
        assert_eq!(t.list[0].cpu.as_ref().unwrap().regs.rax as i64, -i64::from(libc::ETIMEDOUT));
        assert!(matches!(t.list[1].state, RunState::Waiting(Wait::Sleep(_))));
    }

    fn cpu(rip: u64) -> Option<CpuState> {
        let mut xsave = Box::new([0u32; 1024]);
        xsave[7] = 0xdead_beef;
        let regs = kvm_bindings::kvm_regs { rip, rsp: 0x7000, ..Default::default() };
        Some(CpuState { regs, fs_base: 0x1000 + rip, gs_base: 2, xsave })
    }

    /// Threads as a snapshot holds them: the main thread running, one waiting on a futex
    /// with a timeout, one sleeping, one waiting to retry a call, one runnable.
    fn snapshot_like(epoch: Instant) -> Threads {
        let mut t = Threads::new(2);
        for _ in 0..4 {
            t.spawn().unwrap();
        }
        t.wait_futex(0x10, 0b1, Some(epoch + Duration::from_millis(5))); // the main thread, for now
        t.list[0].cpu = cpu(0x400000);
        t.switch_to(1);
        t.current_mut().state = RunState::Waiting(Wait::Sleep(epoch + Duration::from_secs(2)));
        t.list[1].cpu = cpu(0x400100);
        t.switch_to(2);
        t.current_mut().state = RunState::Waiting(Wait::Retry(None));
        t.current_mut().recheck_at = Some(epoch + Duration::from_millis(1));
        t.list[2].cpu = cpu(0x400200);
        t.list[3].cpu = cpu(0x400300);
        t.list[3].rseq = Some((0x9000, 32, 0x53053053));
        t.list[3].robust_list = 0x8000;
        (t.list[3].sig_mask, t.list[3].sig_pending, t.list[3].altstack) = (0x4000, 0x200, (0x7000, 0, 8192));
        t.switch_to(4);
        t.current_mut().clear_child_tid = 0x7777;
        t.active = true;
        t
    }

    /// The table with every instant as its distance from `base`, as text (an XSAVE image as
    /// a weighted sum of its words).
    fn relative(t: &Threads, base: Instant) -> String {
        let text = format!(
            "{:?}",
            t.list
                .iter()
                .map(|t| (
                    t.tid,
                    t.clear_child_tid,
                    t.robust_list,
                    t.rseq,
                    (t.sig_mask, t.sig_pending, t.altstack),
                    t.cpu.as_ref().map(|c| (
                        c.regs,
                        c.fs_base,
                        c.gs_base,
                        c.xsave.iter().enumerate().map(|(i, &w)| (i as u64 + 1) * u64::from(w)).sum::<u64>()
                    ))
                ))
                .collect::<Vec<_>>()
        );
        let at = |i: Option<Instant>| i.map(|i| i - base);
        let waits: Vec<_> = t
            .list
            .iter()
            .map(|t| {
                let state = match t.state {
                    RunState::Waiting(Wait::Futex { addr, bitset, until, seq }) => {
                        format!("futex {addr} {bitset} {:?} {seq}", at(until))
                    }
                    RunState::Waiting(Wait::Sleep(u)) => format!("sleep {:?}", u - base),
                    RunState::Waiting(Wait::Retry(u)) => format!("retry {:?}", at(u)),
                    s => format!("{s:?}"),
                };
                (state, at(t.retry_until), at(t.recheck_at))
            })
            .collect();
        format!("{text}\n{waits:?}\n{} {} {} {}", t.active, t.current, t.next_tid, t.seq)
    }

    #[test]
    fn every_thread_survives_a_snapshot_file_with_its_deadlines_rebased() {
        use crate::persist::{Dec, Enc, Epoch, Persist};
        let saved = Epoch::now();
        let loaded = saved.later(Duration::from_secs(3600));
        let t = snapshot_like(saved.instant);
        let mut e = Enc::at(saved);
        t.save(&mut e).unwrap();
        let mut d = Dec::at(&e.buf, loaded);
        let back = Threads::load(&mut d).unwrap();
        assert!(d.done());
        // A wait 5 ms from its end at the snapshot is 5 ms from its end after loading.
        assert_eq!(relative(&back, loaded.instant), relative(&t, saved.instant));
        assert_eq!(back.earliest_timeout(), Some(loaded.instant + Duration::from_millis(1)));
        // Every truncation is refused, never a panic.
        for cut in 0..e.buf.len() {
            assert!(Threads::load(&mut Dec::at(&e.buf[..cut], loaded)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_table_the_scheduler_could_not_run_is_refused() {
        use crate::persist::{Dec, Enc, Epoch, Persist};
        let epoch = Epoch::now();
        let encode = |t: &Threads| {
            let mut e = Enc::at(epoch);
            t.save(&mut e).unwrap();
            e.buf
        };
        let refused = |t: &Threads| Threads::load(&mut Dec::at(&encode(t), epoch)).is_err();
        let good = snapshot_like(epoch.instant);
        assert!(!refused(&good));
        let mut t = good.clone();
        t.current = 9;
        assert!(refused(&t), "current past the end");
        let mut t = good.clone();
        t.list[1].cpu = None;
        assert!(refused(&t), "a waiting thread without a state to resume");
        let mut t = good.clone();
        t.list[4].cpu = cpu(1);
        assert!(refused(&t), "the running thread with a saved state");
        let mut t = good.clone();
        t.list[2].state = RunState::Running;
        assert!(refused(&t), "two running threads");
        let mut t = good.clone();
        t.list[3].state = RunState::Exited;
        assert!(refused(&t), "an exited thread that is not the running one");
        let mut t = good.clone();
        t.list[3].tid = t.list[2].tid;
        assert!(refused(&t), "a tid twice");
        let mut t = good.clone();
        t.next_tid = 3;
        assert!(refused(&t), "a tid past the next one");
        let mut t = good.clone();
        t.list.truncate(0);
        assert!(refused(&t), "no thread");
        // Out-of-range tags (the thread state of the running thread is the first after
        // active, the list length and its tid: byte 24).
        let mut b = encode(&good);
        b[24] = 7;
        assert!(Threads::load(&mut Dec::at(&b, epoch)).is_err());
        // One thread, running, is a table too.
        let mut t = good.clone();
        t.list.truncate(1);
        t.current = 0;
        t.list[0].state = RunState::Running;
        t.list[0].cpu = None;
        assert!(!refused(&t));
    }
}
