"""Every endpoint of the local Stripe, with the stripe-python definitions it is checked against:
the params TypedDict of the request and the resource class of the object it returns (beta for Shared
Payment Tokens and the PaymentIntent create that confirms with one, GA for the rest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the local server's template: `{id}` is one path segment
    sdk: Literal["ga", "beta"]
    params: str  # dotted name of the params TypedDict
    resource: str  # dotted name of the resource class of the object (of each item of a list)


P, C, S = "stripe.params.", "stripe.params.checkout.", "stripe.params.shared_payment."
ENDPOINTS = [
    Endpoint("GET", "/v1/customers", "ga", P + "CustomerListParams", "stripe.Customer"),
    Endpoint("POST", "/v1/customers", "ga", P + "CustomerCreateParams", "stripe.Customer"),
    Endpoint("GET", "/v1/customers/{id}", "ga", P + "CustomerRetrieveParams", "stripe.Customer"),
    Endpoint("GET", "/v1/customers/{id}/payment_methods", "ga", P + "CustomerListPaymentMethodsParams",
             "stripe.PaymentMethod"),
    Endpoint("GET", "/v1/payment_methods", "ga", P + "PaymentMethodListParams", "stripe.PaymentMethod"),
    Endpoint("GET", "/v1/payment_methods/{id}", "ga", P + "PaymentMethodRetrieveParams",
             "stripe.PaymentMethod"),
    Endpoint("POST", "/v1/payment_methods/{id}/attach", "ga", P + "PaymentMethodAttachParams",
             "stripe.PaymentMethod"),
    Endpoint("POST", "/v1/checkout/sessions", "ga", C + "SessionCreateParams", "stripe.checkout.Session"),
    Endpoint("GET", "/v1/checkout/sessions/{id}", "ga", C + "SessionRetrieveParams",
             "stripe.checkout.Session"),
    Endpoint("GET", "/v1/setup_intents/{id}", "ga", P + "SetupIntentRetrieveParams", "stripe.SetupIntent"),
    Endpoint("POST", "/v1/shared_payment/issued_tokens", "beta", S + "IssuedTokenCreateParams",
             "stripe.shared_payment.IssuedToken"),
    Endpoint("GET", "/v1/shared_payment/issued_tokens/{id}", "beta", S + "IssuedTokenRetrieveParams",
             "stripe.shared_payment.IssuedToken"),
    Endpoint("POST", "/v1/shared_payment/issued_tokens/{id}/revoke", "beta", S + "IssuedTokenRevokeParams",
             "stripe.shared_payment.IssuedToken"),
    Endpoint("GET", "/v1/shared_payment/granted_tokens/{id}", "beta", S + "GrantedTokenRetrieveParams",
             "stripe.shared_payment.GrantedToken"),
    Endpoint("POST", "/v1/payment_intents", "beta", P + "PaymentIntentCreateParams", "stripe.PaymentIntent"),
    Endpoint("GET", "/v1/payment_intents", "ga", P + "PaymentIntentListParams", "stripe.PaymentIntent"),
    Endpoint("GET", "/v1/payment_intents/search", "ga", P + "PaymentIntentSearchParams",
             "stripe.PaymentIntent"),
    Endpoint("GET", "/v1/payment_intents/{id}", "ga", P + "PaymentIntentRetrieveParams",
             "stripe.PaymentIntent"),
    Endpoint("GET", "/v1/charges", "ga", P + "ChargeListParams", "stripe.Charge"),
    Endpoint("POST", "/v1/refunds", "ga", P + "RefundCreateParams", "stripe.Refund"),
    Endpoint("GET", "/v1/refunds", "ga", P + "RefundListParams", "stripe.Refund"),
    Endpoint("GET", "/v1/refunds/{id}", "ga", P + "RefundRetrieveParams", "stripe.Refund"),
]  # fmt: skip


def key(method: str, path: str) -> str:
    return f"{method} {path}"
