/*
 * isolate — the isolation probe, and the adversarial guest of the hardening tests.
 *
 *   POST /          (any path but the two below) digest, apply state changes, digest (below)
 *   POST /code      run the body as x86-64 machine code (called as a function; it may return,
 *                   fault, loop, make system calls, or attack the VM), then answer "returned"
 *   POST /syscalls  run a list of raw system calls: body = records of 7 little-endian u64
 *                   (number, six arguments); an argument 0xf00d0000_0000xxxx is replaced by
 *                   the address of scratch memory + xxxx.  Answers the return values.
 *
 * The isolation probe.  Each request first reports a digest of everything a previous
 * request could have left behind, then changes that state as the request says, and reports
 * the digest again:  body = "before=<hex> after=<hex>".  With the query "mem" the digests
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
 *     8 MXCSR (data[0..1])     9 x87 control word (data[0..1])
 *    10 dup(1) (fd left open)  11 malloc(len) left allocated   12 mmap(4 pages) left mapped
 *    13 sbrk(4096 * (1 + data[0] % 8))                       14 ymm0 upper half (if AVX)
 *    15 block signal data[0] % 30 + 1                        16 close(data[0] % 8 + 3)
 *    17 zeroed array (never written at start-up: all zero at the snapshot)
 * Offsets wrap inside each area.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
#include <cpuid.h>
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
static int have_avx;

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

static uint64_t digest(int memory_only)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	uint8_t xmm[16 * 16];
	__asm__ volatile("movdqu %%xmm0, 0(%0)\n movdqu %%xmm1, 16(%0)\n movdqu %%xmm2, 32(%0)\n movdqu %%xmm3, 48(%0)\n"
			 "movdqu %%xmm4, 64(%0)\n movdqu %%xmm5, 80(%0)\n movdqu %%xmm6, 96(%0)\n movdqu %%xmm7, 112(%0)\n"
			 "movdqu %%xmm8, 128(%0)\n movdqu %%xmm9, 144(%0)\n movdqu %%xmm10, 160(%0)\n movdqu %%xmm11, 176(%0)\n"
			 "movdqu %%xmm12, 192(%0)\n movdqu %%xmm13, 208(%0)\n movdqu %%xmm14, 224(%0)\n movdqu %%xmm15, 240(%0)\n"
			 ::"r"(xmm) : "memory");
	h = fnv(h, xmm, sizeof xmm);
	if (have_avx) {
		uint8_t hi[16];
		__asm__ volatile("vextractf128 $1, %%ymm0, (%0)" ::"r"(hi) : "memory");
		h = fnv(h, hi, sizeof hi);
	}
	uint32_t mxcsr;
	uint16_t fcw;
	__asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
	__asm__ volatile("fnstcw %0" : "=m"(fcw));
	h = fnv(h, &mxcsr, sizeof mxcsr);
	h = fnv(h, &fcw, sizeof fcw);
	h = fnv(h, globals, AREA);
	h = fnv(h, zeroed, AREA);
	h = fnv(h, tls, AREA);
	h = fnv(h, heap, AREA);
	h = fnv(h, brk_area, AREA);
	h = fnv(h, mmap_area, AREA);
	h = digest_stack(h);
	if (memory_only)
		return h;
	for (int fd = 0; fd < 16; fd++) {
		int open_ = fcntl(fd, F_GETFD) >= 0;
		h = fnv(h, &open_, sizeof open_);
	}
	void *cur = sbrk(0);
	h = fnv(h, &cur, sizeof cur);
	void *m = malloc(100);
	h = fnv(h, &m, sizeof m);
	free(m);
	void *mm = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h = fnv(h, &mm, sizeof mm);
	munmap(mm, 4096);
	sigset_t set;
	sigprocmask(SIG_BLOCK, 0, &set);
	h = fnv(h, &set, sizeof set);
	return h;
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
			uint32_t v = 0x1f80 | ((n ? d[0] : 0) & 0x6000) | ((n > 1 ? d[1] : 0) & 0x40);
			__asm__ volatile("ldmxcsr %0" ::"m"(v));
			break;
		}
		case 9: {
			uint16_t cw = (uint16_t)(0x037f | ((n ? d[0] : 0) & 0x0c00) | ((n > 1 ? d[1] : 0) & 0x0300));
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

static void run_syscalls(const uint8_t *body, size_t n)
{
	static uint64_t results[512];
	size_t count = 0;
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
	}
	respond(200, "application/octet-stream", results, count * sizeof results[0]);
}

int main(void)
{
	unsigned a, b, c, dd;
	if (__get_cpuid(1, &a, &b, &c, &dd))
		have_avx = (c & (1u << 28)) && (c & (1u << 27));
	heap = malloc(AREA);
	memset(heap, 0x11, AREA);
	brk_area = sbrk(AREA);
	memset(brk_area, 0x22, AREA);
	mmap_area = mmap(0, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(mmap_area, 0x33, AREA);
	memset(globals, 0x44, AREA);
	memset(tls, 0x55, AREA);
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		if (is_path(&req, "/code")) {
			run_code((const uint8_t *)req.body, req.body_len);
			continue;
		}
		if (is_path(&req, "/syscalls")) {
			run_syscalls((const uint8_t *)req.body, req.body_len);
			continue;
		}
		int memory_only = req.query_len == 3 && memcmp(req.query, "mem", 3) == 0;
		uint64_t before = digest(memory_only);
		apply((const uint8_t *)req.body, req.body_len);
		uint64_t after = digest(memory_only);
		char out[64];
		int n = snprintf(out, sizeof out, "before=%016llx after=%016llx", (unsigned long long)before,
				 (unsigned long long)after);
		respond(200, "text/plain", out, (size_t)n);
	}
}
