/* fsops: runs file-system operations named on the command line and prints one line per
 * operation, "op arg = result", so tests can compare with Linux's answers.
 *
 *   read PATH         open O_RDONLY, print the first 64 bytes (or -ERRNO)
 *   write PATH DATA   open O_WRONLY|O_CREAT|O_TRUNC, write DATA
 *   append PATH DATA  open O_WRONLY|O_APPEND, write DATA
 *   stat PATH / lstat PATH    type and size
 *   access PATH MODE  MODE: r, w or x
 *   readlink PATH     the target
 *   ls DIR            sorted names (without . and ..)
 *   mkdir / rmdir / unlink PATH, rename A B, chdir PATH, cwd
 *   pipe              write into a pipe and read it back; EOF after closing the write end
 *   eventfd           add 3 and 4, read 7, then EAGAIN (non-blocking)
 *   fds               number of open descriptors among 0..1023
 *   leak PATH N       open PATH N times without closing (prints how many opened, then errno)
 *   dup               dup/dup2/dup3/F_DUPFD_CLOEXEC/F_GETFD on stdout
 *   mmap PATH         map the file privately and print its first 16 bytes
 *   seek PATH         lseek SEEK_END / pread at 1
 *   fill PATH MB      write MB MiB into PATH (prints the MiB written, then 0 or -ERRNO)
 *   alloc MB          malloc and touch MB MiB (prints 0 or -ENOMEM), then free it
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void show_bytes(const char *buf, long n) {
    for (long i = 0; i < n; i++) putchar(buf[i] >= 32 && buf[i] < 127 ? buf[i] : '.');
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i], *p = i + 1 < argc ? argv[i + 1] : "";
        printf("%s %s = ", op, p);
        errno = 0;
        if (!strcmp(op, "read")) {
            int fd = open(p, O_RDONLY);
            i++;
            if (fd < 0) { printf("-%d\n", errno); continue; }
            char buf[64];
            long n = read(fd, buf, sizeof buf);
            if (n < 0) printf("-%d\n", errno); else { show_bytes(buf, n); putchar('\n'); }
            close(fd);
        } else if (!strcmp(op, "write") || !strcmp(op, "append")) {
            int flags = !strcmp(op, "write") ? O_WRONLY | O_CREAT | O_TRUNC : O_WRONLY | O_APPEND;
            const char *data = argv[i + 2];
            i += 2;
            int fd = open(p, flags, 0644);
            if (fd < 0) { printf("-%d\n", errno); continue; }
            long n = write(fd, data, strlen(data));
            printf("%ld\n", n < 0 ? -errno : n);
            close(fd);
        } else if (!strcmp(op, "stat") || !strcmp(op, "lstat")) {
            struct stat st;
            i++;
            int r = !strcmp(op, "stat") ? stat(p, &st) : lstat(p, &st);
            if (r < 0) { printf("-%d\n", errno); continue; }
            const char *t = S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "link"
                          : S_ISCHR(st.st_mode) ? "chr" : "other";
            printf("%s %lld\n", t, S_ISREG(st.st_mode) ? (long long)st.st_size : 0LL);
        } else if (!strcmp(op, "access")) {
            const char *m = argv[i + 2];
            i += 2;
            int mode = m[0] == 'r' ? R_OK : m[0] == 'w' ? W_OK : X_OK;
            printf("%d\n", access(p, mode) < 0 ? -errno : 0);
        } else if (!strcmp(op, "readlink")) {
            char buf[256];
            i++;
            long n = readlink(p, buf, sizeof buf);
            if (n < 0) printf("-%d\n", errno); else printf("%.*s\n", (int)n, buf);
        } else if (!strcmp(op, "ls")) {
            i++;
            DIR *d = opendir(p);
            if (!d) { printf("-%d\n", errno); continue; }
            char *names[512];
            int n = 0;
            struct dirent *e;
            while ((e = readdir(d)) && n < 512)
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names[n++] = strdup(e->d_name);
            closedir(d);
            qsort(names, n, sizeof *names, cmp);
            for (int k = 0; k < n; k++) printf("%s%s", k ? " " : "", names[k]);
            putchar('\n');
        } else if (!strcmp(op, "mkdir")) {
            i++;
            printf("%d\n", mkdir(p, 0755) < 0 ? -errno : 0);
        } else if (!strcmp(op, "rmdir")) {
            i++;
            printf("%d\n", rmdir(p) < 0 ? -errno : 0);
        } else if (!strcmp(op, "unlink")) {
            i++;
            printf("%d\n", unlink(p) < 0 ? -errno : 0);
        } else if (!strcmp(op, "rename")) {
            const char *to = argv[i + 2];
            i += 2;
            printf("%d\n", rename(p, to) < 0 ? -errno : 0);
        } else if (!strcmp(op, "chdir")) {
            i++;
            printf("%d\n", chdir(p) < 0 ? -errno : 0);
        } else if (!strcmp(op, "cwd")) {
            char buf[256];
            printf("%s\n", getcwd(buf, sizeof buf) ? buf : "?");
        } else if (!strcmp(op, "pipe")) {
            int fds[2];
            if (pipe2(fds, O_CLOEXEC) < 0) { printf("-%d\n", errno); continue; }
            char buf[8] = {0};
            long w = write(fds[1], "ping", 4), r = read(fds[0], buf, sizeof buf);
            close(fds[1]);
            long eof = read(fds[0], buf + 4, 4);
            close(fds[0]);
            printf("%ld %ld %.4s eof=%ld\n", w, r, buf, eof);
        } else if (!strcmp(op, "eventfd")) {
            int fd = eventfd(0, EFD_NONBLOCK);
            unsigned long long v = 3;
            write(fd, &v, 8);
            v = 4;
            write(fd, &v, 8);
            read(fd, &v, 8);
            unsigned long long again;
            long r = read(fd, &again, 8);
            printf("%llu %ld\n", v, r < 0 ? -errno : r);
            close(fd);
        } else if (!strcmp(op, "fds")) {
            int n = 0;
            for (int fd = 0; fd < 1024; fd++) n += fcntl(fd, F_GETFD) >= 0;
            printf("%d\n", n);
        } else if (!strcmp(op, "leak")) {
            int want = atoi(argv[i + 2]), n = 0;
            i += 2;
            while (n < want && open(p, O_RDONLY) >= 0) n++;
            printf("%d %d\n", n, n < want ? -errno : 0);
        } else if (!strcmp(op, "dup")) {
            int a = dup(1), b = dup2(1, 100), c = dup3(1, 101, O_CLOEXEC), d = fcntl(1, F_DUPFD_CLOEXEC, 50);
            printf("%d %d %d %d cloexec=%d,%d\n", a, b, c, d, fcntl(b, F_GETFD), fcntl(c, F_GETFD));
            close(a), close(b), close(c), close(d);
        } else if (!strcmp(op, "mmap")) {
            i++;
            int fd = open(p, O_RDONLY);
            if (fd < 0) { printf("-%d\n", errno); continue; }
            char *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
            void *shared_w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (m == MAP_FAILED) { printf("-%d\n", errno); continue; }
            show_bytes(m, 16);
            printf(" shared_rw=%d\n", shared_w == MAP_FAILED ? -errno : 0);
        } else if (!strcmp(op, "seek")) {
            i++;
            int fd = open(p, O_RDONLY);
            if (fd < 0) { printf("-%d\n", errno); continue; }
            char c = 0;
            long end = lseek(fd, 0, SEEK_END), pr = pread(fd, &c, 1, 1);
            printf("%ld %ld %c pipe=%ld\n", end, pr, c, (long)lseek(1, 0, SEEK_CUR) < 0 ? -errno : 0L);
            close(fd);
        } else if (!strcmp(op, "fill")) {
            int mb = atoi(argv[i + 2]), done = 0, err = 0;
            i += 2;
            int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0) { printf("-%d\n", errno); continue; }
            static char chunk[1 << 20];
            memset(chunk, 'x', sizeof chunk);
            while (done < mb) {
                if (write(fd, chunk, sizeof chunk) != (long)sizeof chunk) { err = -errno; break; }
                done++;
            }
            close(fd);
            printf("%d %d\n", done, err);
        } else if (!strcmp(op, "alloc")) {
            size_t n = (size_t)atoi(p) << 20;
            i++;
            char *m = malloc(n);
            if (m) memset(m, 1, n);
            printf("%d\n", m ? 0 : -ENOMEM);
            free(m);
        } else {
            printf("unknown\n");
        }
    }
    return 0;
}
