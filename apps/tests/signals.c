/*
 * signals — CPU faults delivered to the program's handlers (crates/vmm/tests/signals.rs).
 *
 *   signals all        SIGSEGV (siginfo address and code; the handler skips the faulting
 *                      instruction through uc_mcontext and every register survives, rcx and
 *                      r11 included), SIGILL (ud2, skipped; the handler uses SSE and the
 *                      program's xmm0 survives), SIGTRAP (int3), SIGFPE left with siglongjmp,
 *                      SA_RESETHAND, and the mask restored by rt_sigreturn.
 *   signals unhandled  a null write with no handler: the run ends with a typed fault.
 *   signals parked N S one thread waits in futex (1 ms timeouts, over and over) while main
 *                      faults N times, and until the waiter has run S times (time slices
 *                      moved the vCPU between them), each fault recovered by a SIGSEGV handler
 *                      with siglongjmp.  No signal may reach the waiting thread.
 *   signals async      signals the program sends: raise/kill/tgkill run the handler before the
 *                      call returns (si_code SI_USER or SI_TKILL, si_pid); a blocked signal is
 *                      pending (rt_sigpending) and delivered when unblocked; SIG_IGN and SIGURG's
 *                      default do nothing; per-thread masks (a new thread inherits its
 *                      creator's), tgkill to another thread runs the handler on that thread,
 *                      and wakes it from a futex wait (EINTR, or restarted with SA_RESTART);
 *                      kill to the process while the caller blocks it goes to a thread that does
 *                      not; per-thread sigaltstack; errnos (EINVAL, ESRCH).
 *   signals term N     sends itself signal N (default action): the run ends killed by it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

static volatile long seen_addr, seen_code, seen_sig, in_handler_mask;
static sigjmp_buf jump;

static void skip(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	seen_sig = sig;
	seen_addr = (long)si->si_addr;
	seen_code = si->si_code;
	sigset_t now;
	sigprocmask(SIG_BLOCK, NULL, &now);
	in_handler_mask = sigismember(&now, sig);
	volatile double x = 1.5; /* SSE in the handler: must not leak into the program */
	x = x * 3.0;
	(void)x;
	uc->uc_mcontext.gregs[REG_RIP] += 2; /* both faulting instructions are 2 bytes */
}

static void trap(int sig, siginfo_t *si, void *ctx)
{
	(void)si;
	(void)ctx;
	seen_sig = sig;
}

static void fpe(int sig)
{
	siglongjmp(jump, sig);
}

static int install(int sig, void (*h)(int, siginfo_t *, void *), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = h;
	sa.sa_flags = SA_SIGINFO | flags;
	return sigaction(sig, &sa, NULL);
}

static int all(void)
{
	install(SIGSEGV, skip, 0);
	long bad = 0;
	__asm__ volatile(
		"mov $0x1212, %%r12\n"
		"mov $0x1313, %%r13\n"
		"mov $0xc0c0, %%rcx\n"
		"mov $0x1111, %%r11\n"
		"mov $0x10, %%rax\n"
		"movl (%%rax), %%eax\n" /* 8b 00: SIGSEGV at 0x10 */
		"cmp $0x1212, %%r12\n jne 1f\n"
		"cmp $0x1313, %%r13\n jne 1f\n"
		"cmp $0xc0c0, %%rcx\n jne 1f\n"
		"cmp $0x1111, %%r11\n jne 1f\n"
		"cmp $0x10, %%rax\n jne 1f\n"
		"jmp 2f\n"
		"1: mov $1, %[bad]\n"
		"2:\n"
		: [bad] "+r"(bad)
		:
		: "rax", "rcx", "r11", "r12", "r13", "memory", "cc");
	printf("segv: sig=%ld addr=%#lx code=%ld masked-in-handler=%ld registers=%s\n", seen_sig, seen_addr,
	       seen_code, in_handler_mask, bad ? "CORRUPTED" : "intact");
	sigset_t after;
	sigprocmask(SIG_BLOCK, NULL, &after);
	printf("mask after return: segv blocked=%d\n", sigismember(&after, SIGSEGV));

	install(SIGILL, skip, SA_RESETHAND);
	double keep = 2.25, out = 0;
	__asm__ volatile("movsd %[k], %%xmm0\n ud2\n movsd %%xmm0, %[o]\n" : [o] "=m"(out) : [k] "m"(keep) : "xmm0");
	struct sigaction now;
	sigaction(SIGILL, NULL, &now);
	printf("ill: sig=%ld addr-is-rip=%d xmm0=%.2f reset-to-default=%d\n", seen_sig, seen_addr != 0, out,
	       now.sa_handler == SIG_DFL);

	install(SIGTRAP, trap, 0);
	seen_sig = 0;
	__asm__ volatile("int3");
	printf("trap: sig=%ld\n", seen_sig);

	signal(SIGFPE, fpe);
	int got = sigsetjmp(jump, 1);
	if (got == 0) {
		__asm__ volatile("xor %%ecx, %%ecx\n mov $7, %%eax\n cltd\n idivl %%ecx\n" ::: "rax", "rcx", "rdx", "cc");
		printf("fpe: not raised\n");
	} else {
		printf("fpe: longjmp with %d\n", got);
	}
	return 0;
}

/* musl has no <linux/futex.h>. */
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129

static volatile long faulter_tid, wrong_thread, waits, stop_waiting;

static void recover(int sig, siginfo_t *si, void *ctx)
{
	(void)si;
	(void)ctx;
	if (syscall(SYS_gettid) != faulter_tid) {
		/* A fault this thread never made: count it and resume where it was. */
		__atomic_add_fetch(&wrong_thread, 1, __ATOMIC_RELAXED);
		return;
	}
	siglongjmp(jump, sig);
}

static void *waiter(void *arg)
{
	(void)arg;
	int word = 0;
	while (!stop_waiting) {
		struct timespec ms = { 0, 1000000 };
		syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &ms, NULL, 0);
		waits++;
	}
	return NULL;
}

static int parked(long n, long slices)
{
	faulter_tid = syscall(SYS_gettid);
	install(SIGSEGV, recover, 0);
	pthread_t t;
	if (pthread_create(&t, NULL, waiter, NULL) != 0)
		return 1;
	volatile long faults = 0;
	/* Enough faults, and enough slices for the waiter to have run in between; a bound in
	 * case slices never come. */
	while ((faults < n || waits < slices) && faults < 1000 * n) {
		if (sigsetjmp(jump, 1) == 0) {
			volatile int *volatile null = (volatile int *)0;
			*null = 1;
		}
		faults++;
	}
	stop_waiting = 1;
	pthread_join(t, NULL);
	printf("parked: faults>=%ld:%d waiter-ran>=%ld:%d signals-on-the-waiter=%ld\n", n, faults >= n, slices,
	       waits >= slices, wrong_thread);
	return 0;
}

static volatile long got_sig, got_code, got_pid, got_tid, got_on_alt, handled;
static char altstack_mem[65536];

static void note(int sig, siginfo_t *si, void *ctx)
{
	(void)ctx;
	got_sig = sig;
	got_code = si->si_code;
	got_pid = si->si_pid;
	got_tid = syscall(SYS_gettid);
	stack_t ss;
	sigaltstack(NULL, &ss);
	got_on_alt = (ss.ss_flags & SS_ONSTACK) != 0;
	handled++;
}

static long tgkill_(long tid, int sig)
{
	long r = syscall(SYS_tgkill, getpid(), tid, sig);
	return r < 0 ? -errno : r;
}

static volatile int futex_word;
static volatile long waiter_tid, waiter_result, waiter_handled_before;

static void *futex_waiter(void *arg)
{
	(void)arg;
	waiter_tid = syscall(SYS_gettid);
	/* The creator blocks SIGUSR2: so does this thread, from birth. */
	sigset_t now;
	sigprocmask(SIG_BLOCK, NULL, &now);
	long inherited = sigismember(&now, SIGUSR2);
	/* Its own alternate stack; SA_ONSTACK handlers run there, only on this thread. */
	stack_t ss = { .ss_sp = altstack_mem, .ss_size = sizeof altstack_mem, .ss_flags = 0 };
	sigaltstack(&ss, NULL);
	waiter_handled_before = handled;
	long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
	waiter_result = r < 0 ? -errno : r;
	return (void *)inherited;
}

static int async_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = note;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR1, &sa, NULL);
	long me = syscall(SYS_gettid);

	raise(SIGUSR1);
	printf("raise: handled=%ld sig=%ld code=%s pid-ok=%d tid-ok=%d\n", handled, got_sig,
	       got_code == SI_TKILL ? "SI_TKILL" : got_code == SI_USER ? "SI_USER" : "?", got_pid == getpid(),
	       got_tid == me);
	kill(getpid(), SIGUSR1);
	printf("kill: handled=%ld code=%s\n", handled, got_code == SI_USER ? "SI_USER" : "?");

	sigset_t set, pending;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	kill(getpid(), SIGUSR1);
	sigpending(&pending);
	long before = handled;
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	printf("blocked: pending=%d handled-while-blocked=%ld handled-on-unblock=%ld\n", sigismember(&pending, SIGUSR1),
	       before - 2, handled - before);

	signal(SIGUSR1, SIG_IGN);
	kill(getpid(), SIGUSR1);
	kill(getpid(), SIGURG); /* ignored by default */
	kill(getpid(), SIGCHLD);
	printf("ignored: handled=%ld\n", handled);

	printf("errors: kill-65=%d kill-other=%d tgkill-bad-tid=%ld tgkill-0=%ld tgkill-65=%ld\n",
	       kill(getpid(), 65) < 0 ? errno : 0, kill(12345, SIGUSR1) < 0 ? errno : 0, -tgkill_(9999, SIGUSR1),
	       -tgkill_(0, SIGUSR1), -tgkill_(me, 65));

	/* Threads: SIGUSR2's handler runs on the alternate stack when there is one. */
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = note;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGUSR2, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	waiter_result = 1;
	pthread_t t;
	pthread_create(&t, NULL, futex_waiter, NULL);
	while (!waiter_tid)
		sched_yield();
	for (int i = 0; i < 3; i++)
		sched_yield();
	/* The waiter blocks SIGUSR2 (inherited): pending, its wait goes on. */
	tgkill_(waiter_tid, SIGUSR2);
	for (int i = 0; i < 3; i++)
		sched_yield();
	long still_waiting = waiter_result == 1 && handled == waiter_handled_before;
	/* SIGUSR1 (a handler again, no SA_RESTART): its futex wait ends with EINTR, and the
	 * handler runs on it, on its alternate stack. */
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = note;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGUSR1, &sa, NULL);
	tgkill_(waiter_tid, SIGUSR1);
	void *inherited;
	pthread_join(t, &inherited);
	printf("thread: inherited-mask=%ld pending-kept-waiting=%ld futex=%s handler-on-it=%d code=%s alt=%ld\n",
	       (long)inherited, still_waiting, waiter_result == -EINTR ? "EINTR" : "?", got_tid == waiter_tid,
	       got_code == SI_TKILL ? "SI_TKILL" : "?", got_on_alt);

	/* kill to the process while this thread blocks it: a waiting thread that does not
	 * takes it (SA_RESTART: its futex wait goes on after the handler). */
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	waiter_tid = 0;
	waiter_result = 1;
	sigset_t none;
	sigemptyset(&none);
	/* The new thread must not block SIGUSR1 or SIGUSR2: create it with an empty mask. */
	sigset_t saved;
	sigprocmask(SIG_SETMASK, &none, &saved);
	pthread_create(&t, NULL, futex_waiter, NULL);
	sigprocmask(SIG_SETMASK, &saved, NULL);
	while (!waiter_tid)
		sched_yield();
	for (int i = 0; i < 3; i++)
		sched_yield();
	long h = handled;
	kill(getpid(), SIGUSR1);
	for (int i = 0; i < 3; i++)
		sched_yield();
	long restarted = waiter_result == 1 && handled == h + 1 && got_tid == waiter_tid;
	futex_word = 1;
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	pthread_join(t, NULL);
	printf("process: taken-by-the-waiter-and-restarted=%ld futex-after-wake=%ld\n", restarted, waiter_result);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc > 1 && !strcmp(argv[1], "unhandled")) {
		volatile int *volatile null = (volatile int *)0x20;
		*null = 1;
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "async"))
		return async_signals();
	if (argc > 2 && !strcmp(argv[1], "term")) {
		kill(getpid(), atoi(argv[2]));
		printf("still alive\n");
		return 0;
	}
	if (argc > 3 && !strcmp(argv[1], "parked"))
		return parked(atol(argv[2]), atol(argv[3]));
	return all();
}
