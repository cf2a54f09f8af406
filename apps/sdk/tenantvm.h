/*
 * tenantvm.h — the guest SDK of tenantvm: header-only, no libc needed for the API itself.
 *
 * A tenant program initialises, then serves requests in a loop:
 *
 *     #include "tenantvm.h"
 *     int main(void) {
 *         // ... expensive set-up, done once: the VM is snapshotted at the first wait ...
 *         for (;;) {
 *             struct tvm_request req;
 *             wait_for_request(&req);
 *             respond_text(200, "text/plain", "Hello World!");
 *         }
 *     }
 *
 * The API is three raw system calls with numbers far above Linux's (docs/guest-abi.md), so any
 * language that can issue `syscall` can use it.
 *
 * The same functions (the tvm_* ones) are exported by libtenantvm.so / libtenantvm.a, a plain C
 * ABI for other languages' FFIs (docs/guest-abi.md, "libtenantvm").  Define TVM_USE_LIBRARY
 * before including this header to declare them instead of defining them inline, and link with
 * -ltenantvm.
 *
 * In ephemeral mode the VM is reset to the snapshot after every response: nothing a request
 * does is seen by the next one, and code after respond() never runs.  In stateful mode
 * respond() returns and the loop continues.
 *
 * The request lives in a read-only area at TVM_REQUEST_VA, valid until the next
 * wait_for_request(); every string is also NUL-terminated (the length does not count it).
 */
#ifndef TENANTVM_H
#define TENANTVM_H

#include <stddef.h>
#include <stdint.h>

#define TVM_SYS_WAIT_FOR_REQUEST 0x10000L
#define TVM_SYS_RESPOND 0x10001L
#define TVM_SYS_RESPOND_AND_WAIT 0x10002L
#define TVM_SYS_KV_GET 0x10100L
#define TVM_SYS_KV_SET 0x10101L
#define TVM_SYS_KV_INCR 0x10102L
#define TVM_SYS_KV_DELETE 0x10103L
#define TVM_REQUEST_VA 0x7f0000000000UL
#define TVM_SHARED_VA 0x7e0000000000UL
/* The version of libtenantvm's ABI (tvm_abi_version()); it changes only incompatibly. */
#define TVM_ABI_VERSION 1

struct tvm_header {
	const char *name;
	uint64_t name_len;
	const char *value;
	uint64_t value_len;
};

struct tvm_request {
	uint32_t version; /* 1 */
	uint32_t header_count;
	const char *method;
	uint64_t method_len;
	const char *path;
	uint64_t path_len;
	const char *query; /* without the '?' */
	uint64_t query_len;
	const struct tvm_header *headers;
	const char *body;
	uint64_t body_len;
	uint8_t random[32]; /* fresh entropy for this request */
	uint8_t reserved[16];
};

_Static_assert(sizeof(struct tvm_request) == 128, "tvm_request is 128 bytes");
_Static_assert(sizeof(struct tvm_header) == 32, "tvm_header is 32 bytes");

static inline long tvm_syscall5(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}

/*
 * TVM_API marks the functions libtenantvm exports.  Header-only use (the default) defines them
 * static inline; with TVM_USE_LIBRARY they are only declared, and come from the library (whose
 * own source defines TVM_BUILDING_LIBRARY to give them their exported definitions).
 */
#if defined(TVM_BUILDING_LIBRARY)
#define TVM_API __attribute__((visibility("default")))
#define TVM_DEFINE 1
#elif defined(TVM_USE_LIBRARY)
#define TVM_API extern
#define TVM_DEFINE 0
#else
#define TVM_API static inline
#define TVM_DEFINE 1
#endif

/* The ABI version of these functions and structures: TVM_ABI_VERSION. */
TVM_API unsigned int tvm_abi_version(void);
/* Blocks until the next request and returns it (read-only, valid until the next call). */
TVM_API const struct tvm_request *tvm_wait_for_request(void);
/* Sends the response.  Headers and body are copied out before this returns (stateful mode)
 * or the VM is reset (ephemeral mode: it never returns).  Returns 0. */
TVM_API long tvm_respond(int status, const struct tvm_header *headers, size_t header_count, const void *body,
			 size_t body_len);
/* Responds and waits for the next request in one system call, returning it.  In stateful mode
 * this makes a request cost one VM exit instead of two (respond, then wait_for_request):
 *
 *     const struct tvm_request *req = tvm_wait_for_request();
 *     for (;;) {
 *         ... handle *req ...
 *         req = tvm_respond_and_wait(200, headers, n, body, len);
 *     }
 */
TVM_API const struct tvm_request *tvm_respond_and_wait(int status, const struct tvm_header *headers,
						       size_t header_count, const void *body, size_t body_len);
/* tvm_respond with one header, Content-Type: content_type (NUL-terminated). */
TVM_API long tvm_respond_simple(int status, const char *content_type, const void *body, size_t body_len);
/* The first header named `name` (NUL-terminated, ASCII case-insensitive), or NULL. */
TVM_API const struct tvm_header *tvm_header(const struct tvm_request *req, const char *name);
/* The tenant's shared memory (shared by every instance, never reset; TVM_SHARED_VA).  It is
 * mapped only if the tenant has shared memory.  Use atomics: instances run in parallel. */
TVM_API void *tvm_shared(void);

/*
 * Key-value storage scoped to the tenant (docs/guest-abi.md, "Key-value storage"): shared by
 * all instances of the tenant on every server using the same store; the server's tenants file
 * chooses the store.  Each returns a negative errno on failure: -ENOENT (get: no such key),
 * -EIO (the store is unavailable: answer 503), -ETIMEDOUT (the store is too slow), -EINVAL
 * (empty key), -ENAMETOOLONG (key too long), -E2BIG (value too long), -EDQUOT (too many KV
 * calls in this request), -EBADMSG (incr of a value that is not an integer), -EOVERFLOW,
 * -EFAULT, -ENOSYS (the tenant has no store).
 */
/* Copies up to buf_len bytes of key's value to buf; returns the value's full length. */
TVM_API long tvm_kv_get(const void *key, size_t key_len, void *buf, size_t buf_len);
/* Sets key to value; ttl_ms > 0 makes it expire after that many milliseconds.  Returns 0. */
TVM_API long tvm_kv_set(const void *key, size_t key_len, const void *value, size_t value_len,
			uint64_t ttl_ms);
/* Adds delta to key's integer value (missing: 0), atomically; *result = the new value; 0. */
TVM_API long tvm_kv_incr(const void *key, size_t key_len, int64_t delta, int64_t *result);
/* Deletes key: 1 if it existed, 0 if not. */
TVM_API long tvm_kv_delete(const void *key, size_t key_len);

static inline size_t tvm_strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

#if TVM_DEFINE
TVM_API unsigned int tvm_abi_version(void)
{
	return TVM_ABI_VERSION;
}

TVM_API const struct tvm_request *tvm_wait_for_request(void)
{
	return (const struct tvm_request *)tvm_syscall5(TVM_SYS_WAIT_FOR_REQUEST, 0, 0, 0, 0, 0);
}

TVM_API long tvm_respond(int status, const struct tvm_header *headers, size_t header_count, const void *body,
			 size_t body_len)
{
	return tvm_syscall5(TVM_SYS_RESPOND, status, (long)headers, (long)header_count, (long)body, (long)body_len);
}

TVM_API const struct tvm_request *tvm_respond_and_wait(int status, const struct tvm_header *headers,
						       size_t header_count, const void *body, size_t body_len)
{
	return (const struct tvm_request *)tvm_syscall5(TVM_SYS_RESPOND_AND_WAIT, status, (long)headers,
							(long)header_count, (long)body, (long)body_len);
}

TVM_API long tvm_respond_simple(int status, const char *content_type, const void *body, size_t body_len)
{
	struct tvm_header h = { "content-type", 12, content_type, tvm_strlen(content_type) };
	return tvm_respond(status, &h, 1, body, body_len);
}

TVM_API const struct tvm_header *tvm_header(const struct tvm_request *req, const char *name)
{
	size_t n = tvm_strlen(name);
	for (uint32_t i = 0; i < req->header_count; i++) {
		const struct tvm_header *h = &req->headers[i];
		if (h->name_len != n)
			continue;
		size_t j = 0;
		for (; j < n; j++) {
			char a = h->name[j], b = name[j];
			if (a >= 'A' && a <= 'Z')
				a += 32;
			if (b >= 'A' && b <= 'Z')
				b += 32;
			if (a != b)
				break;
		}
		if (j == n)
			return h;
	}
	return 0;
}

TVM_API void *tvm_shared(void)
{
	return (void *)TVM_SHARED_VA;
}

TVM_API long tvm_kv_get(const void *key, size_t key_len, void *buf, size_t buf_len)
{
	return tvm_syscall5(TVM_SYS_KV_GET, (long)key, (long)key_len, (long)buf, (long)buf_len, 0);
}

TVM_API long tvm_kv_set(const void *key, size_t key_len, const void *value, size_t value_len, uint64_t ttl_ms)
{
	return tvm_syscall5(TVM_SYS_KV_SET, (long)key, (long)key_len, (long)value, (long)value_len, (long)ttl_ms);
}

TVM_API long tvm_kv_incr(const void *key, size_t key_len, int64_t delta, int64_t *result)
{
	return tvm_syscall5(TVM_SYS_KV_INCR, (long)key, (long)key_len, (long)delta, (long)result, 0);
}

TVM_API long tvm_kv_delete(const void *key, size_t key_len)
{
	return tvm_syscall5(TVM_SYS_KV_DELETE, (long)key, (long)key_len, 0, 0, 0);
}
#endif /* TVM_DEFINE */

/* The C conveniences, over the functions above. */

/* Copies the next request's descriptor into *req. */
static inline void wait_for_request(struct tvm_request *req)
{
	*req = *tvm_wait_for_request();
}

/* tvm_respond: status, headers, body. */
static inline long respond_headers(int status, const struct tvm_header *headers, size_t header_count,
				   const void *body, size_t body_len)
{
	return tvm_respond(status, headers, header_count, body, body_len);
}

/* respond(status, content_type, body, len): the common case, one Content-Type header. */
static inline long respond(int status, const char *content_type, const void *body, size_t body_len)
{
	return tvm_respond_simple(status, content_type, body, body_len);
}

/* respond_text(status, content_type, "NUL-terminated body") */
static inline long respond_text(int status, const char *content_type, const char *body)
{
	return respond(status, content_type, body, tvm_strlen(body));
}

#undef TVM_DEFINE
#endif
