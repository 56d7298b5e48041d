"""One error shape for every route: `{"error": {"code", "message"}}` with an HTTP status per code.

The status table lives beside `models.errors.exit_code`: 401 is "who are you?" (no or bad credentials),
403 "you may not" (a verified caller without the right), 404 also for another principal's objects (never
revealing that they exist), 409 for idempotency conflicts, 413/422 for bodies, 202 for a human wait.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import BAD_INPUT, WAITING_FOR_HUMAN, ErrorCode, QuartermasterError

log = logging.getLogger("quartermaster.api")

STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.IDENTITY_INVALID: 401,
    ErrorCode.SESSION_INVALID: 401,
    ErrorCode.SESSION_EXPIRED: 401,
    ErrorCode.SESSION_REVOKED: 401,
    ErrorCode.LOGIN_INVALID: 401,
    ErrorCode.LINK_INVALID: 401,
    ErrorCode.CSRF_INVALID: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ACCOUNT_IDENTITY_MISMATCH: 403,
    ErrorCode.AGENT_FROZEN: 403,
    ErrorCode.SERVICE_NOT_ALLOWED: 403,
    ErrorCode.BUDGET_EXCEEDED: 403,
    ErrorCode.AGENT_MONTHLY_LIMIT_EXCEEDED: 403,
    ErrorCode.TRANSACTION_LIMIT_EXCEEDED: 403,
    ErrorCode.VELOCITY_LIMIT_EXCEEDED: 403,
    ErrorCode.CREDENTIAL_LIMIT_EXCEEDED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.PLAN_CHANGE_NOT_ALLOWED: 409,
    ErrorCode.APPROVAL_REJECTED: 409,
    ErrorCode.APPROVAL_CHANGED: 409,
    ErrorCode.APPROVAL_HANDED_ON: 409,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TEMPORAL_UNAVAILABLE: 503,
    ErrorCode.PROVIDER_UNAVAILABLE: 503,
    ErrorCode.UNKNOWN_ERROR: 500,
}


def http_status(code: ErrorCode) -> int:
    if code in STATUS:
        return STATUS[code]
    if code in BAD_INPUT:
        return 400
    if code in WAITING_FOR_HUMAN:
        return 202
    return 400


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    """Every refusal and failure."""

    error: ErrorBody


def error_response(code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": str(code), "message": message}}, status_code=http_status(code), headers=headers
    )


#: documented on every route: the shape of refusals
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 503)
}


def install(app: FastAPI) -> None:
    """Map every exception to the one shape; never echo a body, a token or a traceback."""

    @app.exception_handler(QuartermasterError)
    async def _qm(_: Request, exc: QuartermasterError) -> JSONResponse:
        headers = (
            {"WWW-Authenticate": 'Bearer realm="quartermaster"'} if http_status(exc.code) == 401 else None
        )
        return error_response(exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return error_response(ErrorCode.INVALID_REQUEST, message[:300])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.INVALID_REQUEST}.get(
            exc.status_code, ErrorCode.INVALID_REQUEST
        )
        resp = error_response(code, str(exc.detail) if exc.status_code != 404 else "no such route")
        resp.status_code = exc.status_code
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s in the API", type(exc).__name__)  # no message: it could hold a secret
        return error_response(ErrorCode.UNKNOWN_ERROR, "internal error")
