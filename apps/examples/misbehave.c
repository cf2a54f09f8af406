/* misbehave — a tenant that fails on demand, for testing that every failure is contained.
 * The path picks the behaviour; anything else answers "ok".
 *   /fault      write through a NULL pointer          /illegal   execute ud2
 *   /spin       loop forever (hits the time limit)    /exit      exit(3) instead of responding
 *   /abort      abort()                               /wait      wait for a request without responding
 *   /big        a response body over the limit        /badptr    respond with a wild body pointer
 *   /oom        allocate until malloc fails, then abort
 *   /sleep?ms=N sleep N milliseconds, then answer
 *   /busy?ms=N  compute for N milliseconds (reading the clock only), then answer;
 *               with &sleep=S, sleep S milliseconds first
 *   /dirty?kb=N write N KiB of the heap, then answer ("ok")
 *   /rewrite?kb=N write back what N KiB of the heap hold (pages written, left as they were)
 *   /count      a global counter (shows state persistence in stateful mode)
 *   /crash-odd  fault on every odd-numbered request of this instance's life (stateful), else ok
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tenantvm.h"

static unsigned long count;
static char heap_area[8 << 20];

static int is(const struct tvm_request *r, const char *p)
{
	size_t n = strlen(p);
	return r->path_len == n && memcmp(r->path, p, n) == 0;
}

static long qnum(const struct tvm_request *r, const char *key)
{
	size_t k = strlen(key);
	const char *q = r->query;
	for (size_t i = 0; i + k < r->query_len + 1; i++)
		if ((i == 0 || q[i - 1] == '&') && strncmp(q + i, key, k) == 0 && q[i + k] == '=')
			return atol(q + i + k + 1);
	return 0;
}

int main(void)
{
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		count++;
		if (is(&req, "/fault")) {
			*(volatile int *)0 = 1;
		} else if (is(&req, "/illegal")) {
			__asm__ volatile("ud2");
		} else if (is(&req, "/spin")) {
			for (volatile unsigned long i = 0;; i++)
				;
		} else if (is(&req, "/exit")) {
			exit(3);
		} else if (is(&req, "/abort")) {
			abort();
		} else if (is(&req, "/wait")) {
			wait_for_request(&req);
		} else if (is(&req, "/big")) {
			static char big[9 << 20];
			respond(200, "text/plain", big, sizeof big);
		} else if (is(&req, "/badptr")) {
			respond(200, "text/plain", (const void *)0x10, 100);
		} else if (is(&req, "/oom")) {
			for (;;) {
				char *p = malloc(1 << 20);
				if (!p)
					abort();
				p[0] = 1; /* touching one page is enough: the cap is on address space */
			}
		} else if (is(&req, "/sleep")) {
			long ms = qnum(&req, "ms");
			struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
			nanosleep(&ts, 0);
		} else if (is(&req, "/busy")) {
			long nap = qnum(&req, "sleep");
			struct timespec ts = { nap / 1000, (nap % 1000) * 1000000 }, t0, t;
			if (nap > 0)
				nanosleep(&ts, 0);
			clock_gettime(CLOCK_MONOTONIC, &t0);
			long ns = qnum(&req, "ms") * 1000000;
			do
				clock_gettime(CLOCK_MONOTONIC, &t);
			while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < ns);
		} else if (is(&req, "/dirty")) {
			long kb = qnum(&req, "kb");
			if (kb > (long)(sizeof heap_area >> 10))
				kb = sizeof heap_area >> 10;
			for (long i = 0; i < kb * 1024; i += 4096)
				((volatile char *)heap_area)[i] = (char)count;
		} else if (is(&req, "/rewrite")) {
			long kb = qnum(&req, "kb");
			if (kb > (long)(sizeof heap_area >> 10))
				kb = sizeof heap_area >> 10;
			for (long i = 0; i < kb * 1024; i += 4096)
				((volatile char *)heap_area)[i] = ((volatile char *)heap_area)[i];
		} else if (is(&req, "/crash-odd")) {
			if (count % 2)
				*(volatile int *)0 = 1;
		} else if (is(&req, "/count")) {
			char b[32];
			int n = snprintf(b, sizeof b, "%lu", count);
			respond(200, "text/plain", b, (size_t)n);
			continue;
		}
		respond_text(200, "text/plain", "ok");
	}
}
