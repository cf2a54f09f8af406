/* hello.c — the smallest guest: prints "Hello, world!" via stdio and exits 0.
 * Used to check that a static binary loads, runs libc start-up, writes to
 * stdout and exits cleanly. */
#include <stdio.h>

int main(void)
{
	printf("Hello, world!\n");
	return 0;
}
