/* rwbig.c — large-output test. Writes 2*N bytes to stdout, where byte k of the
 * whole stream is (k % 251):
 *   - first N bytes with ONE write() call (retried only on a short write),
 *   - next N bytes with many writev() calls of 3 iovecs each (varied sizes).
 * N = argv[1] (bytes; a k/m suffix means KiB/MiB), default 1 MiB.
 * A summary goes to stderr; exits 0, or 1 on a write error. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

static int write_all(const unsigned char *p, size_t n, unsigned *calls)
{
	while (n) {
		ssize_t w = write(1, p, n);
		++*calls;
		if (w < 0) {
			perror("rwbig: write");
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int main(int argc, char **argv)
{
	size_t n = 1024 * 1024;
	if (argc >= 2) {
		char *end;
		n = strtoull(argv[1], &end, 0);
		if (*end == 'k' || *end == 'K')
			n <<= 10;
		else if (*end == 'm' || *end == 'M')
			n <<= 20;
	}

	/* Pattern buffer covering both halves: byte k = k % 251. */
	unsigned char *buf = malloc(2 * n + 1);
	if (!buf) {
		fprintf(stderr, "rwbig: malloc(%zu) failed\n", 2 * n);
		return 1;
	}
	for (size_t k = 0; k < 2 * n; k++)
		buf[k] = (unsigned char)(k % 251);

	unsigned writes = 0, writevs = 0;
	if (write_all(buf, n, &writes))
		return 1;

	/* Second half: writev with 3 iovecs per call, sizes cycling through a table. */
	static const size_t sizes[] = {1, 7, 100, 511, 4096, 3, 1000, 13, 2048};
	const size_t nsizes = sizeof sizes / sizeof sizes[0];
	size_t pos = n, end = 2 * n, s = 0;
	while (pos < end) {
		struct iovec iov[3];
		size_t total = 0;
		for (int i = 0; i < 3; i++) {
			size_t len = sizes[s++ % nsizes];
			if (len > end - pos - total)
				len = end - pos - total;
			iov[i].iov_base = buf + pos + total;
			iov[i].iov_len = len;
			total += len;
		}
		ssize_t w = writev(1, iov, 3);
		writevs++;
		if (w < 0) {
			perror("rwbig: writev");
			return 1;
		}
		if ((size_t)w < total) /* short writev: finish the rest with write() */
			if (write_all(buf + pos + w, total - (size_t)w, &writes))
				return 1;
		pos += total;
	}
	fprintf(stderr, "rwbig: wrote %zu bytes (%u write, %u writev)\n", 2 * n, writes, writevs);
	free(buf);
	return 0;
}
