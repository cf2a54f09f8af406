/* alloc.c — malloc/free/realloc stress for the VMM's brk and mmap emulation.
 *
 * Three rounds; each allocates 100 MB in total as blocks of varied sizes
 * (mostly small ones, which glibc takes from the brk heap, plus some of
 * 256 KiB .. 4 MiB, which glibc serves with mmap: the mmap threshold is pinned
 * at 256 KiB so glibc's dynamic threshold does not move them to the heap in
 * later rounds; musl mmaps blocks above ~128 KiB anyway), keeps them all live, fills
 * each with a pattern derived from (round, index), verifies all of them, and
 * frees them in a shuffled order. Then it grows one buffer with realloc from
 * 16 bytes to 16 MiB (large steps use mremap in glibc), checking that the
 * contents survive every move.
 *
 * Prints "alloc ok <checksum>" and exits 0. The checksum depends only on the
 * deterministic sizes and patterns, so it is the same for every libc and run.
 * On a mismatch or malloc failure it prints a message and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define TOTAL_BYTES (100u * 1000u * 1000u)
#define ROUNDS 3

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void) /* xorshift64* */
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

static uint64_t pattern_seed(unsigned round, size_t idx)
{
	return ((uint64_t)round << 48) ^ ((uint64_t)idx * 0x100000001b3ull) ^ 0xa5a5a5a5ull;
}

/* Word i of a block holds seed + i * odd constant; a trailing partial word
 * holds the low bytes of the next value. */
static void fill(unsigned char *p, size_t len, uint64_t seed)
{
	size_t words = len / 8, i;
	for (i = 0; i < words; i++) {
		uint64_t v = seed + i * 0x9e3779b97f4a7c15ull;
		memcpy(p + i * 8, &v, 8);
	}
	uint64_t v = seed + i * 0x9e3779b97f4a7c15ull;
	memcpy(p + words * 8, &v, len % 8);
}

/* Returns 0 if the block matches, and folds it into *sum. */
static int verify(const unsigned char *p, size_t len, uint64_t seed, uint64_t *sum)
{
	size_t words = len / 8, i;
	uint64_t acc = 0;
	for (i = 0; i < words; i++) {
		uint64_t v, want = seed + i * 0x9e3779b97f4a7c15ull;
		memcpy(&v, p + i * 8, 8);
		if (v != want)
			return -1;
		acc += v;
	}
	uint64_t want = seed + i * 0x9e3779b97f4a7c15ull, v = 0;
	memcpy(&v, p + words * 8, len % 8);
	if (len % 8 && memcmp(&v, &want, len % 8) != 0)
		return -1;
	*sum = (*sum ^ (acc + v + len)) * 0x100000001b3ull;
	return 0;
}

static size_t pick_size(void)
{
	uint64_t r = rng();
	if (r % 10 < 8)                        /* 80%: small, 16 B .. 64 KiB */
		return 16 + (size_t)(rng() % (64 * 1024 - 16));
	return (256 * 1024) + (size_t)(rng() % (4 * 1024 * 1024 - 256 * 1024)); /* 20%: large */
}

static void fail(const char *what, unsigned round, size_t idx, size_t len)
{
	printf("alloc FAILED: %s (round %u, block %zu, %zu bytes)\n", what, round, idx, len);
	fflush(stdout);
	exit(1);
}

int main(void)
{
	uint64_t sum = 0xcbf29ce484222325ull;
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
	size_t cap = 1024;
	unsigned char **blocks = malloc(cap * sizeof *blocks);
	size_t *lens = malloc(cap * sizeof *lens);
	size_t *order = NULL;
	if (!blocks || !lens)
		fail("malloc for bookkeeping", 0, 0, 0);

	for (unsigned round = 0; round < ROUNDS; round++) {
		size_t n = 0, total = 0;
		while (total < TOTAL_BYTES) {
			if (n == cap) {
				cap *= 2;
				blocks = realloc(blocks, cap * sizeof *blocks);
				lens = realloc(lens, cap * sizeof *lens);
				if (!blocks || !lens)
					fail("realloc for bookkeeping", round, n, cap);
			}
			size_t len = pick_size();
			if (len > TOTAL_BYTES - total)
				len = TOTAL_BYTES - total;
			blocks[n] = malloc(len);
			if (!blocks[n])
				fail("malloc returned NULL", round, n, len);
			lens[n] = len;
			fill(blocks[n], len, pattern_seed(round, n));
			total += len;
			n++;
		}
		/* Verify everything only after all blocks exist, so overlaps show up. */
		for (size_t i = 0; i < n; i++)
			if (verify(blocks[i], lens[i], pattern_seed(round, i), &sum))
				fail("pattern mismatch", round, i, lens[i]);

		/* Free in a Fisher-Yates shuffled order. */
		order = realloc(order, n * sizeof *order);
		if (!order)
			fail("malloc for order", round, n, 0);
		for (size_t i = 0; i < n; i++)
			order[i] = i;
		for (size_t i = n - 1; i > 0; i--) {
			size_t j = (size_t)(rng() % (i + 1)), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
		for (size_t i = 0; i < n; i++)
			free(blocks[order[i]]);
		sum = (sum ^ n) * 0x100000001b3ull;
	}

	/* realloc growth 16 B -> 16 MiB; the old part must survive every move. */
	size_t len = 16;
	unsigned char *buf = malloc(len);
	if (!buf)
		fail("malloc for realloc test", 0, 0, len);
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 7 + 3);
	while (len < 16u * 1024 * 1024) {
		size_t nlen = len * 2;
		unsigned char *nb = realloc(buf, nlen);
		if (!nb)
			fail("realloc returned NULL", 0, 0, nlen);
		buf = nb;
		for (size_t i = 0; i < len; i++)
			if (buf[i] != (unsigned char)(i * 7 + 3))
				fail("realloc lost data", 0, i, nlen);
		for (size_t i = len; i < nlen; i++)
			buf[i] = (unsigned char)(i * 7 + 3);
		len = nlen;
	}
	uint64_t dummy = 0;
	for (size_t i = 0; i < len; i += 4096)
		dummy += buf[i];
	sum = (sum ^ dummy ^ len) * 0x100000001b3ull;
	free(buf);
	free(order);
	free(blocks);
	free(lens);

	printf("alloc ok %016llx\n", (unsigned long long)sum);
	return 0;
}
