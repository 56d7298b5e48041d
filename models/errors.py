"""Stable error codes. Agents branch on these; never rename one, only add."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # bad input (CLI exit code 2)
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_PROVIDER = "UNKNOWN_PROVIDER"
    UNKNOWN_SERVICE = "UNKNOWN_SERVICE"
    INVALID_CONFIGURATION = "INVALID_CONFIGURATION"
    PRICE_ABOVE_MAXIMUM = "PRICE_ABOVE_MAXIMUM"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    NOT_FOUND = "NOT_FOUND"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    #: a worker or API replica whose key file differs from the deployment's published key set
    KEYS_MISMATCH = "KEYS_MISMATCH"
    #: a plan change the catalog's `allowed_updates` or `constraints` do not permit
    PLAN_CHANGE_NOT_ALLOWED = "PLAN_CHANGE_NOT_ALLOWED"
    # waiting for a human (CLI exit code 3)
    TERMS_ACCEPTANCE_REQUIRED = "TERMS_ACCEPTANCE_REQUIRED"
    PAYMENT_METHOD_REQUIRED = "PAYMENT_METHOD_REQUIRED"
    OAUTH_CONSENT_REQUIRED = "OAUTH_CONSENT_REQUIRED"
    PURCHASE_APPROVAL_REQUIRED = "PURCHASE_APPROVAL_REQUIRED"
    SPEND_LIMIT_REACHED = "SPEND_LIMIT_REACHED"
    LIMIT_CHANGE_APPROVAL_REQUIRED = "LIMIT_CHANGE_APPROVAL_REQUIRED"
    SESSION_APPROVAL_REQUIRED = "SESSION_APPROVAL_REQUIRED"
    UNFREEZE_APPROVAL_REQUIRED = "UNFREEZE_APPROVAL_REQUIRED"
    INFORMATION_REQUIRED = "INFORMATION_REQUIRED"
    # refusals and failures (CLI exit code 1)
    APPROVAL_DENIED = "APPROVAL_DENIED"
    APPROVAL_TIMED_OUT = "APPROVAL_TIMED_OUT"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    #: what the human was shown (price, configuration, cap effect...) is no longer what is pending
    APPROVAL_CHANGED = "APPROVAL_CHANGED"
    #: approving this kind happens elsewhere (the Checkout page, the provider's consent page)
    APPROVAL_HANDED_ON = "APPROVAL_HANDED_ON"
    SESSION_INVALID = "SESSION_INVALID"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    SESSION_REVOKED = "SESSION_REVOKED"
    SERVICE_NOT_ALLOWED = "SERVICE_NOT_ALLOWED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    #: the acting agent's monthly limit (over every provider) has no room for the purchase
    AGENT_MONTHLY_LIMIT_EXCEEDED = "AGENT_MONTHLY_LIMIT_EXCEEDED"
    #: the purchase costs more than the agent's per-purchase maximum
    TRANSACTION_LIMIT_EXCEEDED = "TRANSACTION_LIMIT_EXCEEDED"
    #: the agent already made its allowed number of purchases in the last hour
    VELOCITY_LIMIT_EXCEEDED = "VELOCITY_LIMIT_EXCEEDED"
    #: the session already holds its maximum of live provider credentials (models.session)
    CREDENTIAL_LIMIT_EXCEEDED = "CREDENTIAL_LIMIT_EXCEEDED"
    AGENT_FROZEN = "AGENT_FROZEN"
    IDENTITY_INVALID = "IDENTITY_INVALID"
    #: OAuth linking reached an account whose verified email is not the principal's
    ACCOUNT_IDENTITY_MISMATCH = "ACCOUNT_IDENTITY_MISMATCH"
    #: a request without a verified session (agents) or the API's proof (a human's own request)
    SESSION_REQUIRED = "SESSION_REQUIRED"
    #: a change of money or authority without a valid authority proof (models.authority)
    AUTHORITY_INVALID = "AUTHORITY_INVALID"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    TEMPORAL_UNAVAILABLE = "TEMPORAL_UNAVAILABLE"
    PORT_IN_USE = "PORT_IN_USE"
    # the API's trust boundary (CLI exit code 1): no or bad credentials, or a caller without the right
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    LOGIN_INVALID = "LOGIN_INVALID"
    #: an approval link that is forged, expired, already used or for another approval or human
    LINK_INVALID = "LINK_INVALID"
    #: a page form without the token of the page it came from
    CSRF_INVALID = "CSRF_INVALID"
    RATE_LIMITED = "RATE_LIMITED"
    API_UNAVAILABLE = "API_UNAVAILABLE"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"


BAD_INPUT = frozenset(
    {
        ErrorCode.INVALID_REQUEST,
        ErrorCode.UNKNOWN_PROVIDER,
        ErrorCode.UNKNOWN_SERVICE,
        ErrorCode.INVALID_CONFIGURATION,
        ErrorCode.PRICE_ABOVE_MAXIMUM,
        ErrorCode.CURRENCY_MISMATCH,
        ErrorCode.NOT_FOUND,
        ErrorCode.IDEMPOTENCY_CONFLICT,
        ErrorCode.BODY_TOO_LARGE,
        ErrorCode.KEYS_MISMATCH,
        ErrorCode.PLAN_CHANGE_NOT_ALLOWED,
    }
)
WAITING_FOR_HUMAN = frozenset(
    {
        ErrorCode.TERMS_ACCEPTANCE_REQUIRED,
        ErrorCode.PAYMENT_METHOD_REQUIRED,
        ErrorCode.OAUTH_CONSENT_REQUIRED,
        ErrorCode.PURCHASE_APPROVAL_REQUIRED,
        ErrorCode.SPEND_LIMIT_REACHED,
        ErrorCode.INFORMATION_REQUIRED,
        ErrorCode.LIMIT_CHANGE_APPROVAL_REQUIRED,
        ErrorCode.SESSION_APPROVAL_REQUIRED,
        ErrorCode.UNFREEZE_APPROVAL_REQUIRED,
        ErrorCode.APPROVAL_HANDED_ON,
    }
)


#: a verified "no", or a request that ended undone (CLI exit code 4)
REFUSED = frozenset(
    {
        ErrorCode.APPROVAL_DENIED,
        ErrorCode.APPROVAL_TIMED_OUT,
        ErrorCode.APPROVAL_REJECTED,
        ErrorCode.APPROVAL_CHANGED,
        ErrorCode.SESSION_INVALID,
        ErrorCode.SESSION_EXPIRED,
        ErrorCode.SESSION_REVOKED,
        ErrorCode.SERVICE_NOT_ALLOWED,
        ErrorCode.BUDGET_EXCEEDED,
        ErrorCode.AGENT_MONTHLY_LIMIT_EXCEEDED,
        ErrorCode.TRANSACTION_LIMIT_EXCEEDED,
        ErrorCode.VELOCITY_LIMIT_EXCEEDED,
        ErrorCode.CREDENTIAL_LIMIT_EXCEEDED,
        ErrorCode.AGENT_FROZEN,
        ErrorCode.IDENTITY_INVALID,
        ErrorCode.PAYMENT_DECLINED,
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.FORBIDDEN,
        ErrorCode.LOGIN_INVALID,
        ErrorCode.SESSION_REQUIRED,
        ErrorCode.AUTHORITY_INVALID,
        ErrorCode.LINK_INVALID,
        ErrorCode.CSRF_INVALID,
    }
)


#: Stripe Projects' CLI codes with the same meaning (docs/cli.md): agents written for either can branch
STRIPE_PROJECTS_ALIASES: dict[ErrorCode, str] = {
    ErrorCode.TERMS_ACCEPTANCE_REQUIRED: "TOS_ACCEPTANCE_REQUIRED",
    ErrorCode.OAUTH_CONSENT_REQUIRED: "PROVIDER_NOT_LINKED",
    ErrorCode.UNAUTHENTICATED: "BROWSER_AUTH_REQUIRED",
    ErrorCode.UNKNOWN_ERROR: "UNKNOWN_ERROR",
}


def code_of(value: str | None) -> ErrorCode:
    """The ErrorCode named `value`, or UNKNOWN_ERROR for anything else (a result's code is data)."""
    if value is not None and value in ErrorCode.__members__:
        return ErrorCode(value)
    for code, alias in STRIPE_PROJECTS_ALIASES.items():
        if value == alias:
            return code
    return ErrorCode.UNKNOWN_ERROR


def exit_code(code: ErrorCode) -> int:
    """The CLI's exit code for an error code: 2 bad input, 3 waiting for a human, 4 refused or undone,
    1 any other failure (0 is success)."""
    if code in BAD_INPUT:
        return 2
    if code in WAITING_FOR_HUMAN:
        return 3
    if code in REFUSED:
        return 4
    return 1


class QuartermasterError(Exception):
    """An error with a stable code. The message never contains secrets or response bodies."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
