// tenantvm for Deno: serve(handler) over libtenantvm.so, with Deno.dlopen (no native addon).
//
//   import { serve } from "/opt/tenantvm/deno/tenantvm.ts";
//   serve((req: Request) => new Response("Hello World!", { headers: { "content-type": "text/plain" } }));
//
// The handler takes a web-standard Request and returns (or resolves to) a Response, as
// Deno.serve's does.  The request's URL is http://<Host header, else localhost><path>?<query>.
// A throw answers 500 (stack on stderr).  Run with --allow-ffi (or --allow-all).
//
// Randomness: what was seeded before the snapshot would repeat in every request.  So each
// request gets a Math.random seeded from its own entropy, and crypto.getRandomValues and
// crypto.randomUUID read the kernel's getrandom (fresh for every request) instead of the
// generator Deno seeded at start-up.  What is left is in docs/guest-abi.md.
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
    const n = Number(libc.symbols.getrandom(bytes.subarray(done), bytes.length - done, 0));
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

function bytes(p: Deno.PointerValue, len: bigint): Uint8Array {
  if (p === null || len === 0n) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, Number(len)).slice(0));
}

function text(p: Deno.PointerValue, len: bigint): string {
  return decoder.decode(bytes(p, len));
}

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
    return encode(new Response("Internal Server Error", { status: 500, headers: { "content-type": "text/plain" } }));
  }
}

/** Serves every request with `handler`; never returns. */
export async function serve(handler: Handler): Promise<never> {
  let raw = lib.symbols.tvm_wait_for_request();
  for (;;) {
    if (raw === null) throw new Error("tvm_wait_for_request returned NULL");
    const r = await answer(handler, raw);
    raw = lib.symbols.tvm_respond_and_wait(r.status, r.table, r.count, r.body, r.body.length);
    // The table points into r.strings: keep it alive until the call returned.
    r.strings.fill(0, 0, 0);
  }
}
