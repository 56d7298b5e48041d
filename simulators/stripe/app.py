"""`create_app(config)`: the local Stripe-compatible server (the subset Quartermaster uses).

Each `/v1/...` request is authenticated by its Bearer API key, checked against injected faults and
Stripe's idempotency rules, then run in one SQLite transaction together with its idempotency record,
so a response that is lost after commit replays exactly on retry."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from providers.private_files import private_directory
from quartermaster.config import LOCAL_STRIPE_KEY
from simulators.stripe import billing, payments
from simulators.stripe.admin import Faults, admin_routes
from simulators.stripe.api_context import API_VERSION, ApiContext
from simulators.stripe.checkout_page import checkout_routes
from simulators.stripe.expand import expand
from simulators.stripe.parameters import recognised, unknown_parameter
from simulators.stripe.store import SimStore
from simulators.stripe.webhooks import WebhookSender
from simulators.stripe.wire import StripeApiError, decode_form, new_id

Handler = Callable[..., dict[str, Any]]
_ID = "([A-Za-z0-9_]+)"  # one path segment: an object id
_LIST = {"limit", "expand"}
_CUSTOMER = {"email", "name", "description", "metadata", "expand"}
_REFUND = {"payment_intent", "amount", "reason", "metadata", "expand"}
_CHECKOUT = {"mode", "customer", "success_url", "cancel_url", "metadata", "setup_intent_data", "currency",
             "payment_method_types", "expand"}  # fmt: skip
_TOKEN = {"payment_method", "usage_limits", "seller_details", "shared_metadata", "return_url",
          "setup_future_usage", "use_stripe_sdk", "expand"}  # fmt: skip
_INTENT = {"amount", "currency", "payment_method_data", "confirm", "metadata", "description", "receipt_email",
           "capture_method", "confirmation_method", "payment_method_types", "expand"}  # fmt: skip
#: (method, path template, handler, the top-level parameters it simulates). Every parameter Stripe
#: defines on the endpoint is recognised (parameters.json); one it does not define, at any depth, is
#: refused as Stripe refuses it (`parameter_unknown`), and one this server does not simulate is
#: refused by name (`parameter_not_simulated`) rather than ignored, so behaviour never silently differs
_SPECS: list[tuple[str, str, Handler, set[str]]] = [
    ("GET", "/v1/customers", billing.list_customers, _LIST | {"email"}),
    ("POST", "/v1/customers", billing.create_customer, _CUSTOMER),
    ("GET", "/v1/customers/{id}", billing.retrieve_customer, {"expand"}),
    ("GET", "/v1/customers/{id}/payment_methods", billing.list_payment_methods, _LIST | {"type"}),
    ("GET", "/v1/payment_methods", billing.list_payment_methods, _LIST | {"customer", "type"}),
    ("GET", "/v1/payment_methods/{id}", billing.retrieve_payment_method, {"expand"}),
    ("POST", "/v1/payment_methods/{id}/attach", billing.attach_payment_method, {"customer", "expand"}),
    ("POST", "/v1/checkout/sessions", billing.create_checkout_session, _CHECKOUT),
    ("GET", "/v1/checkout/sessions/{id}", billing.retrieve_checkout_session, {"expand"}),
    ("GET", "/v1/setup_intents/{id}", billing.retrieve_setup_intent, {"expand"}),
    ("POST", "/v1/shared_payment/issued_tokens", payments.issue_token, _TOKEN),
    ("GET", "/v1/shared_payment/issued_tokens/{id}", payments.retrieve_token, {"expand"}),
    ("POST", "/v1/shared_payment/issued_tokens/{id}/revoke", payments.revoke_token, {"expand"}),
    ("GET", "/v1/shared_payment/granted_tokens/{id}", payments.retrieve_granted_token, {"expand"}),
    ("POST", "/v1/payment_intents", payments.create_payment_intent, _INTENT),
    ("GET", "/v1/payment_intents", payments.list_payment_intents, _LIST),
    ("GET", "/v1/payment_intents/search", payments.search_payment_intents, {"query", "limit", "expand"}),
    ("GET", "/v1/payment_intents/{id}", payments.retrieve_payment_intent, {"expand"}),
    ("GET", "/v1/charges", payments.list_charges, _LIST | {"payment_intent"}),
    ("POST", "/v1/refunds", payments.create_refund, _REFUND),
    ("GET", "/v1/refunds", payments.list_refunds, _LIST | {"payment_intent"}),
    ("GET", "/v1/refunds/{id}", payments.retrieve_refund, {"expand"}),
]  # fmt: skip


@dataclass(frozen=True)
class ApiRoute:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    simulated: frozenset[str]

    def check(self, params: dict[str, Any]) -> None:
        """Refuse a parameter Stripe does not define here, then one this server does not simulate."""
        unknown = unknown_parameter(recognised(self.method, self.template), params)
        if unknown is not None:
            raise StripeApiError("invalid_request_error", f"Received unknown parameter: {unknown}",
                                 code="parameter_unknown", param=unknown)  # fmt: skip
        for name in sorted(set(params) - self.simulated):
            if params[name] not in ("", None):
                raise StripeApiError(
                    "invalid_request_error",
                    f"This local Stripe does not simulate the parameter {name} (docs/stripe.md).",
                    code="parameter_not_simulated", param=name,
                )  # fmt: skip


ROUTES = [
    ApiRoute(m, t, re.compile(re.escape(t).replace(re.escape("{id}"), _ID) + "$"), h, frozenset(a))
    for m, t, h, a in _SPECS
]


@dataclass(frozen=True)
class SimConfig:
    data_dir: Path
    api_key: str = LOCAL_STRIPE_KEY
    webhook_url: str | None = None
    webhook_secret: str | None = None
    public_url: str | None = None  # base of Checkout links; default: the URL the request came in on
    webhook_max_attempts: int = 8
    webhook_retry_base_seconds: float = 1.0


class _DroppedResponse(Response):
    """Headers, a fragment of body, then a closed connection: the client cannot know the outcome."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def _error(exc: StripeApiError) -> tuple[int, str]:
    return exc.status, json.dumps(exc.body())


def _strip_private(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip_private(v) for v in value]
    return value


def _supplied_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header[7:]
    if header.startswith("Basic "):  # curl -u sk_test_...:
        try:
            return base64.b64decode(header[6:]).decode().partition(":")[0]
        except ValueError:
            return ""
    return ""


def create_app(config: SimConfig) -> Starlette:
    """The ASGI app; state lives in `<config.data_dir>/stripe.sqlite`."""
    if config.webhook_url and not config.webhook_secret:
        raise ValueError("a webhook URL needs a webhook signing secret")
    store = SimStore(private_directory(config.data_dir) / "stripe.sqlite")
    faults = Faults()
    sender = WebhookSender(
        store, url=config.webhook_url, secret=config.webhook_secret or "",
        max_attempts=config.webhook_max_attempts, retry_base=config.webhook_retry_base_seconds,
    )  # fmt: skip
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_QuietDrops())

    def base_url(request: Request) -> str:
        return (config.public_url or str(request.base_url)).rstrip("/")

    def respond(status: int, body: str, request: Request, replayed: bool = False) -> Response:
        headers = {
            "Request-Id": new_id("req_", 14),
            "Stripe-Version": request.headers.get("stripe-version", API_VERSION),
        }
        if key := request.headers.get("idempotency-key"):
            headers["Idempotency-Key"] = key
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    def execute(
        request: Request, ctx: ApiContext, params: dict[str, Any], params_json: str
    ) -> tuple[int, str]:
        path, method = request.url.path, request.method
        candidates = [(r, m.groups()) for r in ROUTES if (m := r.pattern.match(path))]
        found = next(((r, g) for r, g in candidates if r.method == method), None)
        if found is None:
            raise StripeApiError(
                "invalid_request_error", f"Unrecognized request URL ({method}: {path}).", status=404
            )
        route, ids = found
        route.check(params)
        with store.transaction():
            try:
                result = expand(store, route.handler(ctx, params, *ids), params.get("expand"))
                status, body = 200, json.dumps(_strip_private(result))
            except StripeApiError as exc:
                if not exc.saved:
                    raise
                status, body = _error(exc)
            if ctx.idempotency_key is not None and method == "POST":
                store.save_idempotency(
                    config.api_key, ctx.idempotency_key, method, path, params_json, status, body
                )
        return status, body

    async def api(request: Request) -> Response:
        if not hmac.compare_digest(_supplied_key(request).encode(), config.api_key.encode()):
            refused = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}}
            return respond(401, json.dumps(refused), request)
        raw = request.url.query if request.method == "GET" else (await request.body()).decode()
        params = decode_form(raw)
        params_json = json.dumps(params, sort_keys=True)
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        fault = faults.take(request.method, request.url.path)
        if fault == "rate_limit":
            exc = StripeApiError(
                "rate_limit_error", "Too many requests hit the API too quickly.", code="rate_limit"
            )
            return respond(*_error(exc), request)
        if fault == "server_error":
            return respond(
                *_error(StripeApiError("api_error", "Something went wrong on Stripe's end.")), request
            )
        if key is not None:
            if len(key) > 255:
                exc = StripeApiError(
                    "invalid_request_error", "Idempotency-Key is longer than 255 characters."
                )
                return respond(*_error(exc), request)
            previous = store.idempotency(config.api_key, key)
            if previous is not None:
                if (previous.method, previous.path, previous.params) != (
                    request.method,
                    request.url.path,
                    params_json,
                ):
                    exc = StripeApiError(
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                    )
                    return respond(*_error(exc), request)
                return respond(previous.status, previous.body, request, replayed=True)
        ctx = ApiContext(store=store, base_url=base_url(request), idempotency_key=key)
        try:
            status, body = execute(request, ctx, params, params_json)
        except StripeApiError as exc:
            status, body = _error(exc)
        sender.schedule(ctx.emitted)
        if fault == "drop_after_commit":
            return _DroppedResponse()
        return respond(status, body, request)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sender.close()

    routes = [
        Route("/v1/{rest:path}", api, methods=["GET", "POST", "DELETE"]),
        *checkout_routes(store, sender, base_url),
        *admin_routes(store, faults, sender),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.store = store
    app.state.sender = sender
    return app
