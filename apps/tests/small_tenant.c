/*
 * small_tenant — a tenant small enough (with musl: about 30 KiB) that its writable data lies
 * in the first 256 KiB of RAM after the kernel area.  Each request answers how many requests
 * this program has served, from a counter in its data section: in ephemeral mode always 1.
 * The request API is called by number (docs/guest-abi.md), without the SDK header.
 */
#include <stddef.h>

static long served;
static char answer[24];

static long api(long nr, long a, long b, long c, long d, long e)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
	return ret;
}

int main(void)
{
	for (;;) {
		api(0x10000, 0, 0, 0, 0, 0); /* wait_for_request */
		served++;
		size_t n = 0;
		char digits[24];
		for (long v = served; v > 0; v /= 10)
			digits[n++] = (char)('0' + v % 10);
		for (size_t i = 0; i < n; i++)
			answer[i] = digits[n - 1 - i];
		api(0x10001, 200, 0, 0, (long)answer, (long)n); /* respond(200, no headers, body) */
	}
}
