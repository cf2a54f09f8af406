/*
 * isolate — the isolation probe, and the adversarial guest of the hardening tests.
 *
 *   POST /          (any path but the two below) digest, apply state changes, digest (below)
 *   POST /code      run the body as x86-64 machine code (called as a function; it may return,
 *                   fault, loop, make system calls, or attack the VM), then answer "returned"
 *   GET /deep       answer "deep" from a frame 4 KiB down with junk in the callee-saved registers
 *   GET /area?N     scan the first N bytes of the request area and answer how many times the
 *                   marker "XLEAKX42" occurs there (a batched request must see no other's)
 *   POST /syscalls  run a list of raw system calls: body = records of 7 little-endian u64
 *                   (number, six arguments); an argument 0xf00d0000_0000xxxx is replaced by
 *                   the address of scratch memory + xxxx.  Answers the return values.  With
 *                   the query "probe" it answers two u64 per call: the return value, and 1 if
 *                   the call changed the scratch memory (the program only reads scratch, so
 *                   every change there is a write the host or the guest kernel made for it).
 *
 * The isolation probe.  Each request first reports a digest of everything a previous
 * request could have left behind, then changes that state as the request says, and reports
 * the digest again:  body = "before=<hex> after=<hex>".  The digest covers the scratch memory
 * the /syscalls requests let the host write, and the whole extended register state (XSAVE
 * of every component XCR0 enables: x87, SSE, AVX, AVX-512), captured right at the return
 * from wait_for_request, before any library code can overwrite a register.  With the query
 * "parts" the body lists the digest of each part instead ("name=<hex>" lines, before the
 * changes; "parts-after": after them), so a test can tell which state differs; with "xstate",
 * the raw XSAVE image.  With the query "mem" the digests
 * cover memory and registers only and make no system calls (so a request whose operations
 * make none either is one the guest kernel can reset by itself in a batch).
 *
 * In ephemeral mode every response must equal what a freshly booted VM answers to the same
 * request, whatever ran before (tests/test_isolation.py drives this with hypothesis).
 *
 * Request body: a sequence of operations, each
 *     u8 kind, u16 offset (little-endian), u8 len, len bytes of data
 * kinds:
 *     1 global array          2 heap block (malloc'ed at start-up)   3 brk area (sbrk'ed at start-up)
 *     4 mmap area              5 stack area (below the handler's frame)
 *     6 thread-local array     7 xmm0..xmm15 (data loaded into the registers, left there)
 *     8 MXCSR (data[0..1])     9 x87 control word (data[0])
 *    10 dup(1) (fd left open)  11 malloc(len) left allocated   12 mmap(4 pages) left mapped
 *    13 sbrk(4096 * (1 + data[0] % 8))                       14 ymm0 upper half (if AVX)
 *    15 block signal data[0] % 30 + 1                        16 close(data[0] % 8 + 3)
 *    17 zeroed array (never written at start-up: all zero at the snapshot)
 *    18 x87 register stack: push data as up to 8 doubles (left on the stack)
 *    19 ymm1..ymm15 upper halves (if AVX)  20 zmm16..31 and opmask k1..k7 (if AVX-512)
 *    21 a thread left waiting forever (futex)   22 a thread started and joined (tids move on)
 *    23 a handler for signal data[0] % 31 + 1 (flags from data[1]: SA_RESTART, SA_ONSTACK,
 *       SA_NODEFER, SA_SIGINFO)                24 an alternate signal stack
 *    25 signal data[0] % 31 + 1 blocked and raised: left pending (not SIGKILL/SIGSTOP)
 * Offsets wrap inside each area.  Threads and signals show in the digest's "threads" part
 * (which of the next 32 tids exist, and the tid a new thread gets) and "signals" part (every
 * disposition, the pending set, the alternate stack).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include "tenantvm.h"

/* The stack probes read memory below the current frame on purpose. */
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"

#define AREA 8192

static uint8_t globals[AREA];
static uint8_t zeroed[AREA] __attribute__((aligned(4096)));
/* Request-supplied code runs from here: a writable and executable section (the only one). */
static uint8_t code_area[1 << 16] __attribute__((section(".rwx_code,\"awx\",@progbits#"), aligned(4096)));
static uint8_t scratch[1 << 16] __attribute__((aligned(4096)));
static __thread uint8_t tls[AREA];
static uint8_t *heap, *brk_area, *mmap_area;
static int have_avx, have_avx512, have_xsave;
/* The extended register state at the return from wait_for_request, and its size. */
static uint8_t entry_xstate[8192] __attribute__((aligned(64)));
static uint32_t xstate_size = 512;
/* rsp, rbx, r12..r15 at the return from wait_for_request (the callee-saved registers and the
 * stack pointer are the program's own state: a reset must bring them back too). */
static uint64_t entry_gprs[6];

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static __attribute__((noinline)) uint64_t digest_stack(uint64_t h)
{
	volatile uint8_t below[AREA];
	/* Read the area a previous request's stack writes went to: below this frame. */
	uint8_t copy[AREA];
	for (size_t i = 0; i < AREA; i++)
		copy[i] = below[i];
	return fnv(h, copy, AREA);
}

static __attribute__((noinline)) void write_stack(size_t off, const uint8_t *d, size_t n)
{
	volatile uint8_t below[AREA];
	for (size_t i = 0; i < n; i++)
		below[(off + i) % AREA] = d[i];
}

/* Word-wise FNV for the large scratch area (a request may digest it hundreds of times). */
static uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < n / 8; i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Saves the extended register state into `buf` (zeroed first, so bytes XSAVE leaves alone
 * are always zero).  Must not be preceded by library calls that use vector registers. */
static inline __attribute__((always_inline)) void save_xstate(uint8_t *buf)
{
	if (have_xsave)
		__asm__ volatile("xsave (%0)" ::"r"(buf), "a"(-1), "d"(-1) : "memory");
	else
		__asm__ volatile("fxsave (%0)" ::"r"(buf) : "memory");
}

/* The digest of an XSAVE image, without its header (XSTATE_BV says which components the
 * CPU considers in use, which it may track differently for equal contents). */
static uint64_t digest_xstate(uint64_t h, const uint8_t *x)
{
	h = fnv(h, x, 512);
	if (xstate_size > 576)
		h = fnv(h, x + 576, xstate_size - 576);
	return h;
}

/* One digest per part of the state, in this order. */
enum { P_XSTATE, P_GPRS, P_GLOBALS, P_ZEROED, P_TLS, P_HEAP, P_BRK, P_MMAP, P_STACK, P_SCRATCH, P_FDS, P_BREAK,
       P_MALLOC, P_MMAP_NEXT, P_SIGMASK, P_THREADS, P_SIGNALS, NPARTS };
static const char *const part_names[NPARTS] = { "xstate", "gprs", "globals", "zeroed", "tls", "heap", "brk", "mmap",
						 "stack", "scratch", "fds", "break", "malloc", "mmap_next",
						 "sigmask", "threads", "signals" };

/* Threads the probe starts: small stacks (the VM's memory is small), never cached by glibc
 * beyond what a fresh instance does too. */
static pthread_attr_t small_stack;
static int forever_word;
static volatile int threads_parked;

static void *wait_forever(void *arg)
{
	(void)arg;
	threads_parked++;
	for (;;)
		syscall(SYS_futex, &forever_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
	return NULL;
}

static void *report_tid(void *arg)
{
	*(long *)arg = syscall(SYS_gettid);
	return NULL;
}

static volatile long handled_signals;
static uint8_t alt_stack[16384];

static void count_signal(int sig)
{
	(void)sig;
	handled_signals++;
}

/* Which of the 32 tids after the pid exist, and the tid the next thread gets. */
static uint64_t digest_threads(uint64_t h)
{
	long pid = getpid();
	uint32_t alive = 0;
	for (long i = 0; i < 32; i++)
		if (syscall(SYS_tgkill, pid, pid + 1 + i, 0) == 0)
			alive |= 1u << i;
	h = fnv(h, &alive, sizeof alive);
	long tid = 0;
	pthread_t t;
	if (pthread_create(&t, &small_stack, report_tid, &tid) == 0)
		pthread_join(t, NULL);
	return fnv(h, &tid, sizeof tid);
}

/* Every disposition (as the kernel holds it), the pending set, the alternate stack. */
static uint64_t digest_signals(uint64_t h)
{
	for (int sig = 1; sig <= 64; sig++) {
		uint64_t act[4] = { 0 };
		syscall(SYS_rt_sigaction, sig, NULL, act, 8);
		h = fnv(h, act, sizeof act);
	}
	sigset_t pending;
	sigpending(&pending);
	h = fnv(h, &pending, sizeof pending);
	stack_t ss;
	sigaltstack(NULL, &ss);
	h = fnv(h, &ss, sizeof ss);
	long handled = handled_signals;
	return fnv(h, &handled, sizeof handled);
}

static uint64_t digest_parts(int memory_only, const uint8_t *xstate, uint64_t *part)
{
	const uint64_t seed = 0xcbf29ce484222325ULL;
	for (int i = 0; i < NPARTS; i++)
		part[i] = seed;
	part[P_XSTATE] = digest_xstate(seed, xstate);
	part[P_GPRS] = fnv(seed, entry_gprs, sizeof entry_gprs);
	part[P_GLOBALS] = fnv(seed, globals, AREA);
	part[P_ZEROED] = fnv(seed, zeroed, AREA);
	part[P_TLS] = fnv(seed, tls, AREA);
	part[P_HEAP] = fnv(seed, heap, AREA);
	part[P_BRK] = fnv(seed, brk_area, AREA);
	part[P_MMAP] = fnv(seed, mmap_area, AREA);
	part[P_STACK] = digest_stack(seed);
	part[P_SCRATCH] = fnv64(seed, scratch, sizeof scratch);
	uint64_t h = seed;
	for (int i = 0; i < P_FDS; i++)
		h = fnv(h, &part[i], sizeof part[i]);
	if (memory_only)
		return h;
	for (int fd = 0; fd < 16; fd++) {
		int open_ = fcntl(fd, F_GETFD) >= 0;
		part[P_FDS] = fnv(part[P_FDS], &open_, sizeof open_);
	}
	void *cur = sbrk(0);
	part[P_BREAK] = fnv(seed, &cur, sizeof cur);
	void *m = malloc(100);
	part[P_MALLOC] = fnv(seed, &m, sizeof m);
	free(m);
	void *mm = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	part[P_MMAP_NEXT] = fnv(seed, &mm, sizeof mm);
	munmap(mm, 4096);
	sigset_t set;
	sigprocmask(SIG_BLOCK, 0, &set);
	part[P_SIGMASK] = fnv(seed, &set, sizeof set);
	part[P_THREADS] = digest_threads(seed);
	part[P_SIGNALS] = digest_signals(seed);
	for (int i = P_FDS; i < NPARTS; i++)
		h = fnv(h, &part[i], sizeof part[i]);
	return h;
}

static uint64_t digest(int memory_only, const uint8_t *xstate)
{
	uint64_t part[NPARTS];
	return digest_parts(memory_only, xstate, part);
}

static void apply(const uint8_t *p, size_t len)
{
	size_t i = 0;
	while (i + 4 <= len) {
		uint8_t kind = p[i];
		size_t off = (size_t)p[i + 1] | ((size_t)p[i + 2] << 8);
		size_t n = p[i + 3];
		i += 4;
		if (n > len - i)
			n = len - i;
		const uint8_t *d = p + i;
		i += n;
		uint8_t *area = 0;
		switch (kind) {
		case 1: area = globals; break;
		case 2: area = heap; break;
		case 3: area = brk_area; break;
		case 4: area = mmap_area; break;
		case 6: area = tls; break;
		case 17: area = zeroed; break;
		case 5: write_stack(off, d, n); break;
		case 7: {
			uint8_t regs[256] = { 0 };
			for (size_t k = 0; k < n; k++)
				regs[(off + k) % 256] = d[k];
			__asm__ volatile("movdqu 0(%0), %%xmm0\n movdqu 16(%0), %%xmm1\n movdqu 32(%0), %%xmm2\n movdqu 48(%0), %%xmm3\n"
					 "movdqu 64(%0), %%xmm4\n movdqu 80(%0), %%xmm5\n movdqu 96(%0), %%xmm6\n movdqu 112(%0), %%xmm7\n"
					 "movdqu 128(%0), %%xmm8\n movdqu 144(%0), %%xmm9\n movdqu 160(%0), %%xmm10\n movdqu 176(%0), %%xmm11\n"
					 "movdqu 192(%0), %%xmm12\n movdqu 208(%0), %%xmm13\n movdqu 224(%0), %%xmm14\n movdqu 240(%0), %%xmm15\n"
					 ::"r"(regs) : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
					   "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
			break;
		}
		case 8: {
			/* keep exceptions masked so the program itself does not trap */
			/* rounding (bits 13-14) and flush-to-zero (15) from data[0], denormals-are-zero (6)
			 * from data[1] */
			uint32_t v = 0x1f80 | (((uint32_t)(n ? d[0] : 0) << 8) & 0xe000) | ((n > 1 ? d[1] : 0) & 0x40);
			__asm__ volatile("ldmxcsr %0" ::"m"(v));
			break;
		}
		case 9: {
			/* precision (bits 8-9) and rounding (10-11) control from data[0] */
			uint16_t cw = (uint16_t)(0x007f | (((n ? d[0] : 0) << 8) & 0x0f00));
			__asm__ volatile("fldcw %0" ::"m"(cw));
			break;
		}
		case 10: dup(1); break;
		case 11: {
			uint8_t *b = malloc(n + 1);
			if (b)
				memcpy(b, d, n);
			break;
		}
		case 12: {
			uint8_t *b = mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (b != MAP_FAILED)
				memcpy(b, d, n);
			break;
		}
		case 13: sbrk(4096 * (1 + (n ? d[0] % 8 : 0))); break;
		case 14:
			if (have_avx) {
				uint8_t hi[16] = { 0 };
				for (size_t k = 0; k < n && k < 16; k++)
					hi[k] = d[k];
				__asm__ volatile("vinsertf128 $1, (%0), %%ymm0, %%ymm0" ::"r"(hi) : "xmm0");
			}
			break;
		case 15: {
			sigset_t s;
			sigemptyset(&s);
			sigaddset(&s, (n ? d[0] % 30 : 0) + 1);
			sigprocmask(SIG_BLOCK, &s, 0);
			break;
		}
		case 16: close((n ? d[0] % 8 : 0) + 3); break;
		case 18: {
			double v[8] = { 0 };
			size_t count = n / 8 < 8 ? n / 8 : 8;
			memcpy(v, d, count * 8);
			for (size_t k = 0; k < (count ? count : 1); k++)
				__asm__ volatile("fldl %0" ::"m"(v[k]));
			break;
		}
		case 19:
			if (have_avx) {
				uint8_t hi[16] = { 0 };
				for (size_t k = 0; k < n && k < 16; k++)
					hi[k] = d[k];
				__asm__ volatile("vinsertf128 $1, (%0), %%ymm1, %%ymm1\n vinsertf128 $1, (%0), %%ymm5, %%ymm5\n"
						 "vinsertf128 $1, (%0), %%ymm9, %%ymm9\n vinsertf128 $1, (%0), %%ymm15, %%ymm15"
						 ::"r"(hi) : "xmm1", "xmm5", "xmm9", "xmm15");
			}
			break;
		case 20:
			if (have_avx512) {
				uint8_t z[64] = { 0 };
				for (size_t k = 0; k < n; k++)
					z[(off + k) % 64] ^= d[k];
				uint16_t mask = (uint16_t)(z[0] | z[1] << 8 | 1);
				__asm__ volatile("vmovdqu64 (%0), %%zmm16\n vmovdqu64 (%0), %%zmm23\n vmovdqu64 (%0), %%zmm31\n"
						 "kmovw %1, %%k1\n kmovw %1, %%k7"
						 ::"r"(z), "r"((uint32_t)mask) : "memory");
				/* zmm0-15's upper 256 bits: a state component of its own */
				__asm__ volatile("vmovdqu64 (%0), %%zmm3" ::"r"(z) : "xmm3");
			}
			break;
		case 21: {
			pthread_t t;
			int parked = threads_parked;
			if (pthread_create(&t, &small_stack, wait_forever, NULL) == 0)
				/* One vCPU: the thread runs until it waits, then this one goes on. */
				while (threads_parked == parked)
					sched_yield();
			break;
		}
		case 22: {
			long tid;
			pthread_t t;
			if (pthread_create(&t, &small_stack, report_tid, &tid) == 0)
				pthread_join(t, NULL);
			break;
		}
		case 23: {
			struct sigaction sa;
			memset(&sa, 0, sizeof sa);
			sa.sa_handler = count_signal;
			int f = n > 1 ? d[1] : 0;
			sa.sa_flags = (f & 1 ? SA_RESTART : 0) | (f & 2 ? SA_ONSTACK : 0) | (f & 4 ? SA_NODEFER : 0) |
				      (f & 8 ? SA_SIGINFO : 0);
			sigaction((n ? d[0] % 31 : 0) + 1, &sa, NULL);
			break;
		}
		case 24: {
			stack_t ss = { .ss_sp = alt_stack, .ss_size = sizeof alt_stack, .ss_flags = 0 };
			sigaltstack(&ss, NULL);
			break;
		}
		case 25: {
			int sig = (n ? d[0] % 31 : 0) + 1;
			if (sig == SIGKILL || sig == SIGSTOP)
				break;
			sigset_t s;
			sigemptyset(&s);
			sigaddset(&s, sig);
			sigprocmask(SIG_BLOCK, &s, 0);
			raise(sig);
			break;
		}
		default: break;
		}
		if (area)
			for (size_t k = 0; k < n; k++)
				area[(off + k) % AREA] = d[k];
	}
}

static int is_path(const struct tvm_request *r, const char *p)
{
	size_t n = strlen(p);
	return r->path_len == n && memcmp(r->path, p, n) == 0;
}

static void run_code(const uint8_t *code, size_t n)
{
	if (n > sizeof code_area)
		n = sizeof code_area;
	memcpy(code_area, code, n);
	memset(code_area + n, 0xc3, sizeof code_area - n); /* ret after the code */
	((void (*)(void))code_area)();
	respond_text(200, "text/plain", "returned");
}

static void run_syscalls(const uint8_t *body, size_t n, int probe)
{
	static uint64_t results[1024];
	size_t count = 0;
	uint64_t seen = probe ? fnv64(0, scratch, sizeof scratch) : 0;
	for (size_t i = 0; i + 56 <= n && count < 512; i += 56) {
		uint64_t w[7];
		memcpy(w, body + i, sizeof w);
		for (int k = 1; k < 7; k++)
			if ((w[k] >> 32) == 0xf00d0000)
				w[k] = (uint64_t)(scratch + (w[k] & 0xffff));
		long ret;
		register long r10 __asm__("r10") = (long)w[4];
		register long r8 __asm__("r8") = (long)w[5];
		register long r9 __asm__("r9") = (long)w[6];
		__asm__ volatile("syscall"
				 : "=a"(ret)
				 : "a"(w[0]), "D"(w[1]), "S"(w[2]), "d"(w[3]), "r"(r10), "r"(r8), "r"(r9)
				 : "rcx", "r11", "memory");
		results[count++] = (uint64_t)ret;
		if (probe) {
			uint64_t now = fnv64(0, scratch, sizeof scratch);
			results[count++] = now != seen;
			seen = now;
		}
	}
	respond(200, "application/octet-stream", results, count * sizeof results[0]);
}

/* wait_for_request, and the register state at its return before anything can touch it. */
static const struct tvm_request *wait_and_capture(void)
{
	register long nr __asm__("rax") = TVM_SYS_WAIT_FOR_REQUEST;
	register long a4 __asm__("r10") = 0;
	register long a5 __asm__("r8") = 0;
	if (have_xsave)
		__asm__ volatile("syscall\n"
				 "mov %%rsp, entry_gprs(%%rip)\n mov %%rbx, entry_gprs+8(%%rip)\n mov %%r12, entry_gprs+16(%%rip)\n"
				 "mov %%r13, entry_gprs+24(%%rip)\n mov %%r14, entry_gprs+32(%%rip)\n mov %%r15, entry_gprs+40(%%rip)\n"
				 "mov %%rax, %%r9\n mov $-1, %%eax\n mov $-1, %%edx\n xsave (%%rbx)\n mov %%r9, %%rax"
				 : "+r"(nr)
				 : "D"(0), "S"(0), "b"(entry_xstate), "r"(a4), "r"(a5)
				 : "rcx", "r11", "r9", "rdx", "memory");
	else
		__asm__ volatile("syscall\n"
				 "mov %%rsp, entry_gprs(%%rip)\n mov %%rbx, entry_gprs+8(%%rip)\n mov %%r12, entry_gprs+16(%%rip)\n"
				 "mov %%r13, entry_gprs+24(%%rip)\n mov %%r14, entry_gprs+32(%%rip)\n mov %%r15, entry_gprs+40(%%rip)\n"
				 "fxsave (%%rbx)"
				 : "+r"(nr)
				 : "D"(0), "S"(0), "d"(0), "b"(entry_xstate), "r"(a4), "r"(a5)
				 : "rcx", "r11", "memory");
	return (const struct tvm_request *)nr;
}

/* Counts the marker in the first n bytes of the (read-only) request area; no system call, so
 * a batched request stays in the guest kernel's fast path. */
static void respond_area(const struct tvm_request *r)
{
	uint64_t n = 0;
	for (size_t i = 0; i < r->query_len && r->query[i] >= '0' && r->query[i] <= '9'; i++)
		n = n * 10 + (uint64_t)(r->query[i] - '0');
	static const char marker[8] = {'X', 'L', 'E', 'A', 'K', 'X', '4', '2'};
	const volatile uint8_t *area = (const volatile uint8_t *)TVM_REQUEST_VA;
	unsigned long count = 0;
	for (uint64_t i = 0; i + sizeof marker <= n; i++) {
		size_t k = 0;
		while (k < sizeof marker && area[i + k] == (uint8_t)marker[k])
			k++;
		count += k == sizeof marker;
	}
	char body[32];
	int len = snprintf(body, sizeof body, "%lu", count);
	respond(200, "text/plain", body, (size_t)len);
}

/* Responds from a frame 4 KiB below main's, with junk in the callee-saved registers: in
 * ephemeral mode the next request must still start with the snapshot's rsp and registers. */
static __attribute__((noinline)) void respond_deep(void)
{
	volatile uint8_t frame[4096];
	frame[0] = 1;
	static const char body[] = "deep";
	register long r10 __asm__("r10") = (long)body;
	register long r8 __asm__("r8") = 4;
	__asm__ volatile("mov $0x1111111111111111, %%rbx\n mov $0x1212121212121212, %%r12\n"
			 "mov $0x1313131313131313, %%r13\n mov $0x1414141414141414, %%r14\n"
			 "mov $0x1515151515151515, %%r15\n syscall"
			 :
			 : "a"(TVM_SYS_RESPOND), "D"(200), "S"(0), "d"(0), "r"(r10), "r"(r8), "m"(frame[0])
			 : "rbx", "r12", "r13", "r14", "r15", "rcx", "r11", "memory");
}

static int is_query(const struct tvm_request *r, const char *q)
{
	size_t n = strlen(q);
	return r->query_len == n && memcmp(r->query, q, n) == 0;
}

int main(void)
{
	pthread_attr_init(&small_stack);
	pthread_attr_setstacksize(&small_stack, 64 << 10);
	unsigned a, b, c, dd;
	if (__get_cpuid(1, &a, &b, &c, &dd)) {
		have_xsave = (c & (1u << 27)) != 0; /* OSXSAVE */
		have_avx = (c & (1u << 28)) && have_xsave;
	}
	if (have_xsave) {
		uint32_t lo, hi;
		__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
		if (__get_cpuid_count(0xd, 0, &a, &b, &c, &dd) && b <= sizeof entry_xstate)
			xstate_size = b;
		else
			have_xsave = 0;
		if (__get_cpuid_count(7, 0, &a, &b, &c, &dd))
			have_avx512 = (b & (1u << 16)) && (lo & 0xe0) == 0xe0;
	}
	heap = malloc(AREA);
	memset(heap, 0x11, AREA);
	brk_area = sbrk(AREA);
	memset(brk_area, 0x22, AREA);
	mmap_area = mmap(0, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(mmap_area, 0x33, AREA);
	memset(globals, 0x44, AREA);
	memset(tls, 0x55, AREA);
	for (;;) {
		memset(entry_xstate, 0, sizeof entry_xstate);
		/* Used in place, never copied: a copy would pass the request's random bytes through
		 * vector registers, and the digests must depend on nothing random. */
		const struct tvm_request *req = wait_and_capture();
		if (is_path(req, "/deep")) {
			respond_deep();
			continue;
		}
		if (is_path(req, "/area")) {
			respond_area(req);
			continue;
		}
		if (is_path(req, "/code")) {
			run_code((const uint8_t *)req->body, req->body_len);
			continue;
		}
		if (is_path(req, "/syscalls")) {
			run_syscalls((const uint8_t *)req->body, req->body_len, is_query(req, "probe"));
			continue;
		}
		if (is_query(req, "xstate")) {
			respond(200, "application/octet-stream", entry_xstate, xstate_size);
			continue;
		}
		if (is_query(req, "parts") || is_query(req, "parts-after")) {
			static uint8_t after_xstate[8192] __attribute__((aligned(64)));
			const uint8_t *x = entry_xstate;
			if (is_query(req, "parts-after")) {
				memset(after_xstate, 0, xstate_size);
				apply((const uint8_t *)req->body, req->body_len);
				save_xstate(after_xstate);
				x = after_xstate;
			}
			uint64_t part[NPARTS];
			digest_parts(0, x, part);
			char out[64 * NPARTS];
			int len = 0;
			for (int i = 0; i < NPARTS; i++)
				len += snprintf(out + len, sizeof out - len, "%s=%016llx\n", part_names[i],
						(unsigned long long)part[i]);
			respond(200, "text/plain", out, (size_t)len);
			continue;
		}
		int memory_only = is_query(req, "mem");
		uint64_t before = digest(memory_only, entry_xstate);
		static uint8_t now_xstate[8192] __attribute__((aligned(64)));
		memset(now_xstate, 0, xstate_size);
		apply((const uint8_t *)req->body, req->body_len);
		save_xstate(now_xstate);
		uint64_t after = digest(memory_only, now_xstate);
		char out[64];
		int n = snprintf(out, sizeof out, "before=%016llx after=%016llx", (unsigned long long)before,
				 (unsigned long long)after);
		respond(200, "text/plain", out, (size_t)n);
	}
}
