/* stackoverflow.c — unbounded recursion with a 4 KiB frame that is touched on
 * every level, so the stack grows page by page until it hits the guard /
 * stack limit (SIGSEGV natively, a #PF below the stack inside the VM). */
#include <stdio.h>

static unsigned long depth;

static unsigned long recurse(unsigned long n)
{
	volatile char buf[4096];
	for (unsigned i = 0; i < sizeof buf; i += 64)
		buf[i] = (char)n;
	depth = n;
	/* Use the result so this is not a tail call the compiler can turn into a loop. */
	return recurse(n + 1) + buf[n % sizeof buf];
}

int main(void)
{
	unsigned long r = recurse(0);
	printf("not reached: %lu %lu\n", r, depth);
	return 0;
}
