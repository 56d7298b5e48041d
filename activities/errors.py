"""The activity boundary: adapter errors become `ApplicationError`s with a stable type.

Retryable adapter errors stay retryable (Temporal's retry policy owns retries); permanent ones are
non-retryable with an `ErrorCode` as their type. Messages carry codes, never response bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from temporalio.exceptions import ApplicationError

from models.errors import ErrorCode
from providers.errors import PermanentProviderError, ProviderError, RetryableProviderError

#: contract / Stripe codes that mean something specific to the agent
_CODES = {
    "invalid_configuration": ErrorCode.INVALID_CONFIGURATION,
    "terms_acceptance_required": ErrorCode.TERMS_ACCEPTANCE_REQUIRED,
    "payment_declined": ErrorCode.PAYMENT_DECLINED,
    "card_declined": ErrorCode.PAYMENT_DECLINED,
    "unknown_provider": ErrorCode.UNKNOWN_PROVIDER,
    "unknown_service": ErrorCode.UNKNOWN_SERVICE,
    "not_found": ErrorCode.NOT_FOUND,
    "resource_not_found": ErrorCode.NOT_FOUND,
    "currency_mismatch": ErrorCode.CURRENCY_MISMATCH,
    "update_not_allowed": ErrorCode.PLAN_CHANGE_NOT_ALLOWED,
    "constraint_violated": ErrorCode.PLAN_CHANGE_NOT_ALLOWED,
}


def permanent(code: ErrorCode, message: str) -> ApplicationError:
    return ApplicationError(message, type=str(code), non_retryable=True)


@contextmanager
def adapter_errors(step: str) -> Iterator[None]:
    """Map adapter exceptions raised inside the block; `step` names the call in messages."""
    try:
        yield
    except RetryableProviderError as exc:
        delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
        raise ApplicationError(
            f"{step}: {exc.code} (will retry)",
            type=str(ErrorCode.PROVIDER_UNAVAILABLE),
            next_retry_delay=delay,
        ) from exc
    except PermanentProviderError as exc:
        code = _CODES.get(exc.code, ErrorCode.PROVIDER_ERROR)
        raise ApplicationError(f"{step}: {exc.code}", type=str(code), non_retryable=True) from exc
    except ProviderError as exc:
        raise ApplicationError(f"{step}: {exc.code}", type=str(ErrorCode.PROVIDER_ERROR)) from exc
