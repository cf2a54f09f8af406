/*
 * signal_tenant — signal handlers in a tenant's snapshot and reset with it
 * (crates/vmm/tests/signals.rs).  A SIGFPE handler is installed during init; each request:
 *   /div      divides by zero: "div recovered" (the init handler is in the snapshot)
 *   /div-keep the same, but the handler jumps back without restoring the signal mask (a
 *             sigsetjmp that saved none): the request makes no system call at all, and
 *             SIGFPE stays blocked as the handler's mask left it: "div recovered, mask kept"
 *   /install  installs a SIGSEGV handler: "installed"
 *   /fault    writes through a null pointer: "fault recovered" if a SIGSEGV handler is
 *             installed, else the request fails with a typed fault
 *   /leave    blocks SIGUSR1, leaves SIGUSR2 pending (blocked, raised), sets an alternate
 *             stack, ignores SIGTERM: "left"
 *   /state    "usr1-blocked=B usr2-pending=P altstack=on|off term=default|ignored usr1=N": the
 *             signal state the request starts with (after raising SIGUSR1, whose init handler
 *             counts; a blocked SIGUSR1 is not counted)
 *   /term     raises SIGTERM: the request fails as killed by signal 15 (unless ignored)
 */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include "tenantvm.h"

static sigjmp_buf jump;
static volatile int usr1;
static char alt[16384];

static void count(int sig)
{
	(void)sig;
	usr1++;
}

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
	signal(SIGUSR1, count);
	signal(SIGUSR2, count);
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		if (is(&req, "/div-keep")) {
			/* Before the sigsetjmp below, which saves the mask with a system call. */
			if (sigsetjmp(jump, 0) != 0) {
				respond_text(200, "text/plain", "div recovered, mask kept");
				continue;
			}
			__asm__ volatile("xor %%ecx, %%ecx\n mov $7, %%eax\n cltd\n idivl %%ecx\n" ::: "rax", "rcx", "rdx", "cc");
			respond_text(200, "text/plain", "div not raised");
			continue;
		}
		if (sigsetjmp(jump, 1) != 0) {
			respond_text(200, "text/plain", is(&req, "/div") ? "div recovered" : "fault recovered");
			continue;
		}
		if (is(&req, "/div")) {
			__asm__ volatile("xor %%ecx, %%ecx\n mov $7, %%eax\n cltd\n idivl %%ecx\n" ::: "rax", "rcx", "rdx", "cc");
			respond_text(200, "text/plain", "div not raised");
		} else if (is(&req, "/leave")) {
			sigset_t set;
			sigemptyset(&set);
			sigaddset(&set, SIGUSR1);
			sigaddset(&set, SIGUSR2);
			sigprocmask(SIG_BLOCK, &set, NULL);
			raise(SIGUSR2);
			stack_t ss = { .ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0 };
			sigaltstack(&ss, NULL);
			signal(SIGTERM, SIG_IGN);
			respond_text(200, "text/plain", "left");
		} else if (is(&req, "/state")) {
			sigset_t mask, pending;
			sigprocmask(SIG_BLOCK, NULL, &mask);
			sigpending(&pending);
			stack_t ss;
			sigaltstack(NULL, &ss);
			struct sigaction term;
			sigaction(SIGTERM, NULL, &term);
			usr1 = 0;
			raise(SIGUSR1);
			char out[200];
			snprintf(out, sizeof out, "usr1-blocked=%d usr2-pending=%d altstack=%s term=%s usr1=%d",
				 sigismember(&mask, SIGUSR1), sigismember(&pending, SIGUSR2),
				 ss.ss_flags & SS_DISABLE ? "off" : "on", term.sa_handler == SIG_IGN ? "ignored" : "default",
				 usr1);
			respond_text(200, "text/plain", out);
		} else if (is(&req, "/term")) {
			raise(SIGTERM);
			respond_text(200, "text/plain", "term ignored");
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
