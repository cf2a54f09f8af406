/*
 * churn — one run of what a dynamic Linux program does to its process, for the leak tests
 * (tests/test_leaks.py, `make leaks`): every resource a VM's emulated process holds, taken
 * and given back, so that thousands of runs show whether the host keeps any of it.
 *
 * Opens and reads files (its own executable through /proc/self/exe, /etc/ld.so.cache via
 * stdio), maps one of them (file-backed MAP_PRIVATE), loads a library at run time (dlopen of
 * libm: ld.so opens and maps it) and calls into it, starts a thread that writes to a pipe,
 * creates, writes and removes a file in /tmp.  Prints "churn ok <n>" where n is a checksum of
 * what it read and computed, the same every run (the test compares it).
 *
 *   churn image   checks the program's own read-only pages (mapped from its file rather than
 *                 copied, crates/vmm/src/loader.rs file_pages): its text and read-only data
 *                 in memory equal the file's bytes, a system call reads them (write to a pipe
 *                 from the text), and a write to the text is a SIGSEGV.  Prints "image ok".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int pipefd[2];

static void *writer(void *arg)
{
	const char *msg = arg;
	ssize_t n = write(pipefd[1], msg, strlen(msg));
	return (void *)n;
}

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

extern const unsigned char __executable_start[], __etext[];
static sigjmp_buf back;

static void on_segv(int sig)
{
	siglongjmp(back, sig);
}

static int image(void)
{
	/* A PIE's first segment maps offset 0 at the load address: memory[i] is file byte i. */
	size_t len = (size_t)(__etext - __executable_start);
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	unsigned char *file = malloc(len);
	if (fd < 0 || !file || pread(fd, file, len, 0) != (ssize_t)len)
		fail("read the executable");
	if (memcmp(file, __executable_start, len) != 0)
		fail("text differs from the file");
	int p[2];
	char got[64];
	if (pipe(p) != 0 || write(p[1], __executable_start, 64) != 64 || read(p[0], got, 64) != 64 ||
	    memcmp(got, file, 64) != 0)
		fail("a system call reading the text");
	signal(SIGSEGV, on_segv);
	if (sigsetjmp(back, 1) == 0) {
		*(volatile unsigned char *)__executable_start = 0;
		fail("the text was writable");
	}
	printf("image ok %zu\n", len);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long sum = 0;

	if (argc > 1 && strcmp(argv[1], "image") == 0)
		return image();

	/* A file read through a descriptor, then mapped. */
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open /proc/self/exe");
	unsigned char head[4];
	if (read(fd, head, 4) != 4 || memcmp(head, "\177ELF", 4) != 0)
		fail("read ELF magic");
	struct stat st;
	if (fstat(fd, &st) != 0)
		fail("fstat");
	unsigned char *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED)
		fail("mmap");
	sum += map[0] + map[1] + map[2] + map[3];
	munmap(map, (size_t)st.st_size);
	close(fd);

	/* stdio on a library path file (FILE buffers: malloc and free). */
	FILE *f = fopen("/etc/ld.so.cache", "rb");
	if (f) {
		char buf[16];
		if (fread(buf, 1, sizeof buf, f) != sizeof buf)
			fail("fread");
		fclose(f);
		sum += 1;
	}

	/* A library mapped at run time. */
	void *libm = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
	if (!libm) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	double (*sqrt_fn)(double) = (double (*)(double))dlsym(libm, "sqrt");
	if (!sqrt_fn)
		fail("dlsym");
	sum += (unsigned long)sqrt_fn(1764.0); /* 42 */
	dlclose(libm);

	/* A thread, and a pipe between it and main. */
	if (pipe2(pipefd, O_CLOEXEC) != 0)
		fail("pipe2");
	pthread_t t;
	if (pthread_create(&t, NULL, writer, "from the thread") != 0)
		fail("pthread_create");
	char got[64] = { 0 };
	ssize_t n = read(pipefd[0], got, sizeof got - 1);
	void *written;
	pthread_join(t, &written);
	if (n != (ssize_t)strlen("from the thread") || (ssize_t)written != n)
		fail("pipe");
	sum += (unsigned long)n;
	close(pipefd[0]);
	close(pipefd[1]);

	/* A file in /tmp, written, read back, removed. */
	int tmp = open("/tmp/churn.txt", O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
	if (tmp < 0)
		fail("open /tmp");
	if (write(tmp, "0123456789", 10) != 10 || pread(tmp, got, 10, 0) != 10)
		fail("tmp io");
	close(tmp);
	if (unlink("/tmp/churn.txt") != 0)
		fail("unlink");
	sum += (unsigned long)(got[9] - '0');

	printf("churn ok %lu\n", sum);
	return 0;
}
