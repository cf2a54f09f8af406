// A test tenant for the Node.js binding (tests/test_lang_node.py), run by an unmodified node.
//   /echo    the request as the handler sees it, JSON, status 201, a header per request header
//   /state   the module state it found (counter, cache size, a global), then changes it
//   /random  Math.random, crypto.randomBytes, crypto.randomUUID, crypto.getRandomValues
//   /async   answers after awaiting a promise; /throw throws; /loop never ends
const crypto = require("crypto");
const { serve } = require("/opt/tenantvm/node/tenantvm.js");

let counter = 0;
const cache = new Map();
const drawnAtInit = Math.random();

serve(async (req) => {
  switch (req.path) {
    case "/echo":
      return {
        status: 201,
        headers: [["content-type", "application/json"], ...Object.entries(req.headers).map(([k, v]) => [`x-echo-${k}`, v])],
        body: JSON.stringify({ method: req.method, url: req.url, query: req.query, headers: req.headers, body: req.body.toString("latin1") }),
      };
    case "/state": {
      const seen = { counter, cache: cache.size, global: globalThis.probeGlobal ?? null };
      counter += 1;
      cache.set(req.body.toString(), true);
      globalThis.probeGlobal = req.body.toString();
      return { status: 200, headers: { "content-type": "application/json" }, body: JSON.stringify(seen) };
    }
    case "/random":
      return {
        status: 200,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          math: Math.random(),
          drawnAtInit,
          bytes: crypto.randomBytes(8).toString("hex"),
          uuid: crypto.randomUUID(),
          values: Array.from(crypto.getRandomValues(new Uint32Array(2))),
        }),
      };
    case "/async":
      await new Promise((resolve) => setImmediate(resolve));
      return { status: 200, headers: {}, body: Buffer.from("awaited") };
    case "/throw":
      throw new Error("the probe threw");
    case "/loop":
      for (;;) {}
  }
  return { status: 404, headers: {}, body: "not found" };
});
