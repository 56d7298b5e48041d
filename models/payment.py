"""Stripe-side objects as the orchestrator sees them (see providers.stripe_adapter)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.money import Money
from models.secret import Secret


class Customer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    customer_id: str
    created: bool  # False when found by the exact email filter


class PaymentMethodStatus(BaseModel):
    has_payment_method: bool
    payment_method_id: str | None = None


class SetupSession(BaseModel):
    """A Checkout Session in setup mode: the human attaches a card at `url`."""

    session_id: str
    url: str


class PaymentToken(BaseModel):
    """A Shared Payment Token issued for one provider, limited to `max_amount`."""

    model_config = ConfigDict(extra="ignore")

    token_id: Secret  # the granted token is a payment credential: never shown, never logged
    status: Literal["active", "requires_action", "deactivated"]
    max_amount: Money
    expires_at: datetime
    deactivated_reason: str | None = None
    amount_captured: Money | None = None  # total charged with the token so far


class ChargeResult(BaseModel):
    payment_intent_id: str
    status: Literal["succeeded", "requires_action", "canceled", "processing", "requires_payment_method"]
    amount: Money


class RefundResult(BaseModel):
    """A refund of (part of) a PaymentIntent's charge."""

    refund_id: str
    payment_intent_id: str
    status: Literal["pending", "requires_action", "succeeded", "failed", "canceled"]
    amount: Money
