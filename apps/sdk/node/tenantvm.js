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

module.exports = { serve, ABI_VERSION, addon };
