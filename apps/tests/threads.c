/*
 * threads — POSIX threads inside tenantvm (crates/vmm/tests/threads.rs).
 *
 *   threads pool      8 threads take turns through a mutex and a condition variable and
 *                     add up a known sum; distinct tids; joined.  Prints "sum=... turns=...".
 *   threads preempt   main spins (no system call) on a flag only another thread sets, with
 *                     rcx/r11/xmm0 holding values it checks: a time slice must move the vCPU
 *                     to the other thread, and back, without corrupting them.
 *   threads deadlock  main joins a thread that waits on a condition nobody signals.
 *   threads many      creates threads until pthread_create fails; prints how many and why.
 *   threads epoll     epoll between threads: a wait that times out (0 events), a wait that
 *                     another thread's pipe write ends, EPOLLONESHOT, and poll with a timeout.
 *   threads socket    socketpair between threads: send/recv, recvmsg, epoll readiness, EOF
 *                     after the peer closes, EPIPE, fstat, MSG_DONTWAIT, no network (socket()).
 *   threads timerfd   timerfd: a blocking read, epoll and poll waiting on timers, alone and in
 *                     a thread while main waits in pthread_join, gettime, disarming.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define N 8

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn;
static long sum, turns;
static long tids[N];

static void *worker(void *arg)
{
	long id = (long)arg;
	tids[id] = syscall(SYS_gettid);
	for (int round = 0; round < 50; round++) {
		pthread_mutex_lock(&lock);
		while (turn % N != id)
			pthread_cond_wait(&cond, &lock);
		sum += (id + 1) * (round + 1);
		turns++;
		turn++;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
	}
	return (void *)(id * 10);
}

static int pool(void)
{
	pthread_t t[N];
	for (long i = 0; i < N; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)i) != 0)
			return 1;
	long rets = 0;
	for (int i = 0; i < N; i++) {
		void *r;
		pthread_join(t[i], &r);
		rets += (long)r;
	}
	int distinct = 1;
	for (int i = 0; i < N; i++)
		for (int j = 0; j < i; j++)
			if (tids[i] == tids[j] || tids[i] == getpid())
				distinct = 0;
	printf("sum=%ld turns=%ld rets=%ld distinct=%d main=%d\n", sum, turns, rets, distinct,
	       (int)syscall(SYS_gettid) == getpid());
	return 0;
}

static volatile int flag;

static void *setter(void *arg)
{
	(void)arg;
	struct timespec ts = {0, 2 * 1000 * 1000};
	/* Sleep first: the main thread is then resumed from a system-call exit although it was
	 * preempted in user mode (the trampoline path). */
	nanosleep(&ts, NULL);
	volatile double x = 1.0;
	for (int i = 0; i < 100000; i++)
		x = x * 1.000001;
	flag = 1;
	return NULL;
}

static int preempt(void)
{
	pthread_t t;
	if (pthread_create(&t, NULL, setter, NULL) != 0)
		return 1;
	long bad = 0;
	double keep_d = 3.25;
	long keep;
	memcpy(&keep, &keep_d, sizeof keep);
	__asm__ volatile(
		"movq %[keep], %%xmm0\n"
		"mov $0x1111222233334444, %%rcx\n"
		"mov $0x5555666677778888, %%r11\n"
		"1: cmpl $0, (%[flag])\n"
		"jne 2f\n"
		"mov $0x1111222233334444, %%rax\n"
		"cmp %%rax, %%rcx\n"
		"jne 3f\n"
		"mov $0x5555666677778888, %%rax\n"
		"cmp %%rax, %%r11\n"
		"jne 3f\n"
		"movq %%xmm0, %%rax\n"
		"cmp %[keep], %%rax\n"
		"jne 3f\n"
		"jmp 1b\n"
		"3: mov $1, %[bad]\n"
		"2:\n"
		: [bad] "+r"(bad)
		: [flag] "r"(&flag), [keep] "r"(keep)
		: "rax", "rcx", "r11", "xmm0", "memory", "cc");
	pthread_join(t, NULL);
	printf("spun until the other thread ran: registers %s\n", bad ? "CORRUPTED" : "intact");
	return 0;
}

static void *never(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	for (;;)
		pthread_cond_wait(&cond, &lock);
	return NULL;
}

static int deadlock(void)
{
	pthread_t t;
	pthread_create(&t, NULL, never, NULL);
	pthread_join(t, NULL);
	return 0;
}

static void *idle(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	return NULL;
}

static int many(void)
{
	int n = 0, err = 0;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 64 * 1024);
	for (;;) {
		pthread_t t;
		err = pthread_create(&t, &a, idle, NULL);
		if (err)
			break;
		n++;
	}
	printf("created=%d err=%s\n", n, err == EAGAIN ? "EAGAIN" : strerror(err));
	return 0;
}

static int pipefd[2];

static void *writer(void *arg)
{
	(void)arg;
	struct timespec ts = {0, 3 * 1000 * 1000};
	nanosleep(&ts, NULL);
	if (write(pipefd[1], "x", 1) != 1)
		return (void *)1;
	return NULL;
}

static int epoll(void)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || pipe(pipefd) != 0)
		return 1;
	struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0xfeed};
	epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &ev);
	int dup_add = epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &ev) < 0 ? errno : 0;
	struct epoll_event out[4];
	pthread_t t;
	pthread_create(&t, NULL, writer, NULL);
	/* Nothing yet: the writer sleeps 3 ms, so a 1 ms wait times out. */
	int first = epoll_wait(ep, out, 4, 1);
	/* The writer's byte ends this one. */
	int second = epoll_wait(ep, out, 4, 10000);
	unsigned long long data = second == 1 ? out[0].data.u64 : 0;
	/* One-shot: still readable, but not reported again until re-armed. */
	int third = epoll_wait(ep, out, 4, 0);
	ev.events = EPOLLIN;
	epoll_ctl(ep, EPOLL_CTL_MOD, pipefd[0], &ev);
	int fourth = epoll_wait(ep, out, 4, 0);
	pthread_join(t, NULL);
	struct pollfd p = {.fd = pipefd[1], .events = POLLIN};
	int polled = poll(&p, 1, 2);
	printf("epoll: eexist=%d timeout=%d woken=%d data=%llx oneshot=%d rearmed=%d poll=%d\n", dup_add == EEXIST,
	       first, second, data, third, fourth, polled);
	return 0;
}

static int arm(int fd, long first_ns, long interval_ns)
{
	struct itimerspec its = {{0, interval_ns}, {0, first_ns}};
	return timerfd_settime(fd, 0, &its, NULL);
}

static void *timer_waiter(void *arg)
{
	int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	arm(fd, 3 * 1000 * 1000, 0);
	struct epoll_event out;
	long n = epoll_wait(ep, &out, 1, -1); /* no other thread will act: the timer ends it */
	*(long *)arg = n == 1 && out.data.u64 == 7;
	return NULL;
}

static int timers(void)
{
	int fd = timerfd_create(CLOCK_MONOTONIC, 0);
	if (fd < 0 || timerfd_create(12345, 0) != -1 || errno != EINVAL)
		return 1;
	arm(fd, 1000 * 1000, 2 * 1000 * 1000);
	struct itimerspec cur;
	timerfd_gettime(fd, &cur);
	unsigned long long ticks = 0;
	long r = read(fd, &ticks, sizeof ticks); /* blocks ~1 ms */
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN}, out;
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	int woke = epoll_wait(ep, &out, 1, -1); /* alone: sleeps until the next expiry */
	struct pollfd p = {.fd = fd, .events = POLLIN};
	unsigned long long more = 0;
	if (read(fd, &more, sizeof more) != 8)
		return 1;
	int polled = poll(&p, 1, -1);
	arm(fd, 0, 0); /* disarm */
	int nb = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	long again = read(nb, &more, sizeof more);
	int eagain = again == -1 && errno == EAGAIN;
	long threaded = 0;
	pthread_t t;
	pthread_create(&t, NULL, timer_waiter, &threaded);
	pthread_join(t, NULL);
	printf("timerfd: interval=%ldms read=%ld ticks>=1:%d epoll=%d poll=%d eagain=%d threaded=%ld\n",
	       cur.it_interval.tv_nsec / 1000000, r, ticks >= 1, woke, polled, eagain, threaded);
	return 0;
}

static int sv[2];

static void *pinger(void *arg)
{
	(void)arg;
	struct timespec ts = {0, 1000 * 1000};
	nanosleep(&ts, NULL);
	send(sv[1], "ping", 4, MSG_NOSIGNAL);
	char buf[8] = {0};
	long n = recv(sv[1], buf, sizeof buf, 0);
	return (void *)(n == 4 && !memcmp(buf, "pong", 4) ? 1L : 0L);
}

static int sockets(void)
{
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return 1;
	char buf[8] = {0};
	int dontwait = recv(sv[0], buf, sizeof buf, MSG_DONTWAIT) == -1 && errno == EAGAIN;
	pthread_t t;
	pthread_create(&t, NULL, pinger, NULL);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = sv[0]}, out;
	epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev);
	int ready = epoll_wait(ep, &out, 1, 10000);
	struct iovec iov = {buf, sizeof buf};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	long got = recvmsg(sv[0], &msg, 0);
	write(sv[0], "pong", 4);
	void *ponged;
	pthread_join(t, &ponged);
	struct stat st;
	fstat(sv[0], &st);
	close(sv[1]);
	long eof = read(sv[0], buf, sizeof buf);
	long epipe = send(sv[0], "x", 1, MSG_NOSIGNAL) == -1 && errno == EPIPE;
	int nonet = socket(AF_INET, SOCK_STREAM, 0) == -1;
	printf("socket: dontwait=%d ready=%d got=%ld:%.4s ponged=%ld sock=%d eof=%ld epipe=%ld nonet=%d\n", dontwait, ready,
	       got, buf, (long)ponged, S_ISSOCK(st.st_mode), eof, epipe, nonet);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "pool";
	setvbuf(stdout, NULL, _IONBF, 0);
	if (!strcmp(mode, "pool"))
		return pool();
	if (!strcmp(mode, "preempt"))
		return preempt();
	if (!strcmp(mode, "deadlock"))
		return deadlock();
	if (!strcmp(mode, "many"))
		return many();
	if (!strcmp(mode, "epoll"))
		return epoll();
	if (!strcmp(mode, "timerfd"))
		return timers();
	if (!strcmp(mode, "socket"))
		return sockets();
	return 2;
}
