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

static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
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
			fprintf(stderr, "%s\n", lua_tostring(L, -1));
			static const struct tvm_header plain = { "content-type", 12, "text/plain", 10 };
			status = 500;
			headers_buf[0] = plain;
			n = 1;
			body = "Internal Server Error";
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
	{ NULL, NULL },
};

int luaopen_tenantvm(lua_State *L);

__attribute__((visibility("default"))) int luaopen_tenantvm(lua_State *L)
{
	luaL_newlib(L, functions);
	return 1;
}
