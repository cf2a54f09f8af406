"""The admin API (off by default): ``PUT /_tenantvm/tenants/NAME`` changes one tenant live.

It is on when the tenants file's ``[server]`` names a bearer token (``admin_token_file`` or
``admin_token_env``).  Every request must carry ``Authorization: Bearer <token>``: without it
the answer is 401, with another token 403; the token is compared with
:func:`hmac.compare_digest`, whose time does not depend on where the tokens differ.

The body is either the tenant's new program (any content type but JSON; an x86-64 ELF file),
or, with ``Content-Type: application/json``, an object of tenants-file keys for the tenant's
table (e.g. ``{"pool_size": 3, "env": {"MODE": "b"}}``).  At most ``admin_max_upload_bytes``
(413 beyond).  A program is written to the server's control directory whole, under a new
name (:func:`tenantvm.control.atomic_write`), then the change is recorded as the tenant's
override and this worker reloads (:mod:`tenantvm.reloader`); if the tenants file with the
change is invalid or the tenant fails to boot, the override is put back as it was and the
answer is 422 with the reason.  Otherwise the other workers are told to reload and the answer
is 200 with the outcome.  Overrides last as long as the server (they live in its run
directory); ``docs/http.md`` describes the API.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tenantvm.answers import Answer, plain
from tenantvm.config import ServerConfig
from tenantvm.control import Control
from tenantvm.errors import ConfigError

__all__ = ["AdminAPI", "load_token"]

_ELF_MAGIC = b"\x7fELF"


def load_token(server: ServerConfig) -> bytes | None:
    """The admin API's token, or None when the API is off.

    Raises:
        ConfigError: A token is configured but missing or empty.
    """
    if server.admin_token_file:
        try:
            token = Path(server.admin_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"[server] admin_token_file: cannot read {server.admin_token_file}: {e.strerror}") from e
        where = server.admin_token_file
    elif server.admin_token_env:
        token = os.environ.get(server.admin_token_env, "").strip()
        where = f"${server.admin_token_env}"
    else:
        return None
    if not token:
        raise ConfigError(f"[server] the admin API's token ({where}) is empty")
    return token.encode()


def _json(status: int, data: dict[str, Any], *extra: tuple[bytes, bytes]) -> Answer:
    body = json.dumps(data, indent=1).encode() + b"\n"
    return status, [(b"content-type", b"application/json"), *extra], body


class AdminAPI:
    """The admin API of one worker, with its ``token`` and upload limit."""

    def __init__(self, token: bytes, max_upload: int, control: Control) -> None:
        self._token = token
        self.max_upload = max_upload
        self.control = control

    def refused(self, headers: list[tuple[bytes, bytes]]) -> Answer | None:
        """401 or 403 unless ``headers`` carry the token; None when they do."""
        given = None
        for k, v in headers:
            if k == b"authorization":
                scheme, _, rest = v.strip().partition(b" ")
                given = rest.strip() if scheme.lower() == b"bearer" else b""
                break
        if given is None:
            return _json(
                401,
                {"error": "unauthorized", "message": "a bearer token is required"},
                (b"www-authenticate", b"Bearer"),
            )
        if not hmac.compare_digest(given, self._token):
            return _json(403, {"error": "forbidden", "message": "wrong token"})
        return None

    def change(self, tenant: str, content_type: bytes, body: bytes) -> Callable[[], Callable[[], None]] | Answer:
        """What the request asks to change (run by the reloader), or the answer refusing it."""
        if content_type.split(b";")[0].strip().lower() == b"application/json":
            try:
                settings = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                return _json(400, {"error": "bad_request", "message": f"invalid JSON: {e}"})
            if not isinstance(settings, dict) or not settings:
                return _json(400, {"error": "bad_request", "message": "expected a non-empty object of settings"})
            if "group" in settings:
                return _json(400, {"error": "bad_request", "message": "'group' cannot be changed live"})
            program = None
        else:
            if not body.startswith(_ELF_MAGIC):
                return _json(400, {"error": "bad_request", "message": "the program is not an ELF file"})
            settings, program = {}, body
        control = self.control

        def apply() -> Callable[[], None]:
            before = control.override(tenant)
            new = {**(before or {}), **settings}
            if program is not None:
                new["program"] = str(control.store_upload(tenant, program))
            control.set_override(tenant, new)
            return lambda: control.set_override(tenant, before)

        return apply

    @staticmethod
    def outcome_answer(tenant: str, outcome: Any, version: int | None, generation: int) -> Answer:
        """200 with the outcome, or 422 with the reason it failed."""
        data = {"tenant": tenant, "generation": generation, "version": version, "outcome": asdict(outcome)}
        return _json(200 if outcome.ok else 422, data)

    @staticmethod
    def too_large(limit: int) -> Answer:
        """The answer to an upload over the limit."""
        return plain(
            413, f"tenantvm: the upload is over the admin API's limit ({limit} bytes)\n", (b"connection", b"close")
        )

    @staticmethod
    def not_found(tenant: str) -> Answer:
        """The answer for a tenant the server does not have."""
        return _json(404, {"error": "not_found", "message": f"no tenant named {tenant!r}"})
