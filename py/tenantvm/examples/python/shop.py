"""shop.localhost: a small JSON API in plain WSGI, served by tenantvm_guest (Debian's python3).

    GET  /products            -> 200 {"products": [{"id": "tea", "name": ..., "price_cents": ...}, ...]}
    GET  /products/<id>       -> 200 {"id": ..., ...} | 404
    POST /quote               {"items": [{"id": "tea", "qty": 2}, ...], "coupon": "WELCOME10"?}
                              -> 200 {"lines": [...], "subtotal_cents", "discount_cents", "tax_cents",
                                      "total_cents"} | 400 {"error": ...}
    anything else             -> 404; a known path with another method -> 405 (Allow)

Prices are integer cents; tax is 8% of the discounted subtotal, rounded half up.  Ephemeral:
nothing a request does survives it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

PRODUCTS: dict[str, dict[str, Any]] = {
    "tea": {"id": "tea", "name": "Green tea, 100 g", "price_cents": 650},
    "mug": {"id": "mug", "name": "Stoneware mug", "price_cents": 1200},
    "pot": {"id": "pot", "name": "Cast-iron teapot", "price_cents": 4500},
}
COUPONS = {"WELCOME10": 10, "FRIENDS25": 25}  # percent off
TAX_PERCENT = 8
MAX_QTY = 1000
MAX_BODY = 64 * 1024

StartResponse = Callable[..., object]


class BadRequest(Exception):
    """The request's JSON is not a valid quote."""


def _json(start_response: StartResponse, status: str, doc: object, *extra: tuple[str, str]) -> list[bytes]:
    body = json.dumps(doc, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra])
    return [body]


def _percent(amount: int, percent: int) -> int:
    return (amount * percent + 50) // 100  # half up, in integer cents


def quote(doc: object) -> dict[str, Any]:
    """Prices a cart: ``{"items": [{"id", "qty"}], "coupon"?}``."""
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(doc) - {"items", "coupon"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r}")
    items = doc.get("items")
    if not isinstance(items, list) or not items:
        raise BadRequest("items must be a non-empty array")
    lines, subtotal = [], 0
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"id", "qty"}:
            raise BadRequest(f"items[{i}] must be an object with id and qty")
        product = PRODUCTS.get(item["id"]) if isinstance(item["id"], str) else None
        if product is None:
            raise BadRequest(f"items[{i}]: no product {item['id']!r}")
        qty = item["qty"]
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise BadRequest(f"items[{i}]: qty must be an integer between 1 and {MAX_QTY}")
        line = product["price_cents"] * qty
        subtotal += line
        lines.append({"id": product["id"], "qty": qty, "line_cents": line})
    coupon = doc.get("coupon")
    if coupon is not None and (not isinstance(coupon, str) or coupon.upper() not in COUPONS):
        raise BadRequest(f"unknown coupon {coupon!r}")
    discount = _percent(subtotal, COUPONS[coupon.upper()]) if coupon else 0
    tax = _percent(subtotal - discount, TAX_PERCENT)
    return {
        "lines": lines,
        "subtotal_cents": subtotal,
        "discount_cents": discount,
        "tax_cents": tax,
        "total_cents": subtotal - discount + tax,
    }


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application."""
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    if path == "/products":
        if method != "GET":
            return _json(start_response, "405 Method Not Allowed", {"error": "use GET"}, ("Allow", "GET"))
        return _json(start_response, "200 OK", {"products": list(PRODUCTS.values())})
    if path.startswith("/products/"):
        if method != "GET":
            return _json(start_response, "405 Method Not Allowed", {"error": "use GET"}, ("Allow", "GET"))
        product = PRODUCTS.get(path[len("/products/") :])
        if product is None:
            return _json(start_response, "404 Not Found", {"error": "no such product"})
        return _json(start_response, "200 OK", product)
    if path == "/quote":
        if method != "POST":
            return _json(start_response, "405 Method Not Allowed", {"error": "use POST"}, ("Allow", "POST"))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > MAX_BODY:
                raise BadRequest("body too large")
            try:
                doc = json.loads(environ["wsgi.input"].read(length) or b"null")
            except ValueError as e:
                raise BadRequest(f"invalid JSON: {e}") from None
            return _json(start_response, "200 OK", quote(doc))
        except BadRequest as e:
            return _json(start_response, "400 Bad Request", {"error": str(e)})
    return _json(start_response, "404 Not Found", {"error": "not found"})
