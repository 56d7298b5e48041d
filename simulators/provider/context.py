"""What every simulator handler shares: the error shape, bearer authentication, body parsing and the
idempotency rules (same key + same body replays the first response, errors included; same key + other
body is `idempotency_conflict`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.fernet import Fernet
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from models.catalog import Catalog, ServiceEntry
from simulators.provider.catalogs import ACCOUNT_SCOPE
from simulators.provider.config import SimulatorConfig
from simulators.provider.faults import FaultBook
from simulators.provider.identity import IdentityVerifier
from simulators.provider.store import SimulatorStore

if TYPE_CHECKING:
    from simulators.provider.oauth_server import OAuthServer

M = TypeVar("M", bound=BaseModel)
#: an applied write: the handler's rows go into the same transaction as the idempotency record
Apply = Callable[[sqlite3.Connection], None]
Outcome = tuple[int, dict[str, Any], Apply | None]
IDEMPOTENCY_TTL_SECONDS = 86_400
#: 1-255 printable ASCII characters (the contract's pattern)
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


class ContractError(Exception):
    """An error response of the contract: `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def error_response(err: ContractError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _private_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's bytes, writing `make()` there first (mode 0600) if it does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(make())
    return path.read_bytes().strip()


def _sealer(config: SimulatorConfig) -> Fernet:
    """The key that seals stored idempotent responses (they may hold a freshly minted token)."""
    return Fernet(_private_file(config.seal_key_path, Fernet.generate_key))


def client_secret(config: SimulatorConfig) -> str:
    """The registered client's secret: the configured one, or one made once for this data dir."""
    if config.client_secret is not None:
        return config.client_secret
    return _private_file(config.client_secret_path, lambda: secrets.token_urlsafe(32).encode()).decode()


@dataclass
class SimulatorContext:
    config: SimulatorConfig
    store: SimulatorStore
    catalog: Catalog
    identity: IdentityVerifier
    faults: FaultBook = field(default_factory=FaultBook)
    #: writes are serialized: a simulator favours obviously-correct over concurrent
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sealer: Fernet | None = None
    #: the OAuth authorization server (set by create_app)
    oauth: OAuthServer | None = None

    def __post_init__(self) -> None:
        if self.sealer is None:
            self.sealer = _sealer(self.config)

    @property
    def provider(self) -> str:
        return self.config.provider

    def service(self, service_id: str) -> ServiceEntry:
        found = self.catalog.service(service_id)
        if found is None:
            raise ContractError(400, "unknown_service", "no such service in this provider's catalog")
        return found

    def authenticate(self, request: Request) -> dict[str, Any]:
        """The account-level token row behind `Authorization: Bearer`, or 401/403."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ContractError(401, "invalid_token", "a bearer account credential is required", challenge)
        row = self.store.active_token(token.strip())
        if row is None or row["kind"] == "refresh":
            raise ContractError(
                401, "invalid_token", "the credential is unknown, revoked or expired", challenge
            )
        if row["kind"] == "api" or ACCOUNT_SCOPE not in row["scopes"].split():
            raise ContractError(403, "insufficient_scope", f"this call needs the {ACCOUNT_SCOPE} scope")
        return row

    async def idempotent(
        self,
        request: Request,
        *,
        scope: str,
        fingerprint: Any,
        work: Callable[[str], Awaitable[Outcome]],
    ) -> JSONResponse:
        """Run `work(key)` once per `Idempotency-Key` in `scope`; replay its outcome afterwards."""
        key = request.headers.get("idempotency-key", "")
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise ContractError(
                400, "idempotency_key_required", "send an Idempotency-Key of 1-255 characters"
            )
        canonical = json.dumps(
            [request.method, request.url.path, fingerprint],
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        assert self.sealer is not None
        async with self.write_lock:
            record = self.store.idempotency_record(scope, key)
            if record is not None:
                if record["fingerprint"] != digest:
                    raise ContractError(
                        409, "idempotency_conflict", "this Idempotency-Key was used with another request"
                    )
                body = json.loads(self.sealer.decrypt(record["body"].encode()))
                return JSONResponse(
                    body, status_code=record["status"], headers={"Idempotent-Replayed": "true"}
                )
            apply: Apply | None
            try:
                status, body, apply = await work(key)
            except ContractError as err:
                if err.status >= 500:
                    raise  # not recorded: the caller retries with the same key
                status, body, apply = err.status, err.body(), None
            sealed = self.sealer.encrypt(json.dumps(body).encode()).decode()
            now = int(time.time())
            with self.store.transaction() as db:
                if apply is not None:
                    apply(db)
                db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_TTL_SECONDS,))
                db.execute(
                    "INSERT INTO idempotency (scope, key, fingerprint, status, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (scope, key, digest, status, sealed, now),
                )
        return JSONResponse(body, status_code=status)


async def parse_json(request: Request, model: type[M]) -> M:
    """The request body as `model`, or 400 `invalid_request` (the message names fields, not values)."""
    try:
        raw = await request.body()
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(400, "invalid_request", "the body is not JSON") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
        raise ContractError(400, "invalid_request", "invalid field(s): " + ", ".join(fields)) from exc


#: a resource or credential id in a path (the contract's pattern)
PATH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def path_id(request: Request, name: str) -> str:
    """A path id matching the contract's pattern, or 400 `invalid_request`."""
    value: str = request.path_params[name]
    if not PATH_ID.fullmatch(value):
        raise ContractError(400, "invalid_request", f"{name} must be 1-64 of A-Za-z0-9_-")
    return value


async def parse_empty(request: Request) -> None:
    """An optional body that, when sent, is the empty JSON object `{}` (anything else: 400)."""
    raw = await request.body()
    if not raw.strip():
        return
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(400, "invalid_request", "the body is not JSON") from exc
    if data != {}:
        raise ContractError(400, "invalid_request", "the body must be {} or empty")


def context_of(request: Request) -> SimulatorContext:
    ctx: SimulatorContext = request.app.state.ctx
    return ctx
