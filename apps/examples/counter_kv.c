/* counter_kv — "Hello N World!" where N counts every request served by the tenant on every
 * server sharing its key-value store (the tenants file's [server] kv: SQLite for the workers of
 * one machine, Redis/Valkey for several machines).  The shared-memory counter (counter.c) counts
 * per machine; this one counts exactly across machines, at the cost of one store round trip.
 * When the store is unavailable or too slow it answers 503: nothing was counted that the
 * client was told about. */
#include <errno.h>
#include <stdio.h>
#include "tenantvm.h"

int main(void)
{
	static const struct tvm_header type = { "content-type", 12, "text/plain", 10 };
	const struct tvm_request *req = tvm_wait_for_request();
	for (;;) {
		(void)req;
		int64_t n = 0;
		long rc = tvm_kv_incr("count", 5, 1, &n);
		char body[96];
		int len, status = 200;
		if (rc == 0) {
			len = snprintf(body, sizeof body, "Hello %lld World!", (long long)n);
		} else {
			status = (rc == -EIO || rc == -ETIMEDOUT) ? 503 : 500;
			len = snprintf(body, sizeof body, "the key-value store failed: errno %ld\n", -rc);
		}
		req = tvm_respond_and_wait(status, &type, 1, body, (size_t)len);
	}
}
