"""Resources: create (validated configuration, charged through the payment token), read (pending ones
complete after a moment), submit missing information, remove."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from models.catalog import ServiceEntry
from models.secret import Secret
from providers.errors import PermanentProviderError, RetryableProviderError
from simulators.provider.catalogs import PENDING_POLLS, PENDING_SECONDS, REGISTRANT_NEEDED_SCHEMA
from simulators.provider.context import (
    ContractError,
    Outcome,
    SimulatorContext,
    context_of,
    parse_empty,
    parse_json,
    path_id,
)


class CreateResourceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service_id: str = Field(min_length=3, max_length=100)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    configuration: dict[str, Any] = Field(default_factory=dict)
    payment_token: str | None = Field(default=None, min_length=1, max_length=255)


class RenewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period: int = Field(ge=1, le=100_000)
    #: when the period is due (ISO 8601): recorded on the charge, so Stripe shows which period it paid
    due: str = Field(min_length=10, max_length=40)
    payment_token: str = Field(min_length=1, max_length=255)
    #: what to charge for this period when less than the price (a credit from a downgrade)
    amount: int | None = Field(default=None, ge=1)


class ChangePlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service_id: str = Field(min_length=3, max_length=100)
    #: the prorated difference of an upgrade, charged through `payment_token` (a downgrade sends none)
    amount: int | None = Field(default=None, ge=1)
    payment_token: str | None = Field(default=None, min_length=1, max_length=255)


class SubmitInformationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    information: dict[str, Any]


def validate_configuration(schema: dict[str, Any], value: dict[str, Any], what: str) -> None:
    """400 `invalid_configuration` naming the first failing location."""
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if errors:
        where = ".".join([what, *(str(p) for p in errors[0].path)])
        raise ContractError(400, "invalid_configuration", f"{where}: fails '{errors[0].validator}'")


def resource_json(row: dict[str, Any]) -> dict[str, Any]:
    """The contract's Resource object."""
    return {
        "resource_id": row["resource_id"],
        "service_id": row["service_id"],
        "name": row["name"],
        "status": row["status"],
        "configuration": json.loads(row["configuration"]),
        "charge": json.loads(row["charge"]) if row["charge"] else None,
        "error_message": row["error_message"],
        "needs_information_schema": (
            json.loads(row["needs_information_schema"]) if row["needs_information_schema"] else None
        ),
        "account_id": row["account_id"],
        "created_at": row["created_at"],
    }


def owned_resource(ctx: SimulatorContext, account_id: str, resource_id: str) -> dict[str, Any]:
    row = ctx.store.resource(resource_id)
    if row is None or row["account_id"] != account_id:
        raise ContractError(404, "not_found", "no such resource for this account")
    return row


async def _charge(
    ctx: SimulatorContext, service: ServiceEntry, token: str, key: str, account_id: str,
    extra: dict[str, str] | None = None, amount: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Charge the catalog price (or `amount`, at most the price) once per resource idempotency key
    (retries replay at Stripe)."""
    price = service.pricing.price
    assert price is not None
    if amount is not None:
        if amount > price.amount:
            raise ContractError(400, "invalid_request", "amount above the service's price")
        price = price.model_copy(update={"amount": amount})
    if ctx.config.charger is None:
        raise ContractError(503, "payment_unavailable", "this simulator has no payment connection")
    charge_key = f"{ctx.provider}:{key}:charge"
    metadata = {"provider": ctx.provider, "service_id": service.service_id, "account_id": account_id,
                "idempotency_key": charge_key, **(extra or {})}  # fmt: skip
    try:
        result = await ctx.config.charger.charge(
            token_id=Secret(token), amount=price, idempotency_key=charge_key, metadata=metadata
        )
    except PermanentProviderError as exc:
        raise ContractError(402, "payment_declined", "the payment token was declined") from exc
    except RetryableProviderError as exc:
        raise ContractError(503, "payment_unavailable", "the payment network is unavailable") from exc
    if result.status != "succeeded":
        raise ContractError(402, "payment_declined", f"the charge ended {result.status}")
    return {
        "amount": result.amount.model_dump(),
        "payment_reference": result.payment_intent_id,
        "idempotency_key": charge_key,
    }


async def create_resource(request: Request) -> JSONResponse:
    ctx = context_of(request)
    token_row = ctx.authenticate(request)
    body = await parse_json(request, CreateResourceBody)
    account_id = token_row["account_id"]

    async def work(key: str) -> Outcome:
        service = ctx.service(body.service_id)
        validate_configuration(service.configuration_schema, body.configuration, "configuration")
        charge: dict[str, Any] | None = None
        if service.pricing.type == "paid":
            if body.payment_token is None:
                raise ContractError(402, "payment_required", "this service is paid: send a payment_token")
            charge = await _charge(ctx, service, body.payment_token, key, account_id)
        status, needs, ready_at = "complete", None, None
        if service.service_id == "cloud/registrar:domain" and "registrant_contact" not in body.configuration:
            status, needs = "needs_information", REGISTRANT_NEEDED_SCHEMA
        elif service.service_id == "db/postgres:pro":
            status, ready_at = "pending", time.time() + PENDING_SECONDS
        row = {
            "resource_id": f"res_{secrets.token_hex(8)}", "account_id": account_id,
            "service_id": service.service_id, "name": body.name, "status": status,
            "configuration": json.dumps(body.configuration), "charge": json.dumps(charge) if charge else None,
            "error_message": None, "needs_information_schema": json.dumps(needs) if needs else None,
            "created_at": int(time.time()), "ready_at": ready_at,
        }  # fmt: skip

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO resources ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
                tuple(row.values()),
            )
            if charge is not None:
                _record_charge(db, row["resource_id"], account_id, charge, row["created_at"])

        return 201, resource_json(row), apply

    fingerprint = body.model_dump()
    return await ctx.idempotent(request, scope=account_id, fingerprint=fingerprint, work=work)


def _record_charge(
    db: sqlite3.Connection, resource_id: str, account_id: str, charge: dict[str, Any], at: int
) -> None:
    """One row per charge the provider took (purchase, renewal or upgrade), with its Stripe reference."""
    db.execute(
        "INSERT INTO charges (charge_id, resource_id, account_id, amount, currency, "
        "payment_reference, idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (f"ch_{secrets.token_hex(8)}", resource_id, account_id, charge["amount"]["amount"],
         charge["amount"]["currency"], charge["payment_reference"], charge["idempotency_key"], at),
    )  # fmt: skip


async def get_resource(request: Request) -> JSONResponse:
    """Read a resource; a pending one completes after PENDING_SECONDS or PENDING_POLLS reads."""
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    row = owned_resource(ctx, account_id, path_id(request, "resource_id"))
    if row["status"] == "pending":
        polls = row["polls"] + 1
        done = polls >= PENDING_POLLS or time.time() >= (row["ready_at"] or 0)
        with ctx.store.transaction():
            ctx.store.execute(
                "UPDATE resources SET polls = ?, status = ? WHERE resource_id = ? AND status = 'pending'",
                polls, "complete" if done else "pending", row["resource_id"],
            )  # fmt: skip
        row = owned_resource(ctx, account_id, row["resource_id"])
    return JSONResponse(resource_json(row))


async def submit_information(request: Request) -> JSONResponse:
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    resource_id = path_id(request, "resource_id")
    body = await parse_json(request, SubmitInformationBody)

    async def work(key: str) -> Outcome:
        row = owned_resource(ctx, account_id, resource_id)
        if row["status"] != "needs_information":
            raise ContractError(409, "invalid_state", f"the resource is {row['status']}")
        validate_configuration(json.loads(row["needs_information_schema"]), body.information, "information")
        configuration = {**json.loads(row["configuration"]), **body.information}
        updated = {**row, "status": "complete", "configuration": json.dumps(configuration),
                   "needs_information_schema": None}  # fmt: skip

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE resources SET status = 'complete', configuration = ?, "
                "needs_information_schema = NULL "
                "WHERE resource_id = ?",
                (updated["configuration"], resource_id),
            )

        return 200, resource_json(updated), apply

    return await ctx.idempotent(request, scope=account_id, fingerprint=body.model_dump(), work=work)


async def remove_resource(request: Request) -> JSONResponse:
    """Remove a reversible resource and revoke its credentials; removing twice is not an error."""
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    resource_id = path_id(request, "resource_id")
    await parse_empty(request)

    async def work(key: str) -> Outcome:
        row = owned_resource(ctx, account_id, resource_id)
        service = ctx.service(row["service_id"])
        if not service.reversible:
            raise ContractError(409, "not_reversible", "this service cannot be removed once created")
        now = int(time.time())

        def apply(db: sqlite3.Connection) -> None:
            db.execute("UPDATE resources SET status = 'removed' WHERE resource_id = ?", (resource_id,))
            db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE resource_id = ? AND revoked_at IS NULL",
                (now, resource_id),
            )

        return 200, resource_json({**row, "status": "removed"}), apply

    return await ctx.idempotent(request, scope=account_id, fingerprint={}, work=work)


async def renew_resource(request: Request) -> JSONResponse:
    """Charge one more period of a recurring paid resource through a fresh payment token; once per
    idempotency key. A removed resource is not renewed (409 `invalid_state`)."""
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    body = await parse_json(request, RenewBody)
    resource_id = path_id(request, "resource_id")

    async def work(key: str) -> Outcome:
        row = owned_resource(ctx, account_id, resource_id)
        if row["status"] != "complete":
            raise ContractError(409, "invalid_state", f"the resource is {row['status']}")
        service = ctx.service(row["service_id"])
        if service.pricing.type != "paid" or service.pricing.interval not in ("month", "year"):
            raise ContractError(409, "not_recurring", "this service has no recurring price")
        extra = {"resource_id": resource_id, "period": str(body.period), "due": body.due}
        charge = await _charge(ctx, service, body.payment_token, key, account_id, extra, body.amount)
        now = int(time.time())

        def apply(db: sqlite3.Connection) -> None:
            _record_charge(db, resource_id, account_id, charge, now)

        return 200, charge, apply

    return await ctx.idempotent(request, scope=account_id, fingerprint=body.model_dump(), work=work)


async def change_plan(request: Request) -> JSONResponse:
    """Move a resource to another service of the catalog's `allowed_updates` (and `constraints`); an
    upgrade's prorated difference is charged through the payment token, once per idempotency key."""
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    body = await parse_json(request, ChangePlanBody)
    resource_id = path_id(request, "resource_id")

    async def work(key: str) -> Outcome:
        row = owned_resource(ctx, account_id, resource_id)
        if row["status"] != "complete":
            raise ContractError(409, "invalid_state", f"the resource is {row['status']}")
        current = ctx.service(row["service_id"])
        target = ctx.service(body.service_id)
        if target.service_id not in current.allowed_updates:
            raise ContractError(
                409, "update_not_allowed", f"{current.service_id} cannot become {target.service_id}"
            )
        most = target.constraints.get("max_resources")
        if isinstance(most, int):
            same = [
                r
                for r in ctx.store.all(
                    "SELECT resource_id FROM resources "
                    "WHERE account_id = ? AND service_id = ? AND status != 'removed'",
                    account_id,
                    target.service_id,
                )
            ]
            if len(same) >= most:
                raise ContractError(
                    409, "constraint_violated", f"at most {most} {target.service_id} per account"
                )
        charge: dict[str, Any] | None = None
        if body.amount is not None:
            if body.payment_token is None:
                raise ContractError(402, "payment_required", "an upgrade's difference needs a payment_token")
            extra = {"resource_id": resource_id, "plan_change": f"{current.service_id}->{target.service_id}"}
            charge = await _charge(ctx, target, body.payment_token, key, account_id, extra, body.amount)
        now = int(time.time())
        updated = {**row, "service_id": target.service_id}

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE resources SET service_id = ? WHERE resource_id = ?", (target.service_id, resource_id)
            )
            if charge is not None:
                _record_charge(db, resource_id, account_id, charge, now)

        out = resource_json(updated)
        out["charge"] = charge
        return 200, out, apply

    return await ctx.idempotent(request, scope=account_id, fingerprint=body.model_dump(), work=work)
