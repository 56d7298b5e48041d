"""Stripe: the principal's customer, payment method checks, Checkout setup, payment tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from temporalio import activity

from activities.errors import adapter_errors
from models.payment import Customer, PaymentMethodStatus, RefundResult, SetupSession
from models.provisioning import IssuedToken, PaymentTokenInput, RefundInput
from models.secret import Secret
from providers.stripe_adapter import StripeAdapter

TOKEN_LIFETIME = timedelta(hours=1)


class ResolveCustomer(BaseModel):
    email: str
    principal_id: str
    idempotency_key: str


class SetupInput(BaseModel):
    customer_id: str
    workflow_id: str
    idempotency_key: str


class RevokeTokenInput(BaseModel):
    token_id: Secret
    idempotency_key: str


class PaymentActivities:
    def __init__(self, *, stripe: StripeAdapter, public_url: str) -> None:
        self._stripe = stripe
        self._public_url = public_url.rstrip("/")

    @activity.defn(name="resolve_customer")
    async def resolve_customer(self, inp: ResolveCustomer) -> Customer:
        with adapter_errors("stripe customer"):
            return await self._stripe.find_or_create_customer(
                email=inp.email, principal_id=inp.principal_id, idempotency_key=inp.idempotency_key
            )

    @activity.defn(name="payment_method_status")
    async def payment_method_status(self, customer_id: str) -> PaymentMethodStatus:
        with adapter_errors("stripe payment methods"):
            return await self._stripe.payment_method_status(customer_id=customer_id)

    @activity.defn(name="create_setup_session")
    async def create_setup_session(self, inp: SetupInput) -> SetupSession:
        with adapter_errors("stripe checkout"):
            return await self._stripe.create_setup_session(
                customer_id=inp.customer_id,
                idempotency_key=inp.idempotency_key,
                success_url=f"{self._public_url}/checkout/done",
                cancel_url=f"{self._public_url}/checkout/cancelled",
                metadata={"workflow_id": inp.workflow_id},
            )

    @activity.defn(name="issue_payment_token")
    async def issue_payment_token(self, inp: PaymentTokenInput) -> IssuedToken:
        """A token the provider can charge at most `amount` with: the reservation, not the cap."""
        # the workflow's expiry: recomputing it here would change the parameters of a retried call
        expires_at = inp.expires_at or datetime.now(UTC).replace(microsecond=0) + TOKEN_LIFETIME
        with adapter_errors("stripe payment token"):
            token = await self._stripe.issue_payment_token(
                customer_id=inp.customer_id,
                payment_method_id=inp.payment_method_id,
                seller=inp.provider,
                max_amount=inp.amount,
                expires_at=expires_at,
                idempotency_key=inp.idempotency_key,
                metadata=inp.metadata,
            )
        return IssuedToken(token_id=token.token_id, expires_at=token.expires_at)

    @activity.defn(name="revoke_payment_token")
    async def revoke_payment_token(self, inp: RevokeTokenInput) -> None:
        with adapter_errors("stripe revoke token"):
            await self._stripe.revoke_payment_token(
                token_id=inp.token_id, idempotency_key=inp.idempotency_key
            )

    @activity.defn(name="refund_charge")
    async def refund_charge(self, inp: RefundInput) -> RefundResult:
        """Refund what is left of a PaymentIntent, once per idempotency key."""
        with adapter_errors("stripe refund"):
            return await self._stripe.refund(
                payment_intent_id=inp.payment_intent_id,
                idempotency_key=inp.idempotency_key,
                metadata=inp.metadata,
            )
