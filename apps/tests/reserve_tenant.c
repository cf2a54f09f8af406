/*
 * reserve_tenant — memory on demand in a tenant, reset with it (crates/vmm/tests/memory.rs).
 * During init it reserves 1 GiB PROT_NONE (R), commits and fills 1 MiB of it (P), and fills a
 * 1 MiB heap buffer (B), and commits and fills a whole 2 MiB-aligned block of R (Q: its page
 * table too comes from the pool before the snapshot).  Requests:
 *   /check     "R:<is R+512 MiB accessible> P:<P as filled> B:<B as filled> X:<is X mapped>
 *              Q:<Q as filled>"
 *   /scribble  overwrites P and B, no system call (a batch resets it in the guest)
 *   /map       commits R+512 MiB, maps X (MAP_FIXED), unmaps P, touches 4 MiB of new memory
 *   /drop      unmaps all of Q (its page table goes back to the pool), then touches 4 MiB
 *              of new memory (which takes pages, tables among them, from the pool)
 *   /hog       touches 64 MiB (more than the tests give the VM)
 * The body is in static memory, so a batch can answer in the guest.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "tenantvm.h"

#define MiB (1ul << 20)
#define X ((char *)0x200000000000ul)

static sigjmp_buf jump;
static char *R, *P, *B, *Q;
static char body[128];

static void back(int sig)
{
	siglongjmp(jump, sig);
}

static int accessible(volatile char *p)
{
	if (sigsetjmp(jump, 1))
		return 0;
	(void)*p;
	return 1;
}

static int filled_n(const char *p, char v, size_t n)
{
	for (size_t i = 0; i < n; i += 512)
		if (p[i] != v)
			return 0;
	return 1;
}

static int filled(const char *p, char v)
{
	for (size_t i = 0; i < MiB; i += 512)
		if (p[i] != v)
			return 0;
	return 1;
}

static int is(const struct tvm_request *r, const char *path)
{
	return r->path_len == strlen(path) && !memcmp(r->path, path, r->path_len);
}

int main(void)
{
	signal(SIGSEGV, back);
	R = mmap(0, 1ul << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	P = R + 64 * MiB;
	mprotect(P, MiB, PROT_READ | PROT_WRITE);
	memset(P, 'p', MiB);
	Q = (char *)(((unsigned long)R + 128 * MiB + 2 * MiB - 1) & ~(2 * MiB - 1));
	mprotect(Q, 2 * MiB, PROT_READ | PROT_WRITE);
	memset(Q, 'q', 2 * MiB);
	B = malloc(MiB);
	memset(B, 'b', MiB);
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		if (is(&req, "/scribble")) {
			P[4096] = 'x';
			B[MiB - 1] = 'x';
			respond_text(200, "text/plain", "scribbled");
		} else if (is(&req, "/hog")) {
			char *h = mmap(0, 64 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			memset(h, 'h', 64 * MiB);
			respond_text(200, "text/plain", "hogged");
		} else if (is(&req, "/drop")) {
			munmap(Q, 2 * MiB);
			char *t = mmap(0, 4 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			memset(t, 't', 4 * MiB);
			respond_text(200, "text/plain", "dropped");
		} else if (is(&req, "/map")) {
			mprotect(R + 512 * MiB, MiB, PROT_READ | PROT_WRITE);
			R[512 * MiB] = 1;
			char *x = mmap(X, MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			x[0] = 1;
			munmap(P, MiB);
			char *t = mmap(0, 4 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			memset(t, 't', 4 * MiB);
			respond_text(200, "text/plain", "mapped");
		} else {
			int r = accessible(R + 512 * MiB), x = accessible(X);
			int p = accessible(P) && filled(P, 'p'), b = filled(B, 'b');
			int q = accessible(Q) && filled_n(Q, 'q', 2 * MiB);
			char *o = body;
			memcpy(o, "R:0 P:0 B:0 X:0 Q:0", 20);
			o[2] += r;
			o[6] += p;
			o[10] += b;
			o[14] += x;
			o[18] += q;
			respond_text(200, "text/plain", body);
		}
	}
}
