/*
 * thread_tenant — a tenant that starts a pool of 4 worker threads during init and serves
 * each request with them (crates/vmm/tests/threads.rs).
 *
 * Every request: hands 4 jobs to the pool through a mutex and condition variable, waits for
 * them, then checks whether the thread a previous request left behind still exists
 * (tgkill(pid, 7, 0): 0 if it does, -ESRCH if not), starts one more thread that waits
 * forever, and answers "sum=S jobs=J left=E new=T".  Ephemeral: every request answers the
 * same (threads, memory and the tid counter are reset).  Stateful: the thread and the job
 * count survive.  Path /deadlock: the request waits for a job nobody will do.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "tenantvm.h"

#define WORKERS 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static int pending, finished;
static long sum, jobs;

static void *worker(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	for (;;) {
		while (pending == 0)
			pthread_cond_wait(&work, &lock);
		pending--;
		sum += jobs + 1;
		jobs++;
		finished++;
		pthread_cond_signal(&done);
	}
	return NULL;
}

static volatile long newtid;

static void *forever(void *arg)
{
	(void)arg;
	newtid = syscall(SYS_gettid);
	static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
	static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
	pthread_mutex_lock(&m);
	for (;;)
		pthread_cond_wait(&c, &m);
	return NULL;
}

int main(void)
{
	pthread_t t;
	for (int i = 0; i < WORKERS; i++)
		pthread_create(&t, NULL, worker, NULL);
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		int stuck = req.path_len == 9 && !memcmp(req.path, "/deadlock", 9);
		pthread_mutex_lock(&lock);
		sum = 0;
		finished = 0;
		pending = WORKERS;
		pthread_cond_broadcast(&work);
		while (finished < WORKERS + stuck)
			pthread_cond_wait(&done, &lock);
		pthread_mutex_unlock(&lock);
		long left = syscall(SYS_tgkill, getpid(), 7, 0) == 0 ? 0 : -1;
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setstacksize(&a, 64 * 1024);
		newtid = 0;
		pthread_create(&t, &a, forever, NULL);
		while (!newtid)
			sched_yield();
		char body[96];
		int n = snprintf(body, sizeof body, "sum=%ld jobs=%ld left=%ld new=%ld", sum, jobs, left, newtid);
		respond(200, "text/plain", body, (size_t)n);
	}
}
