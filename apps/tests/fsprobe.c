/* fsprobe — a test tenant: reports the emulated process's file state, then changes all of it.
 *
 * Init (before the snapshot): opens argv[1] (kept open), creates /tmp/init.txt, makes
 * /tmp/initdir its working directory, opens a pipe with "x" in it.
 * Every request answers with the state it found ("fds=... cwd=... tmp=... kept=... pipe=..."),
 * after changing every part of it: a leaked descriptor, dup2 onto 200, chdir("/"), a new
 * /tmp file, /tmp/init.txt unlinked, the kept file's offset moved, the pipe drained.  In an
 * ephemeral tenant every request must report the same state as the first.
 * "/open" instead opens argv[1] again and reads the kept descriptor ("reopen=0 kept=4:....", or
 * reopen=-13 on a thread whose seccomp filter refuses opening files). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tenantvm.h"

static int kept = -1, pipefd[2];

static int count_fds(void)
{
	int n = 0;
	for (int fd = 0; fd < 256; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

static void list_tmp(char *out, size_t size)
{
	DIR *d = opendir("/tmp");
	out[0] = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.') {
			strncat(out, e->d_name, size - strlen(out) - 2);
			strcat(out, ",");
		}
	if (d)
		closedir(d);
}

int main(int argc, char **argv)
{
	static const struct tvm_header type = { "content-type", 12, "text/plain", 10 };
	kept = open(argc > 1 ? argv[1] : "/proc/cpuinfo", O_RDONLY);
	int f = open("/tmp/init.txt", O_WRONLY | O_CREAT, 0644);
	write(f, "init", 4);
	close(f);
	mkdir("/tmp/initdir", 0755);
	chdir("/tmp/initdir");
	pipe(pipefd);
	write(pipefd[1], "x", 1);
	for (;;) {
		const struct tvm_request *req = tvm_wait_for_request();
		if (req->path_len == 5 && !memcmp(req->path, "/open", 5)) {
			/* Open the kept file again now, and read the one opened during init. */
			int again = open(argc > 1 ? argv[1] : "/proc/cpuinfo", O_RDONLY);
			char b[8] = {0}, body[64];
			long k = pread(kept, b, 4, 0);
			int n = snprintf(body, sizeof body, "reopen=%d kept=%ld:%.4s", again < 0 ? -errno : 0, k, b);
			respond_headers(200, &type, 1, body, (size_t)n);
			continue;
		}
		char cwd[128] = "?", tmp[256], kept_bytes[8] = {0}, piped[4] = {0};
		getcwd(cwd, sizeof cwd);
		list_tmp(tmp, sizeof tmp);
		long k = read(kept, kept_bytes, 4);
		fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
		long p = read(pipefd[0], piped, 1);
		int fds = count_fds();
		/* change everything */
		open("/dev/null", O_RDONLY);
		dup2(1, 200);
		chdir("/");
		f = open("/tmp/request.txt", O_WRONLY | O_CREAT | O_APPEND, 0644);
		write(f, "r", 1);
		unlink("/tmp/init.txt");
		char body[512];
		int n = snprintf(body, sizeof body, "fds=%d cwd=%s tmp=%s kept=%ld:%.4s pipe=%ld:%s", fds, cwd, tmp, k,
				 kept_bytes, p, piped);
		respond_headers(200, &type, 1, body, (size_t)n);
	}
}
