// A test tenant for the Deno binding (tests/test_lang_deno.py), run by an unmodified deno.
//   /echo    the request as the handler sees it, JSON, status 201, a header per request header
//   /state   the module state it found (counter, cache size, a global), then changes it
//   /random  Math.random, crypto.getRandomValues, crypto.randomUUID, and a value drawn at init
//   /async   answers after awaiting a timer; /throw throws; /loop never ends; /oom allocates
//   /fault   dereferences a bad pointer through the FFI (a CPU fault in the runtime)
//   /grow    makes 100,000 small objects (V8's heap grows: it maps, trims and frees pages) and
//            answers a sum over them
import { serve } from "/opt/tenantvm/deno/tenantvm.ts";

let counter = 0;
const cache = new Map<string, boolean>();
const drawnAtInit = Math.random();
const g = globalThis as { probeGlobal?: string };

serve(async (req) => {
  const url = new URL(req.url);
  switch (url.pathname) {
    case "/echo": {
      const headers: Record<string, string> = {};
      req.headers.forEach((v, k) => (headers[k] = v));
      const out = new Headers({ "content-type": "application/json" });
      for (const [k, v] of Object.entries(headers)) out.append(`x-echo-${k}`, v);
      const body = JSON.stringify({ method: req.method, url: url.pathname + url.search, headers, body: await req.text() });
      return new Response(body, { status: 201, headers: out });
    }
    case "/state": {
      const seen = { counter, cache: cache.size, global: g.probeGlobal ?? null };
      const body = await req.text();
      counter += 1;
      cache.set(body, true);
      g.probeGlobal = body;
      return Response.json(seen);
    }
    case "/random":
      return Response.json({
        math: Math.random(),
        drawnAtInit,
        uuid: crypto.randomUUID(),
        values: Array.from(crypto.getRandomValues(new Uint32Array(2))),
      });
    case "/async":
      await new Promise((resolve) => setTimeout(resolve, 1));
      return new Response("awaited");
    case "/throw":
      throw new Error("the probe threw");
    case "/loop":
      for (;;) { /* never ends */ }
    case "/oom": {
      const hog: Uint8Array[] = [];
      for (;;) hog.push(new Uint8Array(16 << 20).fill(1));
    }
    case "/grow": {
      const objects = [];
      for (let i = 0; i < 100000; i++) objects.push({ i, s: "x" + i });
      return new Response(String(objects.reduce((sum, o) => sum + o.i + o.s.length, 0)));
    }
    case "/fault":
      new Deno.UnsafePointerView(Deno.UnsafePointer.create(16n)!).getUint8();
      return new Response("no fault");
  }
  return new Response("not found", { status: 404 });
});
