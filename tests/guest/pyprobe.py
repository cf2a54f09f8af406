"""A WSGI test tenant for the CPython binding (tests/test_lang_python.py), run by Debian's python3.

/state  answers a digest of the interpreter's state as it found it (module globals, caches,
        class attributes, os.environ, sys.path, /tmp, builtins, allocator and collector
        counts), then applies the request body's JSON list of [kind, key, value] changes.
/random random.random(), random.getrandbits, os.urandom, secrets, uuid4: what must differ per request.
/fault  dereferences a bad pointer; /loop never ends; /oom allocates until memory runs out;
/raise  raises (the binding answers 500); /echo echoes method, path, query, headers and body;
/headers answers with the response headers the body's JSON list of [name, value] pairs names.
"""

import builtins
import ctypes
import functools
import gc
import json
import os
import random
import secrets
import sys
import uuid

COUNTER = 0
CACHE = {}
SEEDED_AT_INIT = random.Random(1234)


class Registry:
    items = []  # noqa: RUF012 (a class attribute a request may change: the point of the probe)


@functools.cache
def cached(key):
    return key * 2


def digest():
    return {
        "counter": COUNTER,
        "cache": sorted(CACHE.items()),
        "lru": cached.cache_info().currsize,
        "registry": list(Registry.items),
        "environ": sorted((k, v) for k, v in os.environ.items() if k.startswith("PROBE")),
        "path_tail": sys.path[-2:],
        "tmp": sorted(os.listdir("/tmp")),
        "builtins": sorted(k for k in dir(builtins) if k.startswith("probe")),
        "json_attr": getattr(json, "probe", None),
        "gc_objects": len(gc.get_objects()),
        "blocks": sys.getallocatedblocks(),
        "recursion": sys.getrecursionlimit(),
    }


def change(kind, key, value):
    global COUNTER
    key = str(key)
    if kind == "global":
        COUNTER += int(value)
    elif kind == "cache":
        CACHE[key] = value
    elif kind == "lru":
        cached(key)
    elif kind == "registry":
        Registry.items.append(value)
    elif kind == "environ":
        os.environ["PROBE_" + key] = str(value)
    elif kind == "path":
        sys.path.append("/probe/" + key)
    elif kind == "tmp":
        with open("/tmp/probe-" + key, "w") as f:
            f.write(str(value))
    elif kind == "builtin":
        setattr(builtins, "probe_" + key, value)
    elif kind == "module":
        json.probe = value
    elif kind == "garbage":
        junk = [[i] for i in range(int(value) % 5000)]
        junk.append(junk)  # a cycle, left for the collector
    elif kind == "recursion":
        sys.setrecursionlimit(1000 + int(value) % 5000)
    elif kind == "seed":
        random.seed(value)


def answer(start_response, body, status="200 OK", kind="application/json"):
    start_response(status, [("Content-Type", kind)])
    return [body if isinstance(body, bytes) else json.dumps(body).encode()]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    body = environ["wsgi.input"].read()
    if path == "/state":
        seen = digest()
        for kind, key, value in json.loads(body or b"[]"):
            change(kind, key, value)
        return answer(start_response, seen)
    if path == "/random":
        return answer(
            start_response,
            {
                "random": random.random(),
                "bits": random.getrandbits(64),
                "init_seeded": SEEDED_AT_INIT.random(),
                "urandom": os.urandom(8).hex(),
                "secrets": secrets.token_hex(8),
                "uuid4": str(uuid.uuid4()),
            },
        )
    if path == "/fault":
        ctypes.string_at(8)
    if path == "/loop":
        while True:
            pass
    if path == "/oom":
        hog = []
        while True:
            hog.append(bytearray(1 << 20))
    if path == "/raise":
        raise ValueError("the probe raised")
    if path == "/headers":
        start_response("200 OK", [(name, value) for name, value in json.loads(body)])
        return [b"headers"]
    if path.startswith("/echo"):
        headers = sorted((k, v) for k, v in environ.items() if k.startswith("HTTP_") or k.startswith("CONTENT_"))
        doc = {
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "server": [environ["SERVER_NAME"], environ["SERVER_PORT"]],
            "headers": headers,
            "body": body.decode("latin-1"),
        }
        return answer(start_response, doc)
    return answer(start_response, {"error": "not found"}, "404 Not Found")
