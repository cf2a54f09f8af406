// tenantvm for Deno: serve(handler) over libtenantvm.so, with Deno.dlopen (no native addon).
//
//   import { serve } from "/opt/tenantvm/deno/tenantvm.ts";
//   serve((req: Request) => new Response("Hello World!", { headers: { "content-type": "text/plain" } }));
//
// The handler takes a web-standard Request and returns (or resolves to) a Response, as
// Deno.serve's does.  The request's URL is http://<Host header, else localhost><path>?<query>.
// A throw answers 500 (stack on stderr; a KvError for a store that is down or too slow: 503).
// Run with --allow-ffi (or --allow-all).
//
// Randomness: what was seeded before the snapshot would repeat in every request.  So each
// request gets a Math.random seeded from its own entropy, and crypto.getRandomValues and
// crypto.randomUUID read the kernel's getrandom (fresh for every request) instead of the
// generator Deno seeded at start-up.  What is left is in docs/guest-abi.md.
//
// The tenant's key-value store (docs/guest-abi.md, "Key-value storage"), synchronous (one VM exit
// each); keys and values are strings (UTF-8) or Uint8Arrays, the same shape as the Node binding's:
//
//   kv.get(key)                     the value as a Uint8Array, or null if the key is not set
//   kv.getString(key)               the same, decoded as UTF-8
//   kv.set(key, value, { ttlMs })   ttlMs > 0: the key expires after it (default: never)
//   kv.incr(key, delta = 1)         adds delta atomically; the new value (a number, or a bigint
//                                   beyond Number.MAX_SAFE_INTEGER or when delta is a bigint)
//   kv.delete(key)                  true if the key existed
//
// A failed call throws a KvError (an Error with code "EIO", "E2BIG"..., errno, syscall, and
// unavailable: true for EIO/ETIMEDOUT, the store down or too slow).  One left unhandled by a
// handler answers 503 instead of 500.
//
// The library: $TENANTVM_LIB, else ../lib/libtenantvm.so next to this file (the SDK's layout).

/** The libtenantvm ABI this module speaks (tvm_abi_version() must return it). */
export const ABI_VERSION = 1;

const here = new URL(".", import.meta.url).pathname;
const libPath = Deno.env.get("TENANTVM_LIB") ?? `${here}../lib/libtenantvm.so`;

const lib = Deno.dlopen(libPath, {
  tvm_abi_version: { parameters: [], result: "u32" },
  tvm_wait_for_request: { parameters: [], result: "pointer" },
  tvm_respond_and_wait: { parameters: ["i32", "buffer", "usize", "buffer", "usize"], result: "pointer" },
  tvm_kv_get: { parameters: ["buffer", "usize", "buffer", "usize"], result: "isize" },
  tvm_kv_set: { parameters: ["buffer", "usize", "buffer", "usize", "u64"], result: "isize" },
  tvm_kv_incr: { parameters: ["buffer", "usize", "i64", "buffer"], result: "isize" },
  tvm_kv_delete: { parameters: ["buffer", "usize"], result: "isize" },
} as const);

if (lib.symbols.tvm_abi_version() !== ABI_VERSION) {
  throw new Error(`libtenantvm ABI ${lib.symbols.tvm_abi_version()}, tenantvm.ts speaks ${ABI_VERSION}`);
}

// getrandom(2) from the C library: the guest kernel answers it from entropy the host refills
// for every request.
const libc = Deno.dlopen("libc.so.6", {
  getrandom: { parameters: ["buffer", "usize", "u32"], result: "isize" },
} as const);

function fillRandom<T extends ArrayBufferView | null>(view: T): T {
  if (view === null) return view;
  if (view.byteLength > 65536) {
    throw new DOMException("getRandomValues: more than 65536 bytes", "QuotaExceededError");
  }
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let done = 0;
  while (done < bytes.length) {
    const n = Number(libc.symbols.getrandom(bytes.subarray(done), BigInt(bytes.length - done), 0));
    if (n <= 0) throw new Error("getrandom failed");
    done += n;
  }
  return view;
}

Object.defineProperty(crypto, "getRandomValues", { value: fillRandom, writable: true, configurable: true });
Object.defineProperty(crypto, "randomUUID", {
  value: (): `${string}-${string}-${string}-${string}-${string}` => {
    const b = fillRandom(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  },
  writable: true,
  configurable: true,
});

// sfc32: a small, fast generator for Math.random, seeded per request.
function seeded(random: DataView): () => number {
  let a = random.getUint32(0, true), b = random.getUint32(4, true);
  let c = random.getUint32(8, true), d = random.getUint32(12, true);
  return () => {
    a |= 0;
    b |= 0;
    c |= 0;
    d |= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function bytes(p: Deno.PointerValue, len: bigint): Uint8Array<ArrayBuffer> {
  if (p === null || len === 0n) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, Number(len)).slice(0));
}

function text(p: Deno.PointerValue, len: bigint): string {
  return decoder.decode(bytes(p, len));
}

const ERRNO_CODES: Record<number, string> = {
  2: "ENOENT", 5: "EIO", 7: "E2BIG", 14: "EFAULT", 22: "EINVAL", 36: "ENAMETOOLONG", 38: "ENOSYS",
  74: "EBADMSG", 75: "EOVERFLOW", 110: "ETIMEDOUT", 122: "EDQUOT",
};
const ERRNO_TEXT: Record<string, string> = {
  ENOENT: "no such key", EIO: "the store is unavailable", E2BIG: "value too long", EFAULT: "bad address",
  EINVAL: "empty key", ENAMETOOLONG: "key too long", ENOSYS: "no key-value store", EBADMSG: "not an integer",
  EOVERFLOW: "out of the 64-bit range", ETIMEDOUT: "the store is too slow", EDQUOT: "too many calls in this request",
};

/** A key-value call that failed: its errno's name and number, and the call. */
export class KvError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  /** The store is down or too slow (EIO, ETIMEDOUT): answer 503. */
  readonly unavailable: boolean;

  constructor(syscall: string, errno: number) {
    const code = ERRNO_CODES[errno] ?? `E${errno}`;
    super(`${syscall}: ${ERRNO_TEXT[code] ?? "failed"} (${code})`);
    this.name = "KvError";
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.unavailable = errno === 5 || errno === 110;
  }
}

/** What a key or a value may be: a string (UTF-8) or bytes. */
export type KvBytes = string | Uint8Array;

function kvBytes(v: KvBytes, what: string): Uint8Array {
  if (typeof v === "string") return encoder.encode(v);
  if (v instanceof Uint8Array) return v;
  throw new TypeError(`tenantvm: the ${what} must be a string or a Uint8Array`);
}

function checked(syscall: string, result: number | bigint): number {
  const r = Number(result);
  if (r < 0) throw new KvError(syscall, -r);
  return r;
}

const ENOENT = 2;
// A value up to this size is read in one call; a longer one in a second, into a buffer of its size.
const getBuffer = new Uint8Array(new ArrayBuffer(4096));
const incrResult = new BigInt64Array(1);
const incrResultBytes = new Uint8Array(incrResult.buffer);

/** The tenant's key-value store (docs/guest-abi.md, "Key-value storage"). */
export const kv = {
  /** The value of `key`, or null if it is not set (or expired). */
  get(key: KvBytes): Uint8Array<ArrayBuffer> | null {
    const k = kvBytes(key, "key");
    let buf = getBuffer;
    for (;;) {
      const r = Number(lib.symbols.tvm_kv_get(k, BigInt(k.length), buf, BigInt(buf.length)));
      if (r === -ENOENT) return null;
      const len = checked("kv_get", r);
      // Longer than the buffer: again into one of its size (another instance may change it in
      // between: until it fits).
      if (len <= buf.length) return buf.slice(0, len);
      buf = new Uint8Array(len);
    }
  },
  /** The value of `key` decoded as UTF-8, or null. */
  getString(key: KvBytes): string | null {
    const v = kv.get(key);
    return v === null ? null : decoder.decode(v);
  },
  /** Sets `key` to `value`; `ttlMs` > 0 makes it expire after that many milliseconds. */
  set(key: KvBytes, value: KvBytes, { ttlMs = 0 }: { ttlMs?: number } = {}): void {
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 0) {
      throw new RangeError("tenantvm: ttlMs must be 0 or positive milliseconds");
    }
    const k = kvBytes(key, "key"), v = kvBytes(value, "value");
    checked("kv_set", lib.symbols.tvm_kv_set(k, BigInt(k.length), v, BigInt(v.length), BigInt(ttlMs)));
  },
  /** Adds `delta` to the integer value of `key` (missing: 0), atomically; the new value. */
  incr(key: KvBytes, delta: number | bigint = 1): number | bigint {
    const big = typeof delta === "bigint";
    if (!big && !Number.isSafeInteger(delta)) throw new RangeError("tenantvm: delta must be an integer");
    const d = BigInt(delta);
    if (d < -(1n << 63n) || d >= 1n << 63n) throw new RangeError("tenantvm: delta must be in the signed 64-bit range");
    const k = kvBytes(key, "key");
    checked("kv_incr", lib.symbols.tvm_kv_incr(k, BigInt(k.length), d, incrResultBytes));
    const r = incrResult[0];
    const small = r >= BigInt(Number.MIN_SAFE_INTEGER) && r <= BigInt(Number.MAX_SAFE_INTEGER);
    return big || !small ? r : Number(r);
  },
  /** Deletes `key`: true if it existed. */
  delete(key: KvBytes): boolean {
    const k = kvBytes(key, "key");
    return checked("kv_delete", lib.symbols.tvm_kv_delete(k, BigInt(k.length))) === 1;
  },
};

// struct tvm_request (apps/sdk/tenantvm.h): offsets of its fields.
const R = { count: 4, method: 8, path: 24, query: 40, headers: 56, body: 64, random: 80 } as const;

function toRequest(raw: NonNullable<Deno.PointerValue>): { request: Request; random: DataView } {
  const v = new Deno.UnsafePointerView(raw);
  const field = (off: number) => text(v.getPointer(off), v.getBigUint64(off + 8));
  const method = field(R.method);
  const path = field(R.path);
  const query = field(R.query);
  const headers = new Headers();
  const count = v.getUint32(R.count);
  const table = v.getPointer(R.headers);
  if (table !== null) {
    const h = new Deno.UnsafePointerView(table);
    for (let i = 0; i < count; i++) {
      const at = 32 * i;
      headers.append(text(h.getPointer(at), h.getBigUint64(at + 8)), text(h.getPointer(at + 16), h.getBigUint64(at + 24)));
    }
  }
  const body = bytes(v.getPointer(R.body), v.getBigUint64(R.body + 8));
  const host = headers.get("host") ?? "localhost";
  const url = `http://${host}${path}${query ? `?${query}` : ""}`;
  const hasBody = method !== "GET" && method !== "HEAD";
  const request = new Request(url, { method, headers, body: hasBody ? body : null });
  const random = new DataView(Deno.UnsafePointerView.getArrayBuffer(raw, 32, R.random).slice(0));
  return { request, random };
}

/** A response in the form respond_and_wait takes: the header table points into `strings`. */
interface Encoded {
  status: number;
  table: BigUint64Array;
  count: number;
  strings: Uint8Array;
  body: Uint8Array;
}

async function encode(res: Response): Promise<Encoded> {
  const pairs = [...res.headers].map(([n, v]) => [encoder.encode(n), encoder.encode(v)]);
  const size = pairs.reduce((s, [n, v]) => s + n.length + v.length, 0);
  const strings = new Uint8Array(Math.max(size, 1));
  const table = new BigUint64Array(Math.max(4 * pairs.length, 4));
  const base = Deno.UnsafePointer.value(Deno.UnsafePointer.of(strings));
  let at = 0;
  pairs.forEach(([n, v], i) => {
    strings.set(n, at);
    table.set([BigInt(base) + BigInt(at), BigInt(n.length)], 4 * i);
    at += n.length;
    strings.set(v, at);
    table.set([BigInt(base) + BigInt(at), BigInt(v.length)], 4 * i + 2);
    at += v.length;
  });
  const body = new Uint8Array(await res.arrayBuffer());
  return { status: res.status, table, count: pairs.length, strings, body };
}

/** What a handler is: Deno.serve's, without the connection info. */
export type Handler = (request: Request) => Response | Promise<Response>;

async function answer(handler: Handler, raw: NonNullable<Deno.PointerValue>): Promise<Encoded> {
  try {
    const { request, random } = toRequest(raw);
    Math.random = seeded(random);
    return await encode(await handler(request));
  } catch (e) {
    console.error(e instanceof Error ? e.stack : e);
    if (e instanceof KvError && e.unavailable) {
      return encode(new Response("Service Unavailable\n", { status: 503, headers: { "content-type": "text/plain" } }));
    }
    return encode(new Response("Internal Server Error", { status: 500, headers: { "content-type": "text/plain" } }));
  }
}

/** Serves every request with `handler`; never returns. */
export async function serve(handler: Handler): Promise<never> {
  let raw = lib.symbols.tvm_wait_for_request();
  for (;;) {
    if (raw === null) throw new Error("tvm_wait_for_request returned NULL");
    const r = await answer(handler, raw);
    raw = lib.symbols.tvm_respond_and_wait(r.status, r.table, BigInt(r.count), r.body, BigInt(r.body.length));
    // The table points into r.strings: keep it alive until the call returned.
    r.strings.fill(0, 0, 0);
  }
}
