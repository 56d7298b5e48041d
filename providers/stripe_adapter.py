"""`StripeAdapter`: Quartermaster's Stripe side (customers, payment methods, Checkout setup sessions,
Shared Payment Tokens, charges, refunds) on the official `stripe` SDK's async methods over httpx.

The SDK's own network retries are off (Temporal owns retries) and every write carries the caller's
deterministic idempotency key, so a retried activity replays instead of acting twice. Every stripe
error is mapped by `map_stripe_error` into providers.errors; messages never carry response bodies
or token ids. Shared Payment Tokens are typed only in stripe-python's beta (16.1.0b1), not in the GA
release the product runs on, so they go through `raw_request_async` with the paths and parameters
the beta defines; tests/test_stripe_contract.py holds every request to those definitions
(docs/decisions.md, "Stripe's wire")."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import httpx
import stripe

from models.money import Money
from models.payment import (
    ChargeResult,
    Customer,
    PaymentMethodStatus,
    PaymentToken,
    RefundResult,
    SetupSession,
)
from models.secret import Secret
from providers.errors import (
    PaymentDeclinedError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from quartermaster.http_transport import async_http_client

T = TypeVar("T")
#: metadata key that ties a PaymentIntent to the idempotency key that created it (reconciliation)
CHARGE_KEY_METADATA = "qm_charge_key"
PRINCIPAL_METADATA = "qm_principal_id"
_TOKEN_ID = re.compile(r"^spt_[A-Za-z0-9_]{1,200}$")
_IDENT = re.compile(r"^[A-Za-z0-9_.\-\[\]]{1,80}$")
#: Stripe error codes of token-limit refusals, named for what they mean to the orchestrator
_TOKEN_CODES = {
    "shared_payment_token_limit_exceeded": "payment_token_limit_exceeded",
    "shared_payment_token_inactive": "payment_token_inactive",
    "shared_payment_token_currency_mismatch": "currency_mismatch",
}


def _ident(value: object) -> str | None:
    """A Stripe code/param only if it looks like an identifier (never free text from a body)."""
    return value if isinstance(value, str) and _IDENT.match(value) else None


def map_stripe_error(exc: stripe.StripeError) -> ProviderError:
    """The one mapping of stripe-python errors to the adapter's typed errors.

    CardError -> PaymentDeclinedError (never retried); IdempotencyError, InvalidRequestError,
    AuthenticationError, PermissionError -> permanent; RateLimitError, APIConnectionError and
    APIError (5xx) -> retryable. The message names the Stripe code and param, never the body."""
    status = exc.http_status
    code, param = _ident(exc.code), _ident(getattr(exc, "param", None))
    detail = ", ".join(f"{k}={v}" for k, v in (("stripe_code", code), ("param", param)) if v)
    if isinstance(exc, stripe.CardError):
        decline = _ident(exc.error.decline_code if exc.error else None)
        return PaymentDeclinedError(
            "payment_declined", f"card declined ({decline or code or 'no reason given'})", status=status,
            decline_code=decline,
        )  # fmt: skip
    if isinstance(exc, stripe.IdempotencyError):
        return PermanentProviderError(
            "idempotency_error", "idempotency key reused with different parameters", status=status
        )
    if isinstance(exc, stripe.RateLimitError):
        return RetryableProviderError(
            "rate_limited", "Stripe rate limit", status=status, retry_after=_retry_after(exc)
        )
    if isinstance(exc, stripe.APIConnectionError):
        return RetryableProviderError("connection_error", "Stripe unreachable or the response was lost")
    if isinstance(exc, stripe.InvalidRequestError):
        if code in _TOKEN_CODES:
            return PermanentProviderError(_TOKEN_CODES[code], detail, status=status)
        if status == 404:
            return PermanentProviderError("not_found", detail or "no such Stripe object", status=status)
        return PermanentProviderError(
            "invalid_request", detail or "Stripe refused the request", status=status
        )
    if isinstance(exc, stripe.AuthenticationError):
        return PermanentProviderError("authentication_failed", "Stripe rejected the API key", status=status)
    if isinstance(exc, stripe.PermissionError):
        return PermanentProviderError("permission_denied", "the API key may not do this", status=status)
    if isinstance(exc, stripe.APIError):
        return RetryableProviderError(
            "stripe_unavailable", f"Stripe API error (HTTP {status})", status=status
        )
    return PermanentProviderError("stripe_error", type(exc).__name__, status=status)


def _retry_after(exc: stripe.StripeError) -> float | None:
    raw = (exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _money(amount: int, currency: str) -> Money:
    return Money(amount=amount, currency=currency)


def _token(data: dict[str, Any]) -> PaymentToken:
    limits = data["usage_limits"]
    captured = (data.get("usage_details") or {}).get("amount_captured") or {}
    return PaymentToken(
        token_id=Secret(data["id"]),
        status=data["status"],
        max_amount=_money(limits["max_amount"], limits["currency"]),
        expires_at=datetime.fromtimestamp(limits["expires_at"], UTC),
        deactivated_reason=data.get("deactivated_reason"),
        amount_captured=(
            _money(captured["value"], captured.get("currency", limits["currency"])) if captured else None
        ),
    )


def _charge(intent: Any) -> ChargeResult:
    """A PaymentIntent (dict from a raw request, or a typed StripeObject) as a ChargeResult."""
    return ChargeResult(
        payment_intent_id=intent["id"],
        status=intent["status"],
        amount=_money(intent["amount"], intent["currency"]),
    )


def _refund(refund: Any) -> RefundResult:
    return RefundResult(
        refund_id=refund["id"],
        payment_intent_id=refund["payment_intent"],
        status=refund["status"],
        amount=_money(refund["amount"], refund["currency"]),
    )


def _metadata(obj: Any) -> dict[str, str]:
    raw = getattr(obj, "metadata", None)
    return {str(k): str(v) for k, v in raw.to_dict().items()} if raw else {}


def _token_path(token_id: Secret) -> str:
    value = token_id.reveal()
    if not _TOKEN_ID.match(value):
        raise PermanentProviderError("invalid_request", "malformed payment token id")
    return f"/v1/shared_payment/issued_tokens/{value}"


def _card_usable(pm: Any, now: datetime) -> bool:
    card = getattr(pm, "card", None)
    if pm.type != "card" or card is None:
        return False
    return bool((card.exp_year, card.exp_month) >= (now.year, now.month))


class StripeAdapter:
    """Stripe through `stripe.StripeClient`; `base_url` None means api.stripe.com (real keys only)."""

    def __init__(
        self, *, api_key: str, base_url: str | None = None, http_client: httpx.AsyncClient | None = None
    ) -> None:
        self._http = stripe.HTTPXClient(timeout=30)
        self._owns_http = http_client is None
        # HTTPXClient builds its own AsyncClient and has no parameter for one; swap in the caller's
        # (shared pool, respx-mockable) or one on aiohttp's connections (quartermaster.http_transport).
        # The unused default never opened a connection.
        self._http._client_async = http_client or async_http_client()
        base = base_url.rstrip("/") if base_url else None
        addresses: Any = {"api": base, "connect": base, "files": base} if base else None
        self._client = stripe.StripeClient(
            api_key, http_client=self._http, base_addresses=addresses, max_network_retries=0
        )

    async def aclose(self) -> None:
        """Close the HTTP client if the adapter created it."""
        if self._owns_http:
            await self._http.close_async()  # type: ignore[no-untyped-call]

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except stripe.StripeError as exc:
            raise map_stripe_error(exc) from exc

    async def _raw(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        response = await self._call(lambda: self._client.raw_request_async(method, path, **params))
        return cast(dict[str, Any], response.data)

    async def find_or_create_customer(
        self, *, email: str, principal_id: str, idempotency_key: str
    ) -> Customer:
        """The principal's Customer by the exact `email` list filter (never search, which lags);
        created with `metadata[qm_principal_id]` when absent. The email is compared lower-cased."""
        email = email.strip().lower()
        found = await self._call(
            lambda: self._client.v1.customers.list_async(params={"email": email, "limit": 100})
        )
        if found.data:
            # several customers can share an email: prefer ours, else the oldest (lists are newest first)
            mine = [c for c in found.data if _metadata(c).get(PRINCIPAL_METADATA) == principal_id]
            chosen = mine[0] if mine else found.data[-1]
            return Customer(customer_id=chosen.id, created=False)
        created = await self._call(
            lambda: self._client.v1.customers.create_async(
                params={"email": email, "metadata": {PRINCIPAL_METADATA: principal_id}},
                options={"idempotency_key": idempotency_key},
            )
        )
        return Customer(customer_id=created.id, created=True)

    async def payment_method_status(self, *, customer_id: str) -> PaymentMethodStatus:
        """Is a card attached that has not expired? The most recently attached one is reported."""
        methods = await self._call(
            lambda: self._client.v1.payment_methods.list_async(
                params={"customer": customer_id, "type": "card", "limit": 100}
            )
        )
        now = datetime.now(UTC)
        usable = [pm for pm in methods.data if _card_usable(pm, now)]
        if not usable:
            return PaymentMethodStatus(has_payment_method=False)
        return PaymentMethodStatus(has_payment_method=True, payment_method_id=usable[0].id)

    async def create_setup_session(
        self, *, customer_id: str, idempotency_key: str, success_url: str, cancel_url: str,
        metadata: dict[str, str], currency: str = "usd",
    ) -> SetupSession:  # fmt: skip
        """A Checkout Session in setup mode; `metadata` goes on the session and on its SetupIntent,
        so either webhook (`checkout.session.completed`, `setup_intent.succeeded`) carries it."""
        session = await self._call(
            lambda: self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "setup",
                    "customer": customer_id,
                    "currency": currency,
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": metadata,
                    "setup_intent_data": {"metadata": metadata},
                },
                options={"idempotency_key": idempotency_key},
            )
        )
        if not session.url:
            raise PermanentProviderError("invalid_response", "Checkout Session without a URL")
        return SetupSession(session_id=session.id, url=session.url)

    async def issue_payment_token(
        self, *, customer_id: str, payment_method_id: str, seller: str, max_amount: Money,
        expires_at: datetime, idempotency_key: str, metadata: dict[str, str],
    ) -> PaymentToken:  # fmt: skip
        """A Shared Payment Token on the customer's payment method for one seller (the provider name
        goes in `seller_details[external_id]`), limited by `usage_limits` to `max_amount` in total
        until `expires_at`; `metadata` goes in `shared_metadata`, which the seller sees too."""
        if expires_at.tzinfo is None or expires_at <= datetime.now(UTC):
            raise PermanentProviderError(
                "invalid_request", "expires_at must be timezone-aware and in the future"
            )
        if max_amount.amount < 1:
            raise PermanentProviderError("invalid_request", "max_amount must be positive")
        pm = await self._call(lambda: self._client.v1.payment_methods.retrieve_async(payment_method_id))
        if pm.customer != customer_id:
            # never share a card that is not this principal's
            raise PermanentProviderError(
                "payment_method_mismatch", "payment method not attached to the customer"
            )
        limits = {
            "currency": max_amount.currency,
            "max_amount": max_amount.amount,
            "expires_at": int(expires_at.timestamp()),
        }
        data = await self._raw(
            "post", "/v1/shared_payment/issued_tokens",
            payment_method=payment_method_id, usage_limits=limits, seller_details={"external_id": seller},
            shared_metadata=metadata or None, idempotency_key=idempotency_key,
        )  # fmt: skip
        return _token(data)

    async def revoke_payment_token(self, *, token_id: Secret, idempotency_key: str) -> PaymentToken:
        """Deactivate the token (reason `revoked`); revoking an inactive token returns it unchanged."""
        path = _token_path(token_id) + "/revoke"
        return _token(await self._raw("post", path, idempotency_key=idempotency_key))

    async def get_payment_token(self, *, token_id: Secret) -> PaymentToken:
        """The token's status, limits and usage."""
        return _token(await self._raw("get", _token_path(token_id)))

    async def charge(
        self, *, token_id: Secret, amount: Money, idempotency_key: str, metadata: dict[str, str]
    ) -> ChargeResult:
        """A PaymentIntent confirmed with the granted token in `payment_method_data` (the seller's
        side; used by the simulated providers). If the response is lost (APIConnectionError), the
        PaymentIntent is looked up by `metadata[qm_charge_key]` first; only when none is found does
        the error surface as retryable, and the retry reuses the key, so Stripe replays rather than
        charging twice."""
        _token_path(token_id)  # validates the shape before it goes into a form body
        params: dict[str, Any] = {
            "amount": amount.amount,
            "currency": amount.currency,
            "payment_method_data": {"shared_payment_granted_token": token_id.reveal()},
            "confirm": True,
            "metadata": {**metadata, CHARGE_KEY_METADATA: idempotency_key},
            "idempotency_key": idempotency_key,
        }
        try:
            response = await self._client.raw_request_async("post", "/v1/payment_intents", **params)
        except stripe.APIConnectionError as exc:
            found = await self.list_charges(idempotency_key=idempotency_key)
            if not found:
                raise map_stripe_error(exc) from exc
            if found[0].status == "requires_payment_method":
                # the lost answer was a decline: the same outcome as the CardError it carried
                raise PaymentDeclinedError(
                    "payment_declined", "card declined (found by reconciliation)"
                ) from exc
            return found[0]
        except stripe.StripeError as exc:
            raise map_stripe_error(exc) from exc
        return _charge(cast(dict[str, Any], response.data))

    async def list_charges(self, *, idempotency_key: str) -> list[ChargeResult]:
        """PaymentIntents created with this charge key (via search; real Stripe's search can lag
        by a minute, so an empty answer right after a lost response is not proof of no charge)."""
        if "'" in idempotency_key or "\\" in idempotency_key:
            return []  # cannot be expressed in the search language; the retry's replay still holds
        query = f"metadata['{CHARGE_KEY_METADATA}']:'{idempotency_key}'"
        result = await self._call(
            lambda: self._client.v1.payment_intents.search_async(params={"query": query, "limit": 100})
        )
        return [_charge(intent) for intent in result.data]

    async def refund(
        self, *, payment_intent_id: str, idempotency_key: str, metadata: dict[str, str],
        amount: Money | None = None,
    ) -> RefundResult:  # fmt: skip
        """Refund a PaymentIntent (all that is left of it, or `amount`) once per idempotency key. A
        charge that is already fully refunded (`charge_already_refunded`, e.g. by an earlier key)
        counts as done: the refunds of the PaymentIntent are returned instead of an error."""
        params: dict[str, Any] = {"payment_intent": payment_intent_id, "metadata": metadata}
        if amount is not None:
            params["amount"] = amount.amount
        try:
            refund = await self._client.v1.refunds.create_async(
                params=cast(Any, params), options={"idempotency_key": idempotency_key}
            )
        except stripe.InvalidRequestError as exc:
            if exc.code != "charge_already_refunded":
                raise map_stripe_error(exc) from exc
            done = await self.list_refunds(payment_intent_id=payment_intent_id)
            if not done:
                raise map_stripe_error(exc) from exc
            return done[0]
        except stripe.StripeError as exc:
            raise map_stripe_error(exc) from exc
        return _refund(refund)

    async def list_refunds(self, *, payment_intent_id: str) -> list[RefundResult]:
        """The refunds of one PaymentIntent, newest first."""
        found = await self._call(
            lambda: self._client.v1.refunds.list_async(
                params={"payment_intent": payment_intent_id, "limit": 100}
            )
        )
        return [_refund(r) for r in found.data]
