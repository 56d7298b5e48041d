"""Every field Stripe shows on each object the local server returns (as stripe-python 16.1.0 and, for
Shared Payment Tokens, 16.1.0b1 declare them): a handler sets the fields it simulates and `complete`
shows every other one as null, as Stripe does. tests/test_stripe_contract.py checks these lists, and
the objects the server returns, against the SDK's resource classes."""

from __future__ import annotations

from typing import Any

_FIELDS = {
    "customer": """
        address balance business_name cash_balance created currency customer_account default_source
        deleted delinquent description discount email id individual_name invoice_credit_balance
        invoice_prefix invoice_settings livemode metadata name next_invoice_sequence object phone
        preferred_locales shipping sources subscriptions tax tax_exempt tax_ids test_clock
    """,
    "payment_method": """
        acss_debit affirm afterpay_clearpay alipay allow_redisplay alma amazon_pay au_becs_debit
        bacs_debit bancontact billie billing_details bizum blik boleto card card_present cashapp
        created crypto custom customer customer_account customer_balance eps fpx giropay grabpay id
        ideal interac_present kakao_pay klarna konbini kr_card link livemode mb_way metadata
        mobilepay multibanco naver_pay nz_bank_account object oxxo p24 pay_by_bank payco paynow
        paypal paypay payto pix promptpay radar_options revolut_pay samsung_pay satispay scalapay
        sepa_debit sequra sofort sunbit swish twint type upi us_bank_account wechat_pay zip
    """,
    "checkout.session": """
        adaptive_pricing after_expiration allow_promotion_codes allowed_payment_method_types
        amount_subtotal amount_total automatic_tax billing_address_collection branding_settings
        cancel_url client_reference_id client_secret collected_information consent
        consent_collection created currency currency_conversion custom_fields custom_text customer
        customer_account customer_creation customer_details customer_email discounts
        excluded_payment_method_types expires_at id integration_identifier invoice invoice_creation
        line_items livemode locale managed_payments metadata mode name_collection object
        optional_items origin_context payment_intent payment_link payment_method_collection
        payment_method_configuration_details payment_method_options payment_method_types
        payment_status permissions phone_number_collection presentment_details recovered_from
        redirect_on_completion return_url saved_payment_method_options setup_intent
        shipping_address_collection shipping_cost shipping_options status submit_type subscription
        success_url tax_id_collection total_details ui_mode url wallet_options
    """,
    "setup_intent": """
        allowed_payment_method_types application attach_to_self automatic_payment_methods
        cancellation_reason client_secret created customer customer_account description
        excluded_payment_method_types flow_directions id last_setup_error latest_attempt livemode
        managed_payments mandate metadata next_action object on_behalf_of payment_method
        payment_method_configuration_details payment_method_options payment_method_types
        single_use_mandate status usage
    """,
    "payment_intent": """
        allowed_payment_method_types amount amount_capturable amount_details amount_received
        application application_fee_amount automatic_payment_methods canceled_at cancellation_reason
        capture_method client_secret confirmation_method created currency customer customer_account
        description excluded_payment_method_types hooks id last_payment_error latest_charge livemode
        managed_payments metadata next_action object on_behalf_of payment_details payment_method
        payment_method_configuration_details payment_method_options payment_method_types
        payment_record presentment_details processing receipt_email review setup_future_usage
        shipping source statement_descriptor statement_descriptor_suffix status transfer_data
        transfer_group
    """,
    "charge": """
        amount amount_captured amount_refunded application application_fee application_fee_amount
        authorization_code balance_transaction billing_details calculated_statement_descriptor
        captured created currency customer description disputed failure_balance_transaction
        failure_code failure_message fraud_details id level3 livemode metadata object on_behalf_of
        outcome paid payment_intent payment_method payment_method_details presentment_details
        radar_options receipt_email receipt_number receipt_url refunded refunds review shipping
        source source_transfer statement_descriptor statement_descriptor_suffix status transfer
        transfer_data transfer_group
    """,
    "refund": """
        amount balance_transaction charge created currency customer customer_account description
        destination_details failure_balance_transaction failure_reason id instructions_email
        metadata next_action object payment_intent payment_method pending_reason presentment_details
        reason receipt_number source_transfer_reversal status transfer_reversal
    """,
    "shared_payment.issued_token": """
        created deactivated_at deactivated_reason id livemode next_action object payment_method
        return_url risk_details seller_details setup_future_usage shared_metadata status
        usage_details usage_limits use_stripe_sdk
    """,
    "shared_payment.granted_token": """
        agent_details created deactivated_at deactivated_reason id livemode object
        payment_method_details risk_details shared_metadata usage_details usage_limits
    """,
}
FIELDS: dict[str, tuple[str, ...]] = {kind: tuple(names.split()) for kind, names in _FIELDS.items()}


def complete(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with every field its kind declares; a field the handler did not set is null."""
    return {**dict.fromkeys(FIELDS[obj["object"]]), **obj}


def address() -> dict[str, Any]:
    return dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state"))


def billing_details(email: str | None = None) -> dict[str, Any]:
    return {"address": address(), "email": email, "name": None, "phone": None, "tax_id": None}


def card(brand: str, last4: str, *, exp_month: int = 12, exp_year: int = 2034) -> dict[str, Any]:
    """A card hash as a PaymentMethod shows it (test cards: no fingerprint of a real number)."""
    return {
        "brand": brand, "checks": {"address_line1_check": None, "address_postal_code_check": None,
                                   "cvc_check": "pass"},
        "country": "US", "description": None, "display_brand": brand, "exp_month": exp_month,
        "exp_year": exp_year, "fingerprint": None, "funding": "credit", "generated_from": None, "iin": None,
        "issuer": None, "last4": last4, "networks": {"available": [brand], "preferred": None},
        "regulated_status": "unregulated", "three_d_secure_usage": {"supported": True}, "wallet": None,
    }  # fmt: skip
