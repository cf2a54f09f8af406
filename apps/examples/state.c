/* state — a global incremented by every request, returned in the body.  Ephemeral mode
 * answers 1, 1, 1 (each request starts from the snapshot); stateful mode 1, 2, 3. */
#include <stdio.h>
#include "tenantvm.h"

static unsigned long counter;

int main(void)
{
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		char body[32];
		int n = snprintf(body, sizeof body, "%lu", ++counter);
		respond(200, "text/plain", body, (size_t)n);
	}
}
