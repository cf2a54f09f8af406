// A test tenant for the Deno binding's key-value calls (tests/test_lang_deno.py); the same
// paths as nodekv.js and luakv.lua (tests/kvstores.py check_kv_binding):
//   /incr /set?TTL /get /delete, /error?K ("code errno unavailable syscall message"), /raise
import { kv, KvError, serve } from "/opt/tenantvm/deno/tenantvm.ts";

const failing: Record<string, () => unknown> = {
  badincr: () => {
    kv.set("v", "not a number");
    kv.incr("v");
  },
  longkey: () => kv.get("k".repeat(513)),
  bigvalue: () => kv.set("v", new Uint8Array(65537)),
  ops: () => {
    for (let i = 0; i < 100; i++) kv.get("n");
  },
};

const octets = { "content-type": "application/octet-stream" };

serve(async (req) => {
  const url = new URL(req.url);
  const query = url.search.slice(1);
  let body: string | Uint8Array<ArrayBuffer>;
  switch (url.pathname) {
    case "/incr":
      body = String(kv.incr("n"));
      break;
    case "/set":
      kv.set("v", new Uint8Array(await req.arrayBuffer()), { ttlMs: Number(query) || 0 });
      body = "ok";
      break;
    case "/get":
      body = kv.get("v") ?? "<nil>";
      break;
    case "/delete":
      body = String(kv.delete("v"));
      break;
    case "/error":
      try {
        failing[query]();
        body = "no error";
      } catch (e) {
        body = e instanceof KvError
          ? [e.code, e.errno, e.unavailable, e.syscall, e.message].join(" ")
          : `other: ${e}`;
      }
      break;
    case "/raise":
      body = String(kv.incr("n", 10n));
      break;
    default:
      return new Response("", { status: 404 });
  }
  return new Response(body, { headers: octets });
});
