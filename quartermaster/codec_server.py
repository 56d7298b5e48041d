"""The UI codec server: Temporal's remote codec protocol, holding payload keys only.

The Temporal UI (and `temporal workflow show --codec-endpoint`) POSTs ``{"payloads": [...]}`` (the
protobuf JSON form of `Payloads`) to ``.../decode`` or ``.../encode``. This server decrypts payloads
with the payload keys alone; `Secret` values inside stay sealed under a key it never holds and show as
``***``. Failure messages and stack traces arrive here as a failure's encoded attributes (an ordinary
payload) and get the same treatment, plus pattern redaction of anything shaped like a credential.

Access: only the configured namespace (``X-Namespace``), CORS only for the configured UI origin, and
outside dev a ``Authorization: Bearer <QM_CODEC_AUTH_TOKEN>`` header.

    python -m quartermaster.codec_server --port 8701
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from quartermaster.codec import EncryptionCodec, PayloadDecryptionError
from quartermaster.keys import Keyring
from quartermaster.logging_setup import redact

log = logging.getLogger("quartermaster.codec_server")

#: larger bodies are refused before parsing (a payload is at most 2 MB; the UI batches a page's worth)
MAX_BODY_BYTES = 16 * 1024 * 1024
ALLOWED_HEADERS = "authorization, content-type, x-namespace"


class CodecKeys:
    """The codec built from the key file, rebuilt when the file changes (after `qm keys rotate`)."""

    def __init__(self, keyring: Keyring, reload_from: Path | None = None) -> None:
        self._path = reload_from
        self._mtime = self._stat()
        self.codec = self._build(keyring)

    @staticmethod
    def _build(keyring: Keyring) -> EncryptionCodec:
        # drop seal and principal keys even if a full key file was configured by mistake
        return EncryptionCodec(keyring.codec_only(), redact_secrets=True)

    def _stat(self) -> tuple[int, int, int] | None:
        # inode too: `write_key_file` replaces the file, which may keep the same mtime tick
        try:
            st = self._path.stat() if self._path else None
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size) if st else None

    def current(self) -> EncryptionCodec:
        mtime = self._stat()
        if self._path is not None and mtime is not None and mtime != self._mtime:
            self.codec = self._build(load_codec_keyring(self._path))
            self._mtime = mtime
            log.info("codec keys reloaded from %s", self._path)
        return self.codec


def load_codec_keyring(path: Path) -> Keyring:
    """The payload keys from `path`. Never reads QM_KEYS: that holds the worker's full keyring."""
    keyring = Keyring.from_json(path.read_text())
    if keyring.seal or keyring.principal:
        log.warning("%s holds seal/principal keys; the codec server ignores them", path)
    return keyring.codec_only()


def _redact_json(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    return value


def redact_payload(payload: Payload) -> Payload:
    """Pattern-redact the strings of a decoded JSON payload (a failure message quoting a token)."""
    if payload.metadata.get("encoding") != b"json/plain":
        return payload
    try:
        doc = json.loads(payload.data)
    except ValueError:
        return payload
    cleaned = _redact_json(doc)
    if cleaned == doc:
        return payload
    out = Payload()
    out.CopyFrom(payload)
    out.data = json.dumps(cleaned, separators=(",", ":")).encode()
    return out


def allowed_origins(configured: str, *, dev: bool) -> frozenset[str]:
    """The UI origins answered: a comma-separated list; in dev also the localhost/127.0.0.1 twin."""
    origins = {o.strip().rstrip("/") for o in configured.split(",") if o.strip()}
    if dev:
        twins = {"//localhost:": "//127.0.0.1:", "//127.0.0.1:": "//localhost:"}
        for origin in list(origins):
            for a, b in twins.items():
                if a in origin:
                    origins.add(origin.replace(a, b))
    return frozenset(origins)


def create_app(
    *,
    keyring: Keyring,
    namespace: str,
    allowed_origin: str,
    auth_token: str | None,
    dev: bool,
    reload_from: Path | None = None,
) -> Starlette:
    """The codec server app. Outside `dev` an `auth_token` is required (refuses to build without one).

    `reload_from`: the key file to watch; a changed file is reloaded on the next request.
    """
    if not dev and not auth_token:
        raise ValueError("outside dev the codec server needs QM_CODEC_AUTH_TOKEN (a bearer token)")
    keys = CodecKeys(keyring, reload_from)
    origins = allowed_origins(allowed_origin, dev=dev)

    def cors_headers(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin not in origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def refuse(request: Request, status: int, code: str, message: str) -> Response:
        return JSONResponse(
            {"error": {"code": code, "message": message}}, status_code=status, headers=cors_headers(request)
        )

    def authorized(request: Request) -> bool:
        if auth_token is None:
            return dev
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), auth_token)

    async def preflight(request: Request) -> Response:
        headers = cors_headers(request)
        if not headers:
            return Response(status_code=403)
        headers |= {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=headers)

    async def handle(request: Request) -> Response:
        path = request.url.path.rstrip("/")
        # the protocol: only the last path segment selects the operation
        operation = path.rsplit("/", 1)[-1]
        if operation not in {"encode", "decode"}:
            return refuse(request, 404, "NOT_FOUND", "POST .../encode or .../decode")
        if request.method == "OPTIONS":
            return await preflight(request)
        if "origin" in request.headers and not cors_headers(request):
            return refuse(request, 403, "ORIGIN_NOT_ALLOWED", "this codec server answers one UI origin")
        if not authorized(request):
            return refuse(request, 401, "UNAUTHORIZED", "a valid bearer token is required")
        if request.headers.get("x-namespace") != namespace:
            return refuse(request, 403, "NAMESPACE_NOT_ALLOWED", "X-Namespace must name this namespace")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return refuse(request, 413, "TOO_LARGE", "request body too large")
        try:
            payloads = json_format.Parse(body, Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, DecodeError, ValueError):
            return refuse(request, 400, "INVALID_REQUEST", "body must be Payloads protobuf JSON")
        codec = keys.current()
        try:
            if operation == "decode":
                result = [redact_payload(p) for p in await codec.decode(payloads.payloads)]
            else:
                result = await codec.encode(payloads.payloads)
        except (PayloadDecryptionError, RuntimeError, ValueError) as exc:
            # no payload bytes in the log or the response; the message names at most a key id
            log.warning("codec %s failed: %s", operation, type(exc).__name__)
            return refuse(request, 400, "CODEC_ERROR", f"cannot {operation} these payloads")
        return Response(
            json_format.MessageToJson(Payloads(payloads=result), indent=None),
            media_type="application/json",
            headers=cors_headers(request),
        )

    return Starlette(routes=[Route("/{path:path}", handle, methods=["POST", "OPTIONS"])])


def main(argv: list[str] | None = None) -> int:
    """`python -m quartermaster.codec_server --port N`: settings from the environment."""
    import uvicorn

    from quartermaster.config import DEV_PORTS, Settings
    from quartermaster.logging_setup import configure_logging

    parser = argparse.ArgumentParser(prog="python -m quartermaster.codec_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEV_PORTS["codec"])
    args = parser.parse_args(argv)
    configure_logging()
    settings = Settings.from_env()
    keys_file = settings.resolved_codec_keys_file
    try:
        keyring = load_codec_keyring(keys_file)
        app = create_app(
            keyring=keyring,
            namespace=settings.namespace,
            allowed_origin=settings.codec_cors_origin,
            auth_token=settings.codec_auth_token,
            dev=settings.dev,
            reload_from=keys_file,
        )
    except (OSError, ValueError) as err:
        print(f"codec server: {err}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
