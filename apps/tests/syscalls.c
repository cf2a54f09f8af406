/* syscalls.c — probes the Linux syscalls a VMM has to emulate for ordinary
 * static programs, printing one "name=result" line per check and "done" at
 * the end. A result is the return value, "-ENAME" for a failure with errno
 * ENAME, or a 0/1 verdict for checks whose raw value varies between runs
 * (e.g. clock_realtime_plausible=1). Raw syscall() is used wherever libc
 * might hide or rewrite the kernel's answer.
 *
 * Some results depend on what stdin/stdout are (a pipe, a tty, /dev/null);
 * run it as `syscalls </dev/null | cat` for comparable results. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define JAN_1_2024 1704067200L

static const char *errname(int e)
{
	static char buf[32];
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case ENXIO: return "ENXIO";
	case E2BIG: return "E2BIG";
	case ENOEXEC: return "ENOEXEC";
	case EBADF: return "EBADF";
	case ECHILD: return "ECHILD";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case EINVAL: return "EINVAL";
	case ENFILE: return "ENFILE";
	case EMFILE: return "EMFILE";
	case ENOTTY: return "ENOTTY";
	case EFBIG: return "EFBIG";
	case ENOSPC: return "ENOSPC";
	case ESPIPE: return "ESPIPE";
	case EROFS: return "EROFS";
	case EPIPE: return "EPIPE";
	case ERANGE: return "ERANGE";
	case ENOSYS: return "ENOSYS";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ETIMEDOUT: return "ETIMEDOUT";
	}
	snprintf(buf, sizeof buf, "E%d", e);
	return buf;
}

/* Print "name=ret", or "name=-ENAME" when ret is -1 (errno taken right away). */
static long report(const char *name, long ret)
{
	if (ret == -1)
		printf("%s=-%s\n", name, errname(errno));
	else
		printf("%s=%ld\n", name, ret);
	return ret;
}

/* Same, but evaluates the expression with errno cleared first. */
#define CHECK(name, expr) (errno = 0, report((name), (long)(expr)))

static void flag(const char *name, int ok)
{
	printf("%s=%d\n", name, ok ? 1 : 0);
}

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static void check_time(void)
{
	struct timespec a, b, res;
	struct timeval tv;

	if (CHECK("clock_gettime_realtime", clock_gettime(CLOCK_REALTIME, &a)) == 0)
		flag("clock_realtime_plausible", a.tv_sec >= JAN_1_2024);
	/* The same through the raw syscall, in case libc used a vDSO. */
	if (CHECK("clock_gettime_realtime_raw", syscall(SYS_clock_gettime, CLOCK_REALTIME, &a)) == 0)
		flag("clock_realtime_raw_plausible", a.tv_sec >= JAN_1_2024);

	if (CHECK("clock_gettime_monotonic", clock_gettime(CLOCK_MONOTONIC, &a)) == 0 &&
	    clock_gettime(CLOCK_MONOTONIC, &b) == 0)
		flag("clock_monotonic_nondecreasing", ts_ns(&b) >= ts_ns(&a));
	if (CHECK("clock_gettime_monotonic_raw", syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &a)) == 0 &&
	    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &b) == 0)
		flag("clock_monotonic_raw_nondecreasing", ts_ns(&b) >= ts_ns(&a));

	if (CHECK("gettimeofday", gettimeofday(&tv, NULL)) == 0)
		flag("gettimeofday_plausible", tv.tv_sec >= JAN_1_2024 && tv.tv_usec >= 0 && tv.tv_usec < 1000000);

	time_t t = time(NULL);
	clock_gettime(CLOCK_REALTIME, &a);
	flag("time_plausible", t >= JAN_1_2024 && llabs((long long)(a.tv_sec - t)) <= 2);

	if (CHECK("clock_getres_monotonic", clock_getres(CLOCK_MONOTONIC, &res)) == 0)
		flag("clock_getres_monotonic_sane", ts_ns(&res) > 0 && ts_ns(&res) <= 10000000);

	struct timespec req = {0, 1000000}; /* 1 ms */
	clock_gettime(CLOCK_MONOTONIC, &a);
	CHECK("nanosleep_1ms", nanosleep(&req, NULL));
	clock_gettime(CLOCK_MONOTONIC, &b);
	flag("nanosleep_elapsed_ge_1ms", ts_ns(&b) - ts_ns(&a) >= 1000000);
}

static void check_identity(void)
{
	unsigned char rnd[32];
	struct utsname u;
	char path[4096];

	memset(rnd, 0, sizeof rnd);
	if (CHECK("getrandom_32", syscall(SYS_getrandom, rnd, sizeof rnd, 0)) == 32) {
		int nonzero = 0;
		for (size_t i = 0; i < sizeof rnd; i++)
			nonzero |= rnd[i];
		flag("getrandom_nonzero", nonzero);
	}

	if (CHECK("uname", uname(&u)) == 0) {
		printf("uname_sysname=%s\n", u.sysname);
		printf("uname_machine=%s\n", u.machine);
	}

	CHECK("getpid", getpid());
	CHECK("getppid", getppid());
	CHECK("gettid", syscall(SYS_gettid));
	CHECK("getuid", getuid());
	CHECK("geteuid", geteuid());
	CHECK("getgid", getgid());
	CHECK("getegid", getegid());

	long n = CHECK("readlink_proc_self_exe", readlink("/proc/self/exe", path, sizeof path - 1));
	if (n >= 0) {
		path[n] = 0;
		printf("readlink_proc_self_exe_path=%s\n", path);
	}
}

static void check_fds(void)
{
	struct stat st;
	struct termios tio;
	struct winsize ws;

	if (CHECK("fstat_stdout", fstat(1, &st)) == 0) {
		flag("fstat_stdout_ischr", S_ISCHR(st.st_mode));
		flag("fstat_stdout_isfifo", S_ISFIFO(st.st_mode));
		flag("fstat_stdout_isreg", S_ISREG(st.st_mode));
	}
	CHECK("ioctl_stdout_tcgets", syscall(SYS_ioctl, 1, TCGETS, &tio));
	CHECK("ioctl_stdout_tiocgwinsz", syscall(SYS_ioctl, 1, TIOCGWINSZ, &ws));
	CHECK("lseek_stdin", syscall(SYS_lseek, 0, 0L, SEEK_CUR));
	CHECK("fcntl_stdout_getfl", syscall(SYS_fcntl, 1, F_GETFL));
	CHECK("fcntl_stdout_getfd", syscall(SYS_fcntl, 1, F_GETFD));

	struct pollfd pfd = {.fd = 1, .events = POLLOUT};
	if (CHECK("poll_stdout_pollout", poll(&pfd, 1, 1000)) >= 0)
		flag("poll_stdout_pollout_ready", pfd.revents & POLLOUT);

	CHECK("write_fd42", syscall(SYS_write, 42, "x", 1));

	/* Invalid user pointers. Linux reports EFAULT only when it actually
	 * copies, so the read from stdin is attempted only if it would not block
	 * (and an empty stdin at EOF legitimately returns 0). The pipe variant
	 * always has data, so it must fault. */
	struct pollfd in = {.fd = 0, .events = POLLIN};
	if (poll(&in, 1, 0) == 0)
		printf("read_stdin_badptr=skipped\n");
	else
		CHECK("read_stdin_badptr", syscall(SYS_read, 0, (void *)1, 10));
	int p[2];
	if (CHECK("pipe2", syscall(SYS_pipe2, p, 0)) == 0) {
		syscall(SYS_write, p[1], "0123456789", 10);
		CHECK("read_pipe_badptr", syscall(SYS_read, p[0], (void *)1, 10));
		close(p[0]);
		close(p[1]);
	}
	CHECK("write_stdout_badptr", syscall(SYS_write, 1, (void *)1, 10));
	CHECK("uname_badptr", syscall(SYS_uname, (void *)1));
	fflush(stdout);
}

static void check_process(void)
{
	struct rlimit rl;
	cpu_set_t set;

	if (CHECK("prlimit64_stack", syscall(SYS_prlimit64, 0, RLIMIT_STACK, NULL, &rl)) == 0) {
		if (rl.rlim_cur == RLIM_INFINITY)
			printf("prlimit64_stack_cur=inf\n");
		else
			printf("prlimit64_stack_cur=%llu\n", (unsigned long long)rl.rlim_cur);
	}
	CPU_ZERO(&set);
	if (CHECK("sched_getaffinity", sched_getaffinity(0, sizeof set, &set)) == 0)
		printf("sched_getaffinity_count=%d\n", CPU_COUNT(&set));
	CHECK("sched_yield", sched_yield());
	CHECK("syscall_999", syscall(999));
}

static void check_memory(void)
{
	const size_t mib = 1024 * 1024;
	long page = sysconf(_SC_PAGESIZE);

	unsigned char *m = mmap(NULL, mib, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		report("mmap_anon_1m", -1);
	} else {
		printf("mmap_anon_1m=ok\n");
		int zero = 1, ok = 1;
		for (size_t i = 0; i < mib; i += 512)
			zero &= m[i] == 0;
		flag("mmap_anon_zeroed", zero);
		for (size_t i = 0; i < mib; i++)
			m[i] = (unsigned char)(i ^ (i >> 8));
		CHECK("mprotect_read", mprotect(m, mib, PROT_READ));
		for (size_t i = 0; i < mib; i++)
			ok &= m[i] == (unsigned char)(i ^ (i >> 8));
		flag("mprotect_read_contents", ok);
		CHECK("munmap_1m", munmap(m, mib));
	}

	/* mremap: grow a 64 KiB mapping to 4 MiB; contents must come along. */
	const size_t small = 64 * 1024, big = 4 * mib;
	unsigned char *r = mmap(NULL, small, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r != MAP_FAILED) {
		for (size_t i = 0; i < small; i++)
			r[i] = (unsigned char)(i * 13);
		unsigned char *g = mremap(r, small, big, MREMAP_MAYMOVE);
		if (g == MAP_FAILED) {
			report("mremap_grow", -1);
			munmap(r, small);
		} else {
			printf("mremap_grow=ok\n");
			int ok = 1;
			for (size_t i = 0; i < small; i++)
				ok &= g[i] == (unsigned char)(i * 13);
			g[big - 1] = 0x5a; /* the new tail must be usable */
			ok &= g[big - 1] == 0x5a && g[small] == 0;
			flag("mremap_grow_preserved", ok);
			CHECK("munmap_mremapped", munmap(g, big));
		}
	}

	/* madvise(MADV_DONTNEED) on private anonymous memory: Linux drops the page
	 * and later reads see zeros. */
	volatile unsigned char *d = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d != MAP_FAILED) {
		memset((void *)d, 0xaa, (size_t)page);
		if (CHECK("madvise_dontneed", madvise((void *)d, (size_t)page, MADV_DONTNEED)) == 0) {
			int zero = 1;
			for (long i = 0; i < page; i++)
				zero &= d[i] == 0;
			flag("madvise_dontneed_reads_zero", zero);
		}
		munmap((void *)d, (size_t)page);
	}

	/* brk: query, grow by 64 KiB and use it, then shrink back so libc's own
	 * idea of the break stays valid. */
	long cur = syscall(SYS_brk, 0);
	flag("brk_query_nonzero", cur > 0);
	if (cur > 0) {
		long grown = syscall(SYS_brk, cur + 65536);
		int ok = grown == cur + 65536;
		if (ok) {
			memset((void *)cur, 0x11, 65536);
			ok = ((volatile unsigned char *)cur)[65535] == 0x11;
		}
		flag("brk_grow", ok);
		flag("brk_shrink", syscall(SYS_brk, cur) == cur);
	}
}

static volatile sig_atomic_t got_sigint;
static void on_sigint(int sig)
{
	(void)sig;
	got_sigint = 1;
}

static void check_signals(void)
{
	struct sigaction sa, old;
	sigset_t set, cur;
	static char altstack[64 * 1024];

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigint;
	sigemptyset(&sa.sa_mask);
	if (CHECK("sigaction_sigint", sigaction(SIGINT, &sa, NULL)) == 0 &&
	    sigaction(SIGINT, NULL, &old) == 0)
		flag("sigaction_sigint_readback", old.sa_handler == on_sigint);

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (CHECK("sigprocmask_block_usr1", sigprocmask(SIG_BLOCK, &set, NULL)) == 0 &&
	    sigprocmask(SIG_SETMASK, NULL, &cur) == 0)
		flag("sigprocmask_usr1_blocked", sigismember(&cur, SIGUSR1) == 1);
	sigprocmask(SIG_UNBLOCK, &set, NULL);

	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0}, oss;
	if (CHECK("sigaltstack", sigaltstack(&ss, NULL)) == 0 && sigaltstack(NULL, &oss) == 0)
		flag("sigaltstack_readback", oss.ss_sp == altstack && oss.ss_size == sizeof altstack);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	check_time();
	check_identity();
	check_fds();
	check_process();
	check_memory();
	check_signals();
	printf("done\n");
	return 0;
}
