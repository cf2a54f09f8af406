"""Baseline (c): per-request isolation with a fresh wasmtime instance per request.

The module is compiled once, at import; every request gets a new ``Store`` and ``Instance``
(fresh linear memory), calls the exported ``hello``, which writes "Hello World!" into its
memory and returns where, and reads the text back.

``granian --interface asgi wasm_hello:app`` (with ``bench/apps`` on ``PYTHONPATH``).
"""

import wasmtime
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

WAT = """
(module
  (memory (export "memory") 1)
  (func (export "hello") (result i32 i32)
    ;; "Hello World!" stored byte by byte at offset 0 (the memory starts zeroed)
    (i64.store (i32.const 0) (i64.const 0x6f57206f6c6c6548))  ;; "Hello Wo"
    (i32.store (i32.const 8) (i32.const 0x21646c72))          ;; "rld!"
    (i32.const 0)
    (i32.const 12)))
"""

ENGINE = wasmtime.Engine()
MODULE = wasmtime.Module(ENGINE, WAT)


def run_once() -> bytes:
    """One isolated run: a fresh store and instance, the call, the text read back."""
    store = wasmtime.Store(ENGINE)
    instance = wasmtime.Instance(store, MODULE, [])
    exports = instance.exports(store)
    hello = exports["hello"]
    memory = exports["memory"]
    if not isinstance(hello, wasmtime.Func) or not isinstance(memory, wasmtime.Memory):
        raise TypeError("the module exports the wrong kinds")
    start, length = hello(store)
    return bytes(memory.read(store, start, start + length))


async def hello(request: Request) -> PlainTextResponse:
    """Answers with what a fresh wasm instance wrote."""
    return PlainTextResponse(run_once())


if run_once() != b"Hello World!":
    raise RuntimeError("the wasm module does not answer Hello World!")
app = Starlette(routes=[Route("/{path:path}", hello)])
