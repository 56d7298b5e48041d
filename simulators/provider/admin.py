"""Simulator-only admin API for tests and local development (`/_sim/...`, loopback callers only): seed
an existing account, read the state without secrets, arm faults. Not part of the provider contract."""

from __future__ import annotations

import ipaddress
import secrets
import time

from pydantic import BaseModel, ConfigDict, EmailStr, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from simulators.provider.context import ContractError, SimulatorContext, context_of, parse_json
from simulators.provider.faults import FaultSpec


class SeedAccountBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    display_name: str | None = Field(default=None, max_length=120)


def _admin(request: Request) -> SimulatorContext:
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ContractError(403, "forbidden", "the simulator admin API answers loopback callers only")
    return context_of(request)


async def seed_account(request: Request) -> JSONResponse:
    """Create an account for an email as if the human had signed up directly (to exercise linking)."""
    ctx = _admin(request)
    body = await parse_json(request, SeedAccountBody)
    email = str(body.email).strip().lower()
    async with ctx.write_lock:
        existing = ctx.store.account_by_email(email)
        if existing is not None:
            return JSONResponse({"account_id": existing["account_id"], "created": False})
        account_id = f"acct_{secrets.token_hex(8)}"
        with ctx.store.transaction():
            ctx.store.execute(
                "INSERT INTO accounts (account_id, email, display_name, created_at, origin) "
                "VALUES (?, ?, ?, ?, 'seeded')",
                account_id, email, body.display_name, int(time.time()),
            )  # fmt: skip
    return JSONResponse({"account_id": account_id, "created": True}, status_code=201)


async def state(request: Request) -> JSONResponse:
    """Accounts, resources, charges and tokens (ids and metadata, never token values or hashes)."""
    ctx = _admin(request)
    return JSONResponse({"provider": ctx.provider, **ctx.store.state(), "faults": ctx.faults.listing()})


async def add_fault(request: Request) -> JSONResponse:
    ctx = _admin(request)
    spec = await parse_json(request, FaultSpec)
    ctx.faults.add(spec)
    return JSONResponse({"faults": ctx.faults.listing()}, status_code=201)


async def clear_faults(request: Request) -> JSONResponse:
    ctx = _admin(request)
    ctx.faults.clear()
    return JSONResponse({"faults": []})
