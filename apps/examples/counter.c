/* counter — "Hello N World!" where N counts every request served by every instance of the
 * tenant, in every worker process: the count lives in the tenant's shared memory and is
 * incremented atomically. */
#include <stdio.h>
#include "tenantvm.h"

int main(void)
{
	unsigned long *count = tvm_shared();
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		unsigned long n = __atomic_add_fetch(count, 1, __ATOMIC_SEQ_CST);
		char body[64];
		int len = snprintf(body, sizeof body, "Hello %lu World!", n);
		respond(200, "text/plain", body, (size_t)len);
	}
}
