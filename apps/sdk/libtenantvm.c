/*
 * libtenantvm — the request API as a plain C ABI, for any language's FFI (Deno.dlopen, ctypes,
 * a Lua or Node C module, ...): libtenantvm.so and libtenantvm.a.
 *
 * The functions are the ones tenantvm.h defines inline (one source for both); the library
 * exports them under the symbol version TENANTVM_1 (libtenantvm.map).  It needs no libc: a
 * tenant linked against it (or an FFI loading it) gets exactly the system calls of the API.
 * The ABI is in docs/guest-abi.md ("libtenantvm").
 */
#define TVM_BUILDING_LIBRARY
#include "tenantvm.h"
