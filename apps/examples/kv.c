/* kv — the key-value API over HTTP, one store call per request (a playground, and what the
 * tests drive):
 *
 *   GET    /k/KEY                 200 and the value, or 404
 *   PUT    /k/KEY[?ttl_ms=N]      the body becomes the value (expiring after N ms): 204
 *   POST   /k/KEY?incr=D[&times=M]  adds D (M times, to test the per-request limit): 200 and the value
 *   DELETE /k/KEY                 200 "1" if it existed, "0" if not
 *
 * A store failure answers 503 (unavailable, too slow), anything else refused 400; the errno is
 * in the x-kv-errno header. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tenantvm.h"

static char value[1 << 17];

/* The integer after `name=` in the query, or `dflt`. */
static long long query_int(const struct tvm_request *req, const char *name, long long dflt)
{
	size_t n = strlen(name);
	const char *q = req->query;
	for (const char *p = q; p && *p;) {
		if (strncmp(p, name, n) == 0 && p[n] == '=')
			return strtoll(p + n + 1, 0, 10);
		p = strchr(p, '&');
		if (p)
			p++;
	}
	return dflt;
}

static void reply(int status, long rc, const void *body, size_t len)
{
	char err[24];
	int elen = snprintf(err, sizeof err, "%ld", rc < 0 ? -rc : 0);
	struct tvm_header h[2] = { { "content-type", 12, "application/octet-stream", 24 },
				   { "x-kv-errno", 10, err, (uint64_t)elen } };
	tvm_respond(status, h, 2, body, len);
}

static void fail(long rc)
{
	reply(rc == -EIO || rc == -ETIMEDOUT ? 503 : rc == -ENOENT ? 404 : 400, rc, "", 0);
}

int main(void)
{
	for (;;) {
		const struct tvm_request *req = tvm_wait_for_request();
		if (req->path_len < 4 || strncmp(req->path, "/k/", 3) != 0) {
			reply(404, 0, "no such path\n", 13);
			continue;
		}
		const char *key = req->path + 3;
		size_t klen = req->path_len - 3;
		const char *m = req->method;
		long rc;
		if (strcmp(m, "GET") == 0) {
			rc = tvm_kv_get(key, klen, value, sizeof value);
			if (rc < 0)
				fail(rc);
			else
				reply(200, 0, value, (size_t)rc < sizeof value ? (size_t)rc : sizeof value);
		} else if (strcmp(m, "PUT") == 0) {
			rc = tvm_kv_set(key, klen, req->body, req->body_len, (uint64_t)query_int(req, "ttl_ms", 0));
			if (rc < 0)
				fail(rc);
			else
				reply(204, 0, "", 0);
		} else if (strcmp(m, "POST") == 0) {
			long long times = query_int(req, "times", 1);
			int64_t n = 0;
			rc = 0;
			for (long long i = 0; i < times && rc == 0; i++)
				rc = tvm_kv_incr(key, klen, query_int(req, "incr", 1), &n);
			if (rc < 0) {
				fail(rc);
			} else {
				char body[32];
				int len = snprintf(body, sizeof body, "%lld", (long long)n);
				reply(200, 0, body, (size_t)len);
			}
		} else if (strcmp(m, "DELETE") == 0) {
			rc = tvm_kv_delete(key, klen);
			if (rc < 0)
				fail(rc);
			else
				reply(200, 0, rc ? "1" : "0", 1);
		} else {
			reply(405, 0, "", 0);
		}
	}
}
