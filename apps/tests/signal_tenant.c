/*
 * signal_tenant — signal handlers in a tenant's snapshot and reset with it
 * (crates/vmm/tests/signals.rs).  A SIGFPE handler is installed during init; each request:
 *   /div      divides by zero: "div recovered" (the init handler is in the snapshot)
 *   /install  installs a SIGSEGV handler: "installed"
 *   /fault    writes through a null pointer: "fault recovered" if a SIGSEGV handler is
 *             installed, else the request fails with a typed fault
 */
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include "tenantvm.h"

static sigjmp_buf jump;

static void back(int sig)
{
	siglongjmp(jump, sig);
}

static int is(const struct tvm_request *r, const char *path)
{
	return r->path_len == strlen(path) && !memcmp(r->path, path, r->path_len);
}

int main(void)
{
	signal(SIGFPE, back);
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		if (sigsetjmp(jump, 1) != 0) {
			respond_text(200, "text/plain", is(&req, "/div") ? "div recovered" : "fault recovered");
			continue;
		}
		if (is(&req, "/div")) {
			__asm__ volatile("xor %%ecx, %%ecx\n mov $7, %%eax\n cltd\n idivl %%ecx\n" ::: "rax", "rcx", "rdx", "cc");
			respond_text(200, "text/plain", "div not raised");
		} else if (is(&req, "/install")) {
			signal(SIGSEGV, back);
			respond_text(200, "text/plain", "installed");
		} else {
			volatile int *volatile null = 0;
			*null = 1;
			respond_text(200, "text/plain", "no fault");
		}
	}
}
