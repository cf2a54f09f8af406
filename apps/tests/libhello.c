/* libhello — a tenant that uses the request API through libtenantvm (not the inline header):
 * answers "libtenantvm <abi version>: <method> <path>?<query> x-name=<header or -> shared=<yes|no>"
 * with status 200, or 201 when the X-Status header says "201".  Built twice: against
 * libtenantvm.so (dynamically linked, build/libhello.dyn) and libtenantvm.a (build/libhello.static). */
#define TVM_USE_LIBRARY
#include <stdio.h>
#include <string.h>
#include "tenantvm.h"

int main(void)
{
	static char body[4096];
	const struct tvm_request *req = tvm_wait_for_request();
	for (;;) {
		const struct tvm_header *name = tvm_header(req, "X-Name");
		const struct tvm_header *status = tvm_header(req, "x-status");
		int n = snprintf(body, sizeof body, "libtenantvm %u: %s %s?%s x-name=%s", tvm_abi_version(), req->method,
				 req->path, req->query, name ? name->value : "-");
		int code = status && strcmp(status->value, "201") == 0 ? 201 : 200;
		struct tvm_header h[2] = { { "content-type", 12, "text/plain", 10 }, { "x-lib", 5, "1", 1 } };
		req = tvm_respond_and_wait(code, h, 2, body, (size_t)n);
	}
}
