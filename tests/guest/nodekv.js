// A test tenant for the Node binding's key-value calls (tests/test_lang_node.py); the same
// paths as luakv.lua (tests/kvstores.py check_kv_binding):
//   /incr /set?TTL /get /delete, /error?K ("code errno unavailable syscall message"), /raise
"use strict";
const { serve, kv, KvError } = require("/opt/tenantvm/node/tenantvm.js");

const failing = {
  badincr: () => { kv.set("v", "not a number"); kv.incr("v"); },
  longkey: () => kv.get("k".repeat(513)),
  bigvalue: () => kv.set("v", Buffer.alloc(65537)),
  ops: () => { for (let i = 0; i < 100; i++) kv.get("n"); },
};

serve((req) => {
  let body;
  switch (req.path) {
    case "/incr": body = String(kv.incr("n")); break;
    case "/set": kv.set("v", req.body, { ttlMs: Number(req.query) || 0 }); body = "ok"; break;
    case "/get": body = kv.get("v") || "<nil>"; break;
    case "/delete": body = String(kv.delete("v")); break;
    case "/error":
      try {
        failing[req.query]();
        body = "no error";
      } catch (e) {
        body = e instanceof KvError
          ? [e.code, e.errno, e.unavailable, e.syscall, e.message].join(" ")
          : `other: ${e}`;
      }
      break;
    case "/raise": body = String(kv.incr("n", 10n)); break;
    default: return { status: 404, body: "" };
  }
  return { status: 200, headers: { "content-type": "application/octet-stream" }, body };
});
