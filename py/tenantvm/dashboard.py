"""``GET /_tenantvm/``: the dashboard, one self-contained HTML page.

No external script, style sheet or font (the page must work on a host without Internet access
and must not leak the operator's visits): everything is inline, and the browser's own
``system-ui``/``monospace`` fonts are used.  The script polls ``/_tenantvm/stats``
(:mod:`tenantvm.stats`) every :data:`REFRESH_MS` and shows, per tenant: requests per second
and latency percentiles over the last interval (from the differences of two snapshots; the
figures since start until there are two), errors by kind, resets, pool use, version and the
answering worker's boot time.  A Content-Security-Policy forbids anything else.
"""

from __future__ import annotations

__all__ = ["CSP", "PAGE", "REFRESH_MS"]

#: How often the page polls the stats (ms).
REFRESH_MS = 1000

#: The page's Content-Security-Policy: its own inline script and style, its own origin's JSON.
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:"

PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tenantvm</title>
<style>
:root { color-scheme: light dark; --fg: #1b1f24; --muted: #667; --bg: #fff; --line: #dde;
  --bad: #c0342b; --ok: #1e7b34; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e6e6; --muted: #99a; --bg: #15171a; --line: #2c2f35; } }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: var(--fg); background: var(--bg); }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
#summary { color: var(--muted); margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .35em .6em; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: .85em; }
td.name, th.name { text-align: left; }
td.name small { color: var(--muted); display: block; }
td.num { font-family: ui-monospace, monospace; }
.bad { color: var(--bad); font-weight: 600; }
.bar { display: inline-block; height: .7em; background: var(--ok); vertical-align: middle; margin-left: .4em; }
#status.bad { color: var(--bad); }
</style>
</head>
<body>
<h1>tenantvm</h1>
<div id="summary">loading…</div>
<table>
<thead><tr>
<th class="name">tenant</th><th>req/s</th><th>requests</th><th>p50</th><th>p90</th><th>p99</th>
<th>timeouts</th><th>faults</th><th>5xx</th><th>rejected</th><th>resets</th><th>pool busy</th>
<th>version</th><th>boot</th>
</tr></thead>
<tbody id="tenants"></tbody>
</table>
<p id="status"></p>
<script>
"use strict";
const REFRESH_MS = """
    + str(REFRESH_MS)
    + """;
let previous = null;

function quantile(q, buckets) {
  // buckets: [[upper bound, cumulative count]...], the last bound "+Inf".
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === "+Inf") return lower;
      if (count === below) return bound;
      return lower + (bound - lower) * (rank - below) / (count - below);
    }
    lower = bound === "+Inf" ? lower : bound; below = count;
  }
  return lower;
}

function delta(now, before) {
  if (!before) return now;
  const old = new Map(before.map(([b, c]) => [String(b), c]));
  return now.map(([b, c]) => [b, c - (old.get(String(b)) || 0)]);
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "\u2013";
  const v = seconds * 1000;
  return v < 1 ? v.toFixed(3) + " ms" : v < 100 ? v.toFixed(1) + " ms" : v.toFixed(0) + " ms";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  td.className = cls || "num";
  return td;
}

function render(stats) {
  const body = document.getElementById("tenants");
  const rows = [];
  const dt = previous ? stats.time - previous.time : 0;
  let total = 0;
  for (const [name, t] of Object.entries(stats.tenants)) {
    const before = previous && previous.tenants[name];
    const rate = before && dt > 0 ? Math.max(0, t.requests - before.requests) / dt : null;
    total += rate || 0;
    let buckets = t.latency.buckets;
    if (before && t.latency.count > before.latency.count) buckets = delta(buckets, before.latency.buckets);
    const tr = document.createElement("tr");
    tr.dataset.tenant = name;
    const nameCell = document.createElement("td");
    nameCell.className = "name";
    nameCell.textContent = name;
    const hosts = document.createElement("small");
    hosts.textContent = t.hosts.join(", ") + " · " + t.mode;
    nameCell.appendChild(hosts);
    tr.appendChild(nameCell);
    tr.appendChild(cell(rate === null ? "\u2013" : rate.toFixed(1)));
    tr.appendChild(cell(String(t.requests)));
    for (const q of [0.5, 0.9, 0.99]) tr.appendChild(cell(ms(quantile(q, buckets))));
    const rejected = Object.values(t.rejected).reduce((a, b) => a + b, 0);
    for (const n of [t.errors.timeout, t.errors.fault, t.errors["5xx"], rejected]) {
      tr.appendChild(cell(String(n), n ? "num bad" : "num"));
    }
    tr.appendChild(cell(String(t.resets)));
    const pool = cell(t.pool.busy + " / " + t.pool.instances);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (t.pool.instances ? 3 * t.pool.busy / t.pool.instances : 0) + "em";
    pool.appendChild(bar);
    tr.appendChild(pool);
    tr.appendChild(cell("v" + t.version));
    const boot = cell(t.boot_ms === undefined ? "\u2013" : t.boot_ms.toFixed(1) + " ms");
    if (t.booted_at) boot.title = "booted " + new Date(t.booted_at * 1000).toLocaleString();
    tr.appendChild(boot);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  let reloads = Object.entries(stats.reloads).map(([k, v]) => k + " " + v).join(", ") || "none";
  if (stats.last_reload) {
    reloads += " (last: " + (stats.last_reload.ok ? "ok" : "refused") + ", " + stats.last_reload.ms.toFixed(0) + " ms)";
  }
  document.getElementById("summary").textContent =
    Object.keys(stats.tenants).length + " tenants · " + stats.workers + " worker(s) · " +
    (previous ? total.toFixed(1) + " req/s · " : "") + "reloads: " + reloads + " · " + stats.config;
  const status = document.getElementById("status");
  status.className = "";
  status.textContent = "updated " + new Date(stats.time * 1000).toLocaleTimeString() + " (worker " + stats.worker + ")";
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  previous = stats;
}

async function refresh() {
  try {
    const r = await fetch("/_tenantvm/stats", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const status = document.getElementById("status");
    status.className = "bad";
    status.textContent = "cannot read the stats: " + e.message;
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script>
</body>
</html>
"""
)
