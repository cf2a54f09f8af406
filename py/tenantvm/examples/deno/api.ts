// deno-api.localhost: a small JSON API in TypeScript, served by an unmodified deno through the
// SDK's serve (sdk/deno).  Every request starts from the snapshot: the catalogue below is
// built once, before it; nothing a request changes is seen by the next.
//
//   GET  /items            the catalogue
//   GET  /items/<id>       one item, or 404
//   POST /quote            {"items": [{"id": "tea", "qty": 2}, ...]} -> the total, or 400
//   GET  /id               a fresh random id (crypto.randomUUID)
import { serve } from "/opt/tenantvm/deno/tenantvm.ts";

interface Item {
  id: string;
  name: string;
  cents: number;
}

const catalogue: Map<string, Item> = new Map(
  [
    { id: "tea", name: "Green tea", cents: 450 },
    { id: "cake", name: "Lemon cake", cents: 320 },
    { id: "soup", name: "Tomato soup", cents: 610 },
  ].map((i) => [i.id, i]),
);

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

async function quote(req: Request): Promise<Response> {
  let order: unknown;
  try {
    order = await req.json();
  } catch {
    return json({ error: "the body is not JSON" }, 400);
  }
  const lines = (order as { items?: unknown }).items;
  if (!Array.isArray(lines) || lines.length === 0) {
    return json({ error: "items: a non-empty list of {id, qty}" }, 400);
  }
  let total = 0;
  for (const line of lines) {
    const item = catalogue.get(String(line?.id));
    const qty = Number(line?.qty);
    if (!item || !Number.isInteger(qty) || qty < 1 || qty > 1000) {
      return json({ error: `bad line ${JSON.stringify(line)}` }, 400);
    }
    total += item.cents * qty;
  }
  return json({ total_cents: total, lines: lines.length });
}

serve(async (req) => {
  const { pathname } = new URL(req.url);
  if (req.method === "GET" && pathname === "/items") return json([...catalogue.values()]);
  if (req.method === "GET" && pathname.startsWith("/items/")) {
    const item = catalogue.get(decodeURIComponent(pathname.slice(7)));
    return item ? json(item) : json({ error: "no such item" }, 404);
  }
  if (req.method === "POST" && pathname === "/quote") return await quote(req);
  if (req.method === "GET" && pathname === "/id") return json({ id: crypto.randomUUID() });
  return json({ error: "not found" }, 404);
});
