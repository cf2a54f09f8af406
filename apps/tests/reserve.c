/* reserve.c — an address space far larger than the VM's memory (crates/vmm/tests/memory.rs,
 * run in a 32 MiB VM).  Reserves 16 GiB PROT_NONE and commits 1 MiB pieces of it; checks what
 * faults and what does not (a SIGSEGV handler), /proc/self/maps, munmap, mprotect, mremap and
 * madvise on the pieces, a 4 GiB-aligned cage made the way V8's cppgc makes it, and that
 * memory given back can be used again.  Prints "reserve ok" and exits 0, or names the first
 * check that failed and exits 1. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MiB (1ul << 20)
#define GiB (1ul << 30)

static sigjmp_buf jump;

static void back(int sig)
{
	siglongjmp(jump, sig);
}

static int readable(volatile char *p)
{
	if (sigsetjmp(jump, 1))
		return 0;
	(void)*p;
	return 1;
}

static int writable(volatile char *p)
{
	if (sigsetjmp(jump, 1))
		return 0;
	*p = *p;
	return 1;
}

static void check(int ok, const char *what)
{
	if (!ok) {
		printf("failed: %s\n", what);
		exit(1);
	}
}

/* Is there a line "start-end perms" in /proc/self/maps? */
static int in_maps(void *start, void *end, const char *perms)
{
	char want[80], line[256];
	snprintf(want, sizeof want, "%lx-%lx %s", (unsigned long)start, (unsigned long)end, perms);
	FILE *f = fopen("/proc/self/maps", "r");
	int found = 0;
	while (f && fgets(line, sizeof line, f))
		found |= !strncmp(line, want, strlen(want));
	if (f)
		fclose(f);
	return found;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = back;
	sigaction(SIGSEGV, &sa, 0);

	size_t size = 16 * GiB;
	char *r = mmap(0, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	check(r != MAP_FAILED, "reserve 16 GiB");
	check(in_maps(r, r + size, "---p"), "/proc/self/maps shows the reservation");
	check(!readable(r + 5 * GiB), "PROT_NONE memory faults");

	/* 16 MiB committed, one piece per GiB */
	for (int i = 0; i < 16; i++) {
		char *p = r + i * GiB;
		check(mprotect(p, MiB, PROT_READ | PROT_WRITE) == 0, "mprotect a piece read-write");
		memset(p, i + 1, MiB);
	}
	for (int i = 0; i < 16; i++) {
		char *p = r + i * GiB;
		check(p[0] == i + 1 && p[MiB - 1] == i + 1, "committed pieces keep their bytes");
		check(!readable(p + MiB), "the reservation goes on past a piece");
	}
	check(in_maps(r + 2 * GiB, r + 2 * GiB + MiB, "rw-p"), "/proc/self/maps shows a piece");

	check(munmap(r + 3 * GiB, MiB) == 0 && !readable(r + 3 * GiB), "munmap of a piece");
	check(mprotect(r + 4 * GiB, MiB, PROT_NONE) == 0 && !readable(r + 4 * GiB), "mprotect PROT_NONE");
	check(mprotect(r + 4 * GiB, MiB, PROT_READ) == 0 && r[4 * GiB] == 5, "PROT_NONE kept the bytes");
	check(!writable(r + 4 * GiB), "read-only memory is read-only");

	char *m = mremap(r + 5 * GiB, MiB, 2 * MiB, MREMAP_MAYMOVE | MREMAP_FIXED, r + 5 * GiB + 256 * MiB);
	check(m == r + 5 * GiB + 256 * MiB, "mremap to a fixed address in the reservation");
	check(m[0] == 6 && m[MiB - 1] == 6 && m[MiB] == 0, "mremap moved the bytes, the new tail is zero");
	check(!readable(r + 5 * GiB), "mremap left nothing behind");

	check(madvise(r + 6 * GiB, MiB, MADV_DONTNEED) == 0 && r[6 * GiB] == 0, "MADV_DONTNEED zeroes");
	check(munmap(r, size) == 0 && !readable(r + 7 * GiB) && !readable(m), "munmap of it all");

	/* A 4 GiB-aligned cage: reserve 8 GiB, keep the aligned 4 GiB inside */
	char *c = mmap(0, 8 * GiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	check(c != MAP_FAILED, "reserve 8 GiB");
	char *a = (char *)(((uintptr_t)c + 4 * GiB - 1) & ~(4 * GiB - 1));
	if (a > c)
		check(munmap(c, a - c) == 0, "trim below the cage");
	if (c + 8 * GiB > a + 4 * GiB)
		check(munmap(a + 4 * GiB, c + 8 * GiB - (a + 4 * GiB)) == 0, "trim above the cage");
	check(mprotect(a + 3 * GiB, 64 * 1024, PROT_READ | PROT_WRITE) == 0, "commit in the cage");
	a[3 * GiB + 100] = 42;
	check(a[3 * GiB + 100] == 42 && in_maps(a, a + 3 * GiB, "---p"), "the cage");

	/* 4 x 12 MiB touched, each given back: more than the VM has, in turns */
	for (int k = 0; k < 4; k++) {
		char *b = mmap(0, 12 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		check(b != MAP_FAILED, "mmap 12 MiB");
		check(b[MiB] == 0, "fresh memory is zero");
		memset(b, k + 1, 12 * MiB);
		check(munmap(b, 12 * MiB) == 0, "munmap 12 MiB");
	}
	printf("reserve ok\n");
	return 0;
}
