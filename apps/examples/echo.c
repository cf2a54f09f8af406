/* echo — sends the request back: the body byte for byte, and method, path, query and every
 * request header as response headers (x-echo-method, x-echo-path, x-echo-query,
 * x-echo-header-count, x-echo-h-<name>).  Binary-safe. */
#include <stdlib.h>
#include <string.h>
#include "tenantvm.h"

#define MAX_HEADERS 96

int main(void)
{
	static struct tvm_header out[MAX_HEADERS + 4];
	static char names[MAX_HEADERS][256];
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		size_t n = 0;
		static char count[16];
		int len = 0;
		unsigned c = req.header_count;
		do {
			count[len++] = (char)('0' + c % 10);
			c /= 10;
		} while (c);
		for (int i = 0; i < len / 2; i++) {
			char t = count[i];
			count[i] = count[len - 1 - i];
			count[len - 1 - i] = t;
		}
		out[n++] = (struct tvm_header){ "x-echo-method", 13, req.method, req.method_len };
		out[n++] = (struct tvm_header){ "x-echo-path", 11, req.path, req.path_len };
		out[n++] = (struct tvm_header){ "x-echo-query", 12, req.query, req.query_len };
		out[n++] = (struct tvm_header){ "x-echo-header-count", 19, count, (uint64_t)len };
		for (uint32_t i = 0; i < req.header_count && i < MAX_HEADERS; i++) {
			const struct tvm_header *h = &req.headers[i];
			size_t nl = h->name_len < 240 ? h->name_len : 240;
			memcpy(names[i], "x-echo-h-", 9);
			memcpy(names[i] + 9, h->name, nl);
			out[n++] = (struct tvm_header){ names[i], 9 + nl, h->value, h->value_len };
		}
		respond_headers(200, out, n, req.body, req.body_len);
	}
}
