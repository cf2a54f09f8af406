/* state — a global incremented by every request, returned in the body.  Ephemeral mode
 * answers 1, 1, 1 (each request starts from the snapshot); stateful mode 1, 2, 3.
 * Uses tvm_respond_and_wait, so a stateful request is a single VM exit. */
#include <stdio.h>
#include "tenantvm.h"

static unsigned long counter;

int main(void)
{
	static const struct tvm_header type = { "content-type", 12, "text/plain", 10 };
	const struct tvm_request *req = tvm_wait_for_request();
	for (;;) {
		(void)req;
		char body[32];
		int n = snprintf(body, sizeof body, "%lu", ++counter);
		req = tvm_respond_and_wait(200, &type, 1, body, (size_t)n);
	}
}
