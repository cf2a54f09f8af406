/* hello — the smallest tenant: answers every request with "Hello World!" (ephemeral). */
#include "tenantvm.h"

int main(void)
{
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		respond_text(200, "text/plain", "Hello World!");
	}
}
