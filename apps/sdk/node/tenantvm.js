// tenantvm for Node.js: serve(handler) over the tenantvm.node addon (next to this file).
//
//   const { serve } = require("/opt/tenantvm/node/tenantvm.js");
//   serve((req) => ({ status: 200, headers: { "content-type": "text/plain" }, body: "Hello World!" }));
//
// req: { method, url (path and query), path, query, headers (lower-case names -> value, repeats
// joined with ", " as in Node's http), rawHeaders ([name, value, ...]), body (Buffer), random }.
// The handler returns (or resolves to) { status, headers (object or [[name, value], ...]),
// body (string or Buffer) }.  A throw answers 500 (stack on stderr).  Every request gets a
// Math.random seeded from its own entropy (V8's generator is in the snapshot and would repeat),
// and OpenSSL (crypto) reseeded with it.
//
// The tenant's key-value store (docs/guest-abi.md, "Key-value storage"), synchronous (one VM exit
// each); keys and values are strings (UTF-8) or Buffers:
//
//   kv.get(key)                     the value as a Buffer, or null if the key is not set
//   kv.getString(key)               the same, decoded as UTF-8
//   kv.set(key, value, { ttlMs })   ttlMs > 0: the key expires after it (default: never)
//   kv.incr(key, delta = 1)         adds delta atomically; the new value (a Number, or a BigInt
//                                   beyond Number.MAX_SAFE_INTEGER or when delta is a BigInt)
//   kv.delete(key)                  true if the key existed
//
// A failed call throws a KvError (an Error with code "EIO", "E2BIG"..., errno, syscall, and
// unavailable: true for EIO/ETIMEDOUT, the store down or too slow).  One left unhandled by a
// handler answers 503 instead of 500.
"use strict";
const crypto = require("crypto");
const addon = require("./tenantvm.node");

// randomUUID draws from a cache of random bytes filled before the snapshot: it would repeat its
// sequence in every request.  The addon reseeds OpenSSL per request; this skips the cache.
const randomUUID = crypto.randomUUID;
crypto.randomUUID = (options) => randomUUID({ ...options, disableEntropyCache: true });

const ABI_VERSION = 1;
if (addon.abiVersion() !== ABI_VERSION) {
  throw new Error(`libtenantvm ABI ${addon.abiVersion()}, tenantvm.js speaks ${ABI_VERSION}`);
}

// sfc32: a small, fast generator for Math.random, seeded per request.
function seeded(random) {
  let a = random.readUInt32LE(0), b = random.readUInt32LE(4), c = random.readUInt32LE(8), d = random.readUInt32LE(12);
  return function () {
    a |= 0; b |= 0; c |= 0; d |= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}

const ERRNO_CODES = {
  2: "ENOENT", 5: "EIO", 7: "E2BIG", 14: "EFAULT", 22: "EINVAL", 36: "ENAMETOOLONG", 38: "ENOSYS",
  74: "EBADMSG", 75: "EOVERFLOW", 110: "ETIMEDOUT", 122: "EDQUOT",
};
const ERRNO_TEXT = {
  ENOENT: "no such key", EIO: "the store is unavailable", E2BIG: "value too long", EFAULT: "bad address",
  EINVAL: "empty key", ENAMETOOLONG: "key too long", ENOSYS: "no key-value store", EBADMSG: "not an integer",
  EOVERFLOW: "out of the 64-bit range", ETIMEDOUT: "the store is too slow", EDQUOT: "too many calls in this request",
};

// A key-value call that failed.
class KvError extends Error {
  constructor(syscall, errno) {
    const code = ERRNO_CODES[errno] || `E${errno}`;
    super(`${syscall}: ${ERRNO_TEXT[code] || "failed"} (${code})`);
    this.name = "KvError";
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.unavailable = errno === 5 || errno === 110;
  }
}

function bytes(v, what) {
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === "string") return Buffer.from(v, "utf8");
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`tenantvm: the ${what} must be a string or a Buffer`);
}

function check(syscall, result) {
  if (typeof result === "number" && result < 0) throw new KvError(syscall, -result);
  return result;
}

const kv = {
  get(key) {
    const r = addon.kvGet(bytes(key, "key"));
    if (r === -2) return null;
    return check("kv_get", r);
  },
  getString(key) {
    const r = kv.get(key);
    return r === null ? null : r.toString("utf8");
  },
  set(key, value, { ttlMs = 0 } = {}) {
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 0) throw new RangeError("tenantvm: ttlMs must be 0 or positive milliseconds");
    check("kv_set", addon.kvSet(bytes(key, "key"), bytes(value, "value"), ttlMs));
  },
  incr(key, delta = 1) {
    const big = typeof delta === "bigint";
    if (!big && !Number.isSafeInteger(delta)) throw new RangeError("tenantvm: delta must be an integer");
    const r = check("kv_incr", addon.kvIncr(bytes(key, "key"), BigInt(delta)));
    const small = r >= BigInt(Number.MIN_SAFE_INTEGER) && r <= BigInt(Number.MAX_SAFE_INTEGER);
    return big || !small ? r : Number(r);
  },
  delete(key) {
    return check("kv_delete", addon.kvDelete(bytes(key, "key"))) === 1;
  },
};

function toRequest(raw) {
  const headers = {};
  const rawHeaders = [];
  for (const [name, value] of raw.headers) {
    const key = name.toLowerCase();
    headers[key] = key in headers ? `${headers[key]}, ${value}` : value;
    rawHeaders.push(name, value);
  }
  return {
    method: raw.method,
    url: raw.query ? `${raw.path}?${raw.query}` : raw.path,
    path: raw.path,
    query: raw.query,
    headers,
    rawHeaders,
    body: raw.body,
    random: raw.random,
  };
}

function flatten(headers) {
  const flat = [];
  if (Array.isArray(headers)) {
    for (const [name, value] of headers) flat.push(String(name), String(value));
  } else if (headers) {
    for (const name of Object.keys(headers)) flat.push(name, String(headers[name]));
  }
  return flat;
}

async function answer(handler, raw) {
  Math.random = seeded(raw.random);
  try {
    const res = await handler(toRequest(raw));
    return [res.status | 0, flatten(res.headers), res.body === undefined ? "" : res.body];
  } catch (e) {
    process.stderr.write(`${(e && e.stack) || e}\n`);
    if (e instanceof KvError && e.unavailable) {
      return [503, ["content-type", "text/plain"], "Service Unavailable\n"];
    }
    return [500, ["content-type", "text/plain"], "Internal Server Error"];
  }
}

// Serves every request; never returns.
async function serve(handler) {
  let raw = addon.wait();
  for (;;) {
    const [status, headers, body] = await answer(handler, raw);
    raw = addon.respondAndWait(status, headers, body);
  }
}

module.exports = { serve, kv, KvError, ABI_VERSION, addon };
