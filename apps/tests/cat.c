/* cat.c — copies stdin to stdout with raw read()/write() and a 4 KiB buffer
 * until EOF, then prints the byte count to stderr ("cat: N bytes").
 * Binary-safe; handles short writes and EINTR. Exits 1 on an I/O error. */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	char buf[4096];
	unsigned long long total = 0;

	for (;;) {
		ssize_t n = read(0, buf, sizeof buf);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("cat: read");
			return 1;
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(1, buf + off, (size_t)(n - off));
			if (w < 0) {
				if (errno == EINTR)
					continue;
				perror("cat: write");
				return 1;
			}
			off += w;
		}
		total += (unsigned long long)n;
	}
	fprintf(stderr, "cat: %llu bytes\n", total);
	return 0;
}
