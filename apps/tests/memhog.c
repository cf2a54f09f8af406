/* memhog.c — allocates 1 MiB blocks with malloc and touches every page of each
 * one, silently, until malloc returns NULL; then prints
 * "malloc failed after N MiB" to stderr and exits 3.
 * Used to test the VMM's guest memory cap (graceful ENOMEM from brk/mmap, or
 * a clean kill if the cap is enforced another way). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
	const size_t chunk = 1024 * 1024;
	long page = sysconf(_SC_PAGESIZE);
	unsigned long mib = 0;

	if (page <= 0)
		page = 4096;
	for (;;) {
		volatile char *p = malloc(chunk);
		if (!p)
			break;
		for (size_t off = 0; off < chunk; off += (size_t)page)
			p[off] = (char)(mib + off);
		mib++; /* blocks are deliberately leaked */
	}
	fprintf(stderr, "malloc failed after %lu MiB\n", mib);
	return 3;
}
