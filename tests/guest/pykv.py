"""A WSGI application using the tenant's key-value store through tenantvm_guest (test_lang_python)."""

import tenantvm_guest as tvm


def app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ["PATH_INFO"]
    if path == "/incr":
        body = str(tvm.kv_incr("n")).encode()
    elif path == "/set":
        tvm.kv_set("v", environ["wsgi.input"].read(), ttl_ms=0)
        body = b"ok"
    elif path == "/get":
        value = tvm.kv_get("v")
        body = b"<none>" if value is None else value
    elif path == "/delete":
        body = str(tvm.kv_delete("v")).encode()
    else:
        try:
            tvm.kv_incr("v")
            body = b"incremented"
        except tvm.KvError as e:
            body = f"errno {e.errno}".encode()
    start_response("200 OK", [("content-type", "application/octet-stream")])
    return [body]
