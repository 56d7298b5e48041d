"""Customers, payment methods, SetupIntents and Checkout Sessions (mode=setup) of the local Stripe."""

from __future__ import annotations

from typing import Any

from simulators.stripe.api_context import ApiContext, public
from simulators.stripe.objects import billing_details, card, complete
from simulators.stripe.wire import (
    StripeApiError,
    as_int,
    as_metadata,
    as_str,
    invalid,
    list_object,
    new_id,
    not_found,
    req_str,
)

#: Stripe's test payment method tokens: attaching one creates a real-looking card PaymentMethod
TEST_CARDS: dict[str, dict[str, Any]] = {
    "pm_card_visa": {"brand": "visa", "last4": "4242", "outcome": "succeeds"},
    "pm_card_chargeDeclined": {"brand": "visa", "last4": "0002", "outcome": "declines"},
}
SESSION_TTL_SECONDS = 24 * 3600


def _limit(params: dict[str, Any]) -> int:
    limit = as_int(params, "limit", required=False, minimum=1) or 10
    if limit > 100:
        raise invalid("limit must be at most 100", param="limit")
    return limit


def customer(ctx: ApiContext, ident: str) -> dict[str, Any]:
    found = ctx.store.get("customer", ident)
    if found is None:
        raise not_found("customer", ident, param="customer")
    return found


def create_customer(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    obj = {
        "id": new_id("cus_", 14),
        "object": "customer",
        "created": ctx.now(),
        "email": as_str(params, "email", required=False),
        "name": as_str(params, "name", required=False),
        "description": as_str(params, "description", required=False),
        "metadata": as_metadata(params),
        "balance": 0,
        "delinquent": False,
        "invoice_prefix": new_id("", 8).upper(),
        "invoice_settings": {
            "custom_fields": None, "default_payment_method": None, "footer": None,
            "rendering_options": None,
        },
        "next_invoice_sequence": 1,
        "preferred_locales": [],
        "tax_exempt": "none",
        "livemode": False,
    }  # fmt: skip
    return ctx.store.put(complete(obj))


def list_customers(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    email = as_str(params, "email", required=False)
    where = {"$.email": email} if email is not None else None  # exact and case-sensitive, like Stripe
    found = ctx.store.find("customer", where=where)
    limit = _limit(params)
    return list_object("/v1/customers", found[:limit], has_more=len(found) > limit)


def retrieve_customer(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    return customer(ctx, ident)


def attach_card(ctx: ApiContext, token: str, customer_id: str) -> dict[str, Any]:
    """Attach a test card token (`pm_card_visa`, ...) or an unattached PaymentMethod to a customer."""
    customer(ctx, customer_id)
    test_card = TEST_CARDS.get(token)
    if test_card is not None:
        pm: dict[str, Any] = complete(
            {
                "id": new_id("pm_"),
                "object": "payment_method",
                "type": "card",
                "created": ctx.now(),
                "allow_redisplay": "unspecified",
                "billing_details": billing_details(),
                "card": card(test_card["brand"], test_card["last4"]),
                "metadata": {},
                "livemode": False,
                "_outcome": test_card["outcome"],
            }
        )
    else:
        found = ctx.store.get("payment_method", token)
        if found is None:
            raise not_found("PaymentMethod", token, param="payment_method")
        if found.get("customer") not in (None, customer_id):
            raise invalid("The payment method is attached to another customer.", param="payment_method")
        pm = found
    pm["customer"] = customer_id
    ctx.store.put(pm)
    ctx.emit("payment_method.attached", pm)
    return pm


def attach_payment_method(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    return public(attach_card(ctx, ident, req_str(params, "customer")))


def list_payment_methods(
    ctx: ApiContext, params: dict[str, Any], customer_id: str | None = None
) -> dict[str, Any]:
    customer_id = customer_id or req_str(params, "customer")
    customer(ctx, customer_id)
    kind = as_str(params, "type", required=False)
    if kind not in (None, "card"):
        return list_object("/v1/payment_methods", [])
    found = [public(pm) for pm in ctx.store.find("payment_method", customer=customer_id)]
    limit = _limit(params)
    return list_object("/v1/payment_methods", found[:limit], has_more=len(found) > limit)


def retrieve_payment_method(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    found = ctx.store.get("payment_method", ident)
    if found is None:
        raise not_found("PaymentMethod", ident)
    return public(found)


def create_checkout_session(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("mode") != "setup":
        raise invalid("This local Stripe supports Checkout Sessions with mode=setup only.", param="mode")
    customer_id = req_str(params, "customer")
    customer(ctx, customer_id)
    success_url = as_str(params, "success_url")
    cancel_url = as_str(params, "cancel_url", required=False)
    metadata = as_metadata(params)
    intent_data = params.get("setup_intent_data") or {}
    if not isinstance(intent_data, dict):
        raise invalid("Invalid setup_intent_data", param="setup_intent_data")
    session_id = new_id("cs_test_", 40)
    currency = as_str(params, "currency", required=False)
    types = params.get("payment_method_types") or ["card"]
    if types != ["card"]:
        raise invalid("This local Stripe collects cards only.", param="payment_method_types")
    intent_id = new_id("seti_")
    intent = ctx.store.put(
        complete(
            {
                "id": intent_id,
                "object": "setup_intent",
                "created": ctx.now(),
                "customer": customer_id,
                "status": "requires_payment_method",
                "payment_method": None,
                "payment_method_types": types,
                "usage": "off_session",
                "client_secret": f"{intent_id}_secret_{new_id('', 24)}",
                "metadata": as_metadata(intent_data),
                "livemode": False,
            }
        )
    )
    session = {
        "id": session_id,
        "object": "checkout.session",
        "created": ctx.now(),
        "mode": "setup",
        "status": "open",
        "customer": customer_id,
        "customer_creation": None,
        "currency": currency,
        "setup_intent": intent["id"],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "url": f"{ctx.base_url}/checkout/{session_id}",
        "metadata": metadata,
        "payment_status": "no_payment_required",
        "payment_method_types": types,
        "payment_method_collection": "always",
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "custom_fields": [],
        "custom_text": {
            "after_submit": None, "shipping_address": None, "submit": None,
            "terms_of_service_acceptance": None,
        },
        "shipping_options": [],
        "billing_address_collection": "auto",
        "locale": None,
        "ui_mode": "hosted",
        "expires_at": ctx.now() + SESSION_TTL_SECONDS,
        "livemode": False,
    }  # fmt: skip
    return ctx.store.put(complete(session))


def retrieve_checkout_session(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    found = ctx.store.get("checkout.session", ident)
    if found is None:
        raise not_found("checkout.session", ident)
    return found


def retrieve_setup_intent(ctx: ApiContext, params: dict[str, Any], ident: str) -> dict[str, Any]:
    found = ctx.store.get("setup_intent", ident)
    if found is None:
        raise not_found("setup_intent", ident)
    return found


def complete_checkout(ctx: ApiContext, session_id: str, card_token: str) -> dict[str, Any]:
    """The human attached a card on the Checkout page: attach it, succeed the SetupIntent, complete
    the session, and emit the webhook events Stripe sends for this flow."""
    session = retrieve_checkout_session(ctx, {}, session_id)
    if session["status"] != "open":
        raise invalid("This Checkout Session is no longer open.", code="checkout_session_not_open")
    if ctx.now() >= session["expires_at"]:
        session["status"] = "expired"
        ctx.store.put(session)
        raise invalid("This Checkout Session has expired.", code="checkout_session_expired")
    if card_token not in TEST_CARDS:
        raise StripeApiError("card_error", "Unsupported test card.", code="invalid_card", param="card")
    pm = attach_card(ctx, card_token, session["customer"])
    intent = retrieve_setup_intent(ctx, {}, session["setup_intent"])
    intent.update(status="succeeded", payment_method=pm["id"])
    ctx.store.put(intent)
    ctx.emit("setup_intent.succeeded", intent)
    session["status"] = "complete"
    ctx.store.put(session)
    ctx.emit("checkout.session.completed", session)
    return session
