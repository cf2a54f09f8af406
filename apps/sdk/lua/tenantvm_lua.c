/*
 * tenantvm for Lua 5.4: a C module (tenantvm.so, `require "tenantvm"`) over libtenantvm, for
 * Debian's lua5.4 running inside a tenantvm VM.
 *
 *     local tenantvm = require "tenantvm"
 *     tenantvm.serve(function(req)
 *         return 200, { ["content-type"] = "text/plain" }, "Hello World!"
 *     end)
 *
 * A request is a table: method, path, query, body, random (32 bytes of fresh entropy), headers
 * (an array of { name, value } in order) and header(name) (the first value, case-insensitive).
 * Response headers are a table name -> value, or an array of { name, value }.
 *
 *   tenantvm.serve(handler)          serves every request; never returns.  An error in the
 *                                    handler answers 500 (traceback on stderr); out of memory
 *                                    ends the program (the host answers 502, out_of_memory).
 *   tenantvm.wait()                  the next request (the first call is the snapshot)
 *   tenantvm.respond(status, headers, body)
 *   tenantvm.abi_version()           libtenantvm's ABI version
 *
 * The tenant's key-value store (docs/guest-abi.md, "Key-value storage"); keys and values are
 * Lua strings (any bytes):
 *
 *   tenantvm.kv_get(key)             the value, or nil if the key is not set
 *   tenantvm.kv_set(key, value [, ttl_ms])   ttl_ms > 0: the key expires after it
 *   tenantvm.kv_incr(key [, delta])  adds delta (default 1) atomically; the new integer
 *   tenantvm.kv_delete(key)          true if the key existed
 *
 * A failed call raises an error object (a table with __tostring): { errno = 5, code = "EIO",
 * call = "kv_incr", message = "kv_incr: Input/output error", unavailable = true }.
 * `unavailable` (EIO, ETIMEDOUT: the store is down or too slow) left unhandled in a serve()
 * handler answers 503 instead of 500; tenantvm.is_kv_error(e) says whether e is one.
 *
 * Before the first request the module runs a full collection and switches the collector to
 * generational mode: a request's collections then walk only what it allocated, not (and do not
 * write to) the whole heap of the snapshot.  Every request reseeds math.random from the
 * request's entropy: a generator seeded at start-up would repeat its sequence in every request.
 */
#define TVM_USE_LIBRARY
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "tenantvm.h"

#define MAX_HEADERS 1024
/* The registry key of the metatable of KV error objects. */
#define KV_ERROR "tenantvm.KvError"

static int header_lookup(lua_State *L)
{
	/* req:header(name): upvalue-free, the request table is argument 1. */
	luaL_checktype(L, 1, LUA_TTABLE);
	size_t n;
	const char *name = luaL_checklstring(L, 2, &n);
	lua_getfield(L, 1, "headers");
	lua_Integer count = luaL_len(L, -1);
	for (lua_Integer i = 1; i <= count; i++) {
		lua_rawgeti(L, -1, i);
		lua_rawgeti(L, -1, 1);
		size_t hn;
		const char *h = lua_tolstring(L, -1, &hn);
		int same = h && hn == n;
		for (size_t j = 0; same && j < n; j++) {
			char a = h[j], b = name[j];
			a = (char)(a >= 'A' && a <= 'Z' ? a + 32 : a);
			b = (char)(b >= 'A' && b <= 'Z' ? b + 32 : b);
			same = a == b;
		}
		lua_pop(L, 1);
		if (same) {
			lua_rawgeti(L, -1, 2);
			return 1;
		}
		lua_pop(L, 1);
	}
	lua_pushnil(L);
	return 1;
}

static void reseed(lua_State *L, const struct tvm_request *req)
{
	lua_Integer a, b;
	memcpy(&a, req->random, sizeof a);
	memcpy(&b, req->random + sizeof a, sizeof b);
	if (lua_getglobal(L, "math") == LUA_TTABLE && lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION) {
		lua_pushinteger(L, a);
		lua_pushinteger(L, b);
		lua_call(L, 2, 0);
		lua_pop(L, 1);
	} else {
		lua_pop(L, 2);
	}
}

/* Pushes the request as a table. */
static void push_request(lua_State *L, const struct tvm_request *req)
{
	lua_createtable(L, 0, 8);
	lua_pushlstring(L, req->method, req->method_len);
	lua_setfield(L, -2, "method");
	lua_pushlstring(L, req->path, req->path_len);
	lua_setfield(L, -2, "path");
	lua_pushlstring(L, req->query, req->query_len);
	lua_setfield(L, -2, "query");
	lua_pushlstring(L, req->body, req->body_len);
	lua_setfield(L, -2, "body");
	lua_pushlstring(L, (const char *)req->random, sizeof req->random);
	lua_setfield(L, -2, "random");
	lua_createtable(L, (int)req->header_count, 0);
	for (uint32_t i = 0; i < req->header_count; i++) {
		const struct tvm_header *h = &req->headers[i];
		lua_createtable(L, 2, 0);
		lua_pushlstring(L, h->name, h->name_len);
		lua_rawseti(L, -2, 1);
		lua_pushlstring(L, h->value, h->value_len);
		lua_rawseti(L, -2, 2);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, "headers");
	lua_pushcfunction(L, header_lookup);
	lua_setfield(L, -2, "header");
}

/* Fills `out` from the headers table at `index` (name -> value, or { name, value } pairs); the
 * strings stay referenced by that table, so their pointers stay valid.  Returns the count. */
static size_t collect_headers(lua_State *L, int index, struct tvm_header *out)
{
	size_t n = 0;
	if (lua_isnoneornil(L, index))
		return 0;
	luaL_checktype(L, index, LUA_TTABLE);
	lua_pushnil(L);
	while (lua_next(L, index) != 0) {
		if (n == MAX_HEADERS)
			luaL_error(L, "more than %d response headers", MAX_HEADERS);
		if (lua_type(L, -2) == LUA_TSTRING) {
			/* The table keeps its key and value strings alive while the response is sent. */
			if (lua_type(L, -1) != LUA_TSTRING)
				luaL_error(L, "header '%s': the value must be a string", lua_tostring(L, -2));
			out[n].name = lua_tolstring(L, -2, &out[n].name_len);
			out[n].value = lua_tolstring(L, -1, &out[n].value_len);
		} else {
			luaL_checktype(L, -1, LUA_TTABLE);
			lua_rawgeti(L, -1, 1);
			lua_rawgeti(L, -2, 2);
			if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
				luaL_error(L, "a header pair must be { name, value } strings");
			/* The pair table keeps both strings alive. */
			out[n].name = lua_tolstring(L, -2, &out[n].name_len);
			out[n].value = lua_tolstring(L, -1, &out[n].value_len);
			lua_pop(L, 2);
		}
		n++;
		lua_pop(L, 1);
	}
	return n;
}

static struct tvm_header headers_buf[MAX_HEADERS];

static int l_abi_version(lua_State *L)
{
	lua_pushinteger(L, tvm_abi_version());
	return 1;
}

static int l_wait(lua_State *L)
{
	const struct tvm_request *req = tvm_wait_for_request();
	reseed(L, req);
	push_request(L, req);
	return 1;
}

static int l_respond(lua_State *L)
{
	int status = (int)luaL_checkinteger(L, 1);
	size_t n = collect_headers(L, 2, headers_buf);
	size_t len;
	const char *body = luaL_optlstring(L, 3, "", &len);
	tvm_respond(status, headers_buf, n, body, len);
	return 0;
}


/* --- the key-value store --------------------------------------------------------------- */

static const struct {
	int errno_;
	const char *code;
} kv_codes[] = {
	{ 2, "ENOENT" },	{ 5, "EIO" },	   { 7, "E2BIG" },     { 14, "EFAULT" },    { 22, "EINVAL" },
	{ 36, "ENAMETOOLONG" }, { 38, "ENOSYS" }, { 74, "EBADMSG" }, { 75, "EOVERFLOW" }, { 110, "ETIMEDOUT" },
	{ 122, "EDQUOT" },
};

static int kv_error_tostring(lua_State *L)
{
	lua_getfield(L, 1, "message");
	return 1;
}

/* Raises the KV error object for a call that returned -err. */
static int kv_raise(lua_State *L, const char *call, long rc)
{
	int err = (int)-rc;
	const char *code = "EUNKNOWN";
	for (size_t i = 0; i < sizeof kv_codes / sizeof kv_codes[0]; i++)
		if (kv_codes[i].errno_ == err)
			code = kv_codes[i].code;
	lua_createtable(L, 0, 5);
	lua_pushinteger(L, err);
	lua_setfield(L, -2, "errno");
	lua_pushstring(L, code);
	lua_setfield(L, -2, "code");
	lua_pushstring(L, call);
	lua_setfield(L, -2, "call");
	lua_pushfstring(L, "%s: %s (%s)", call, strerror(err), code);
	lua_setfield(L, -2, "message");
	lua_pushboolean(L, err == 5 || err == 110);
	lua_setfield(L, -2, "unavailable");
	luaL_setmetatable(L, KV_ERROR);
	return lua_error(L);
}

/* Whether the value at `index` is a KV error object; with `unavailable`, one for a store that
 * is down or too slow. */
static int is_kv_error(lua_State *L, int index, int unavailable)
{
	if (lua_type(L, index) == LUA_TTABLE && lua_getmetatable(L, index)) {
		luaL_getmetatable(L, KV_ERROR);
		int same = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (!same)
			return 0;
		if (!unavailable)
			return 1;
		lua_getfield(L, index, "unavailable");
		int yes = lua_toboolean(L, -1);
		lua_pop(L, 1);
		return yes;
	}
	return 0;
}

static int l_is_kv_error(lua_State *L)
{
	lua_pushboolean(L, is_kv_error(L, 1, 0));
	return 1;
}

static int l_kv_get(lua_State *L)
{
	size_t klen;
	const char *key = luaL_checklstring(L, 1, &klen);
	static char small[4096];
	long rc = tvm_kv_get(key, klen, small, sizeof small);
	if (rc == -2) {
		lua_pushnil(L);
		return 1;
	}
	if (rc < 0)
		return kv_raise(L, "kv_get", rc);
	if ((size_t)rc <= sizeof small) {
		lua_pushlstring(L, small, (size_t)rc);
		return 1;
	}
	/* Longer than the small buffer: again, into one of its size (it may change between the
	 * calls: another instance may set it; take what the second call says). */
	for (;;) {
		size_t want = (size_t)rc;
		luaL_Buffer b;
		char *buf = luaL_buffinitsize(L, &b, want);
		rc = tvm_kv_get(key, klen, buf, want);
		if (rc == -2) {
			lua_pushnil(L);
			return 1;
		}
		if (rc < 0)
			return kv_raise(L, "kv_get", rc);
		if ((size_t)rc <= want) {
			luaL_pushresultsize(&b, (size_t)rc);
			return 1;
		}
		lua_settop(L, 1);
	}
}

static int l_kv_set(lua_State *L)
{
	size_t klen, vlen;
	const char *key = luaL_checklstring(L, 1, &klen);
	const char *value = luaL_checklstring(L, 2, &vlen);
	lua_Integer ttl = luaL_optinteger(L, 3, 0);
	luaL_argcheck(L, ttl >= 0, 3, "the TTL must be 0 (none) or positive milliseconds");
	long rc = tvm_kv_set(key, klen, value, vlen, (uint64_t)ttl);
	if (rc < 0)
		return kv_raise(L, "kv_set", rc);
	return 0;
}

static int l_kv_incr(lua_State *L)
{
	size_t klen;
	const char *key = luaL_checklstring(L, 1, &klen);
	lua_Integer delta = luaL_optinteger(L, 2, 1);
	int64_t result = 0;
	long rc = tvm_kv_incr(key, klen, (int64_t)delta, &result);
	if (rc < 0)
		return kv_raise(L, "kv_incr", rc);
	lua_pushinteger(L, (lua_Integer)result);
	return 1;
}

static int l_kv_delete(lua_State *L)
{
	size_t klen;
	const char *key = luaL_checklstring(L, 1, &klen);
	long rc = tvm_kv_delete(key, klen);
	if (rc < 0)
		return kv_raise(L, "kv_delete", rc);
	lua_pushboolean(L, rc > 0);
	return 1;
}

static int traceback(lua_State *L)
{
	/* A store that is down stays the error object: serve() answers 503 for it. */
	if (is_kv_error(L, 1, 1))
		return 1;
	const char *msg = luaL_tolstring(L, 1, NULL);
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* Calls the handler on the request (in protected mode): leaves status, headers, body and the
 * number of headers collected into headers_buf on the stack. */
static int call_handler(lua_State *L)
{
	lua_settop(L, 2); /* handler, request */
	lua_call(L, 1, 3); /* status, headers, body at 1, 2, 3 */
	luaL_checkinteger(L, 1);
	if (!lua_isnil(L, 3))
		luaL_checktype(L, 3, LUA_TSTRING);
	lua_pushinteger(L, (lua_Integer)collect_headers(L, 2, headers_buf));
	return 4;
}

static int l_serve(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	lua_settop(L, 1);
	lua_gc(L, LUA_GCCOLLECT);
	lua_gc(L, LUA_GCGEN, 0, 0);
	const struct tvm_request *req = tvm_wait_for_request();
	for (;;) {
		lua_settop(L, 1);
		reseed(L, req);
		lua_pushcfunction(L, traceback);
		lua_pushcfunction(L, call_handler);
		lua_pushvalue(L, 1);
		push_request(L, req);
		int rc = lua_pcall(L, 2, 4, 2);
		int status;
		size_t n, len = 0;
		const char *body = "";
		if (rc == LUA_ERRMEM) {
			/* As any program out of memory: the host answers 502 out_of_memory and resets. */
			fputs("tenantvm: out of memory\n", stderr);
			_Exit(70);
		} else if (rc != LUA_OK) {
			int down = is_kv_error(L, -1, 1);
			fprintf(stderr, "%s\n", luaL_tolstring(L, -1, NULL));
			static const struct tvm_header plain = { "content-type", 12, "text/plain", 10 };
			status = down ? 503 : 500;
			headers_buf[0] = plain;
			n = 1;
			body = down ? "Service Unavailable\n" : "Internal Server Error";
			len = strlen(body);
		} else {
			/* status, headers, body, n: the strings stay referenced by the stack. */
			status = (int)lua_tointeger(L, -4);
			n = (size_t)lua_tointeger(L, -1);
			if (!lua_isnil(L, -2))
				body = lua_tolstring(L, -2, &len);
		}
		req = tvm_respond_and_wait(status, headers_buf, n, body, len);
	}
	return 0;
}

static const luaL_Reg functions[] = {
	{ "serve", l_serve },
	{ "wait", l_wait },
	{ "respond", l_respond },
	{ "abi_version", l_abi_version },
	{ "kv_get", l_kv_get },
	{ "kv_set", l_kv_set },
	{ "kv_incr", l_kv_incr },
	{ "kv_delete", l_kv_delete },
	{ "is_kv_error", l_is_kv_error },
	{ NULL, NULL },
};

int luaopen_tenantvm(lua_State *L);

__attribute__((visibility("default"))) int luaopen_tenantvm(lua_State *L)
{
	if (luaL_newmetatable(L, KV_ERROR)) {
		lua_pushcfunction(L, kv_error_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
	luaL_newlib(L, functions);
	return 1;
}
