/* counter — "Hello N World!" where N counts every request served by every instance of the
 * tenant, in every worker process: the count lives in the tenant's shared memory and is
 * incremented atomically.  One VM exit per request in stateful mode (tvm_respond_and_wait). */
#include <stdio.h>
#include "tenantvm.h"

int main(void)
{
	static const struct tvm_header type = { "content-type", 12, "text/plain", 10 };
	unsigned long *count = tvm_shared();
	const struct tvm_request *req = tvm_wait_for_request();
	for (;;) {
		(void)req;
		unsigned long n = __atomic_add_fetch(count, 1, __ATOMIC_SEQ_CST);
		char body[64];
		int len = snprintf(body, sizeof body, "Hello %lu World!", n);
		req = tvm_respond_and_wait(200, &type, 1, body, (size_t)len);
	}
}
