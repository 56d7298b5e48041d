"""Shared Payment Tokens (issued tokens, and the granted-token view the seller retrieves) and
PaymentIntents confirmed with a granted token (`payment_method_data[shared_payment_granted_token]`).

A token's `usage_limits.max_amount` bounds the total captured with it over its lifetime; a token whose
limit is fully used becomes `deactivated` / `consumed`."""

from __future__ import annotations

import re
from typing import Any

from simulators.stripe.api_context import ApiContext, public
from simulators.stripe.objects import billing_details, complete
from simulators.stripe.wire import (
    StripeApiError,
    as_int,
    as_metadata,
    as_str,
    invalid,
    list_object,
    new_id,
    not_found,
    req_int,
    req_str,
    search_object,
)

_CURRENCY = re.compile(r"^[a-z]{3}$")
_CLAUSE = re.compile(r"""^(?:metadata\['([^']+)'\]|(status|currency)):'([^']*)'$""")


def _token(
    ctx: ApiContext, ident: str, param: str = "id", kind: str = "shared_payment.issued_token"
) -> dict[str, Any]:
    token = ctx.store.get("shared_payment.issued_token", ident)
    if token is None:
        raise not_found(kind, ident, param=param)
    limits = token["usage_limits"]
    # expiry is observed lazily, when the token is next read
    if token["status"] == "active" and limits.get("expires_at") and ctx.now() >= limits["expires_at"]:
        token.update(status="deactivated", deactivated_reason="expired", deactivated_at=limits["expires_at"])
        ctx.store.put(token)
    return token


def issue_token(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    pm_id = req_str(params, "payment_method")
    pm = ctx.store.get("payment_method", pm_id)
    if pm is None:
        raise not_found("PaymentMethod", pm_id, param="payment_method")
    if not pm.get("customer"):
        raise invalid("The payment method must be attached to a customer.", param="payment_method")
    limits = params.get("usage_limits")
    if not isinstance(limits, dict):
        raise invalid("Missing required param: usage_limits.", param="usage_limits", code="parameter_missing")
    currency = req_str(limits, "currency")
    if not _CURRENCY.match(currency):
        raise invalid("Invalid currency", param="usage_limits[currency]")
    max_amount = as_int(limits, "max_amount", minimum=1)
    expires_at = as_int(limits, "expires_at", required=False)
    if expires_at is not None and expires_at <= ctx.now():
        raise invalid("usage_limits[expires_at] must be in the future.", param="usage_limits[expires_at]")
    setup_future_usage = params.get("setup_future_usage") or None
    if setup_future_usage not in (None, "on_session"):
        raise invalid("Invalid setup_future_usage", param="setup_future_usage")
    seller = params.get("seller_details")
    if not isinstance(seller, dict) or not (
        seller.get("external_id") or seller.get("network_business_profile")
    ):
        raise invalid(
            "Missing required param: seller_details.", param="seller_details", code="parameter_missing"
        )
    token = {
        "id": new_id("spt_"),
        "object": "shared_payment.issued_token",
        "created": ctx.now(),
        "deactivated_at": None,
        "deactivated_reason": None,
        "livemode": False,
        "next_action": None,
        "payment_method": pm_id,
        "return_url": as_str(params, "return_url", required=False),
        "risk_details": None,
        "seller_details": {
            "external_id": seller.get("external_id"),
            "network_business_profile": seller.get("network_business_profile"),
        },
        "setup_future_usage": setup_future_usage,
        "shared_metadata": as_metadata(params, "shared_metadata"),
        "status": "active",
        "usage_details": {"amount_captured": {"value": 0, "currency": currency}},
        "usage_limits": {"currency": currency, "expires_at": expires_at, "max_amount": max_amount},
        "use_stripe_sdk": params.get("use_stripe_sdk") == "true",
    }
    return ctx.store.put(complete(token))


def retrieve_token(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    return _token(ctx, ident)


def retrieve_granted_token(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    """The seller's view of a token (`shared_payment.granted_token`): the limits, usage and shared
    metadata, and the card's details, never the issuer's PaymentMethod id or seller details."""
    token = _token(ctx, ident, kind="shared_payment.granted_token")
    pm = ctx.store.get("payment_method", token["payment_method"]) or {}
    view = {
        "id": token["id"],
        "object": "shared_payment.granted_token",
        "agent_details": {"network_business_profile": None},  # one account here: no agent profile
        "created": token["created"],
        "deactivated_at": token["deactivated_at"],
        "deactivated_reason": token["deactivated_reason"],
        "livemode": False,
        "payment_method_details": _payment_method_details(pm),
        "risk_details": None,
        "shared_metadata": token["shared_metadata"],
        "usage_details": token["usage_details"],
        "usage_limits": token["usage_limits"],
    }
    return complete(view)


def _payment_method_details(pm: dict[str, Any]) -> dict[str, Any]:
    card = dict(pm.get("card") or {})
    for private in ("generated_from", "regulated_status", "three_d_secure_usage"):
        card.pop(private, None)  # a PaymentMethod's card has them; a granted token's card does not
    return {
        "type": pm.get("type", "card"),
        "affirm": None,
        "billing_details": pm.get("billing_details") or billing_details(),
        "card": card or None,
        "klarna": None,
        "link": None,
    }


def revoke_token(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    token = _token(ctx, ident)
    if token["status"] != "deactivated":
        token.update(status="deactivated", deactivated_reason="revoked", deactivated_at=ctx.now())
        ctx.store.put(token)
    return token


_PAYMENT_ERROR_FIELDS = (
    "advice_code charge code decline_code doc_url message network_advice_code network_decline_code param "
    "payment_intent payment_method payment_method_type request_log_url setup_intent source type"
).split()


def _refuse(message: str, code: str, param: str) -> StripeApiError:
    # raised after the request started executing: Stripe's idempotency layer replays it
    return StripeApiError("invalid_request_error", message, code=code, param=param, saved=True)


def create_payment_intent(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    amount = req_int(params, "amount", minimum=1)
    currency = req_str(params, "currency")
    param = "payment_method_data[shared_payment_granted_token]"
    data = params.get("payment_method_data")
    spt_id = data.get("shared_payment_granted_token") if isinstance(data, dict) else None
    if not spt_id or not isinstance(spt_id, str):
        raise invalid(
            "This local Stripe confirms PaymentIntents only with "
            "payment_method_data[shared_payment_granted_token].",
            param=param,
            code="parameter_missing",
        )
    if params.get("confirm") != "true":
        raise invalid("This local Stripe requires confirm=true.", param="confirm")
    capture_method = params.get("capture_method") or "automatic"
    if capture_method not in ("automatic", "automatic_async"):
        raise invalid("This local Stripe captures automatically only.", param="capture_method")
    confirmation_method = params.get("confirmation_method") or "automatic"
    if confirmation_method not in ("automatic", "manual"):
        raise invalid("Invalid confirmation_method", param="confirmation_method")
    types = params.get("payment_method_types") or ["card"]
    if types != ["card"]:
        raise invalid("This local Stripe charges cards only.", param="payment_method_types")
    metadata = as_metadata(params)
    token = _token(ctx, spt_id, param=param, kind="shared_payment.granted_token")
    if token["status"] != "active":
        reason = token.get("deactivated_reason") or token["status"]
        raise _refuse(
            f"The shared payment token is not active ({reason}).", "shared_payment_token_inactive", param
        )
    limits = token["usage_limits"]
    if currency != limits["currency"]:
        raise _refuse(
            "The currency differs from the shared payment token's currency.",
            "shared_payment_token_currency_mismatch",
            "currency",
        )
    remaining = limits["max_amount"] - ctx.store.captured(spt_id)
    if amount > remaining:
        raise _refuse(
            f"The amount exceeds the shared payment token's limit ({max(remaining, 0)} left).",
            "shared_payment_token_limit_exceeded",
            "amount",
        )
    pm = ctx.store.get("payment_method", token["payment_method"]) or {}
    intent_id = new_id("pi_")
    intent: dict[str, Any] = complete(
        {
            "id": intent_id,
            "object": "payment_intent",
            "created": ctx.now(),
            "amount": amount,
            "amount_capturable": 0,
            "currency": currency,
            "capture_method": capture_method,
            "confirmation_method": confirmation_method,
            "client_secret": f"{intent_id}_secret_{new_id('', 24)}",
            "customer": None,  # the seller's PaymentIntent does not see the buyer's customer
            "description": as_str(params, "description", required=False),
            "receipt_email": as_str(params, "receipt_email", required=False),
            "metadata": metadata,
            "payment_method": token["payment_method"],
            "payment_method_types": types,
            "livemode": False,
            "_shared_payment_granted_token": spt_id,
        }
    )
    charge = complete(
        {
            "id": new_id("ch_"),
            "object": "charge",
            "created": ctx.now(),
            "amount": amount,
            "amount_captured": 0,
            "amount_refunded": 0,
            "billing_details": pm.get("billing_details") or billing_details(),
            "currency": currency,
            "disputed": False,
            "payment_intent": intent["id"],
            "payment_method": token["payment_method"],
            "metadata": metadata,
            "refunded": False,
            "livemode": False,
        }
    )
    intent["latest_charge"] = charge["id"]
    if pm.get("_outcome") == "declines":
        charge.update(status="failed", paid=False, captured=False, failure_code="card_declined")
        intent.update(status="requires_payment_method", amount_received=0)
        intent["last_payment_error"] = {
            **dict.fromkeys(_PAYMENT_ERROR_FIELDS),
            "type": "card_error",
            "charge": charge["id"],
            "code": "card_declined",
            "decline_code": "generic_decline",
            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
            "message": "Your card was declined.",
            "payment_method": public(pm),
            "payment_method_type": "card",
        }
        ctx.store.put(charge)
        ctx.store.put(intent)
        raise StripeApiError(
            "card_error",
            "Your card was declined.",
            code="card_declined",
            saved=True,
            extra={"decline_code": "generic_decline", "charge": charge["id"], "payment_intent": intent},
        )
    charge.update(status="succeeded", paid=True, captured=True, amount_captured=amount)
    intent.update(status="succeeded", amount_received=amount)
    ctx.store.put(charge)
    ctx.store.put(intent)
    ctx.store.add_capture(spt_id, intent["id"], amount, ctx.now())
    token["usage_details"]["amount_captured"]["value"] = ctx.store.captured(spt_id)
    if amount == remaining:
        token.update(status="deactivated", deactivated_reason="consumed", deactivated_at=ctx.now())
    ctx.store.put(token)
    return intent


def retrieve_payment_intent(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    found = ctx.store.get("payment_intent", ident)
    if found is None:
        raise not_found("payment_intent", ident)
    return found


def list_payment_intents(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    found = ctx.store.find("payment_intent")
    limit = min(as_int(params, "limit", required=False, minimum=1) or 10, 100)
    return list_object("/v1/payment_intents", found[:limit], has_more=len(found) > limit)


def search_payment_intents(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of Stripe's search language reconciliation needs: `metadata['k']:'v'`,
    `status:'x'`, `currency:'x'`, joined with AND. (Real Stripe's search lags; this one does not.)"""
    query = req_str(params, "query")
    where: dict[str, str] = {}
    for clause in query.split(" AND "):
        match = _CLAUSE.match(clause.strip())
        if match is None:
            raise invalid(
                "This local Stripe supports only metadata['k']:'v', status and currency clauses "
                "joined by AND.",
                param="query",
            )
        key, field, value = match.groups()
        where[f'$.metadata."{key}"' if key else f"$.{field}"] = value
    return search_object("/v1/payment_intents/search", ctx.store.find("payment_intent", where=where)[:100])


def list_charges(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    intent = params.get("payment_intent")
    where = {"$.payment_intent": intent} if isinstance(intent, str) and intent else None
    found = ctx.store.find("charge", where=where)
    limit = min(as_int(params, "limit", required=False, minimum=1) or 10, 100)
    return list_object("/v1/charges", found[:limit], has_more=len(found) > limit)


def public_token(token: dict[str, Any]) -> dict[str, Any]:
    return public(token)


def create_refund(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """Refund a succeeded PaymentIntent, all of it or `amount` of it; never more than it has left."""
    pi_id = req_str(params, "payment_intent")
    intent = ctx.store.get("payment_intent", pi_id)
    if intent is None:
        raise not_found("payment_intent", pi_id, param="payment_intent")
    if intent.get("status") != "succeeded":
        raise invalid("This PaymentIntent has no successful charge to refund.", param="payment_intent")
    received = int(intent.get("amount_received") or 0)
    already = int(intent.get("_amount_refunded") or 0)
    left = received - already
    amount = as_int(params, "amount", required=False, minimum=1)
    amount = left if amount is None else amount
    if left <= 0:
        raise _refuse(
            f"Charge {intent.get('latest_charge')} has already been refunded.",
            "charge_already_refunded",
            "payment_intent",
        )
    if amount > left:
        raise invalid(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})", param="amount"
        )
    reason = params.get("reason") or None
    if reason is not None and reason not in ("duplicate", "fraudulent", "requested_by_customer"):
        raise invalid("Invalid reason", param="reason")
    refund = complete({
        "id": new_id("re_"),
        "object": "refund",
        "created": ctx.now(),
        "amount": amount,
        "currency": intent["currency"],
        "payment_intent": pi_id,
        "charge": intent.get("latest_charge"),
        "metadata": as_metadata(params),
        "reason": reason,
        "status": "succeeded",
    })  # fmt: skip
    ctx.store.put(refund)
    intent["_amount_refunded"] = already + amount
    ctx.store.put(intent)
    charge = ctx.store.get("charge", str(intent.get("latest_charge")))
    if charge is not None:
        charge["amount_refunded"] = already + amount
        charge["refunded"] = already + amount >= received
        ctx.store.put(charge)
        ctx.emit("charge.refunded", charge)
    return refund


def retrieve_refund(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    found = ctx.store.get("refund", ident)
    if found is None:
        raise not_found("refund", ident)
    return found


def list_refunds(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    intent = params.get("payment_intent")
    where = {"$.payment_intent": intent} if isinstance(intent, str) and intent else None
    found = ctx.store.find("refund", where=where)
    limit = min(as_int(params, "limit", required=False, minimum=1) or 10, 100)
    return list_object("/v1/refunds", found[:limit], has_more=len(found) > limit)
