"""The adapters' short exception hierarchy. Foreign errors (httpx, stripe) are mapped into these at
the boundary with `raise X(...) from exc`; messages carry a stable code and never a response body."""

from __future__ import annotations


class ProviderError(Exception):
    """Base class. `code` is the contract's stable error code (e.g. `terms_acceptance_required`)."""

    def __init__(self, code: str, message: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status


class RetryableProviderError(ProviderError):
    """Transient: 429, 5xx, timeouts, connection failures. Safe to retry with the same idempotency key."""

    def __init__(
        self, code: str, message: str = "", *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message, status=status)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Will fail the same way again: bad input, refused identity, conflict, decline."""


class PaymentDeclinedError(PermanentProviderError):
    """The card was declined (Stripe `CardError`, HTTP 402): never retried; the human must act."""

    def __init__(
        self,
        code: str = "payment_declined",
        message: str = "",
        *,
        status: int | None = 402,
        decline_code: str | None = None,
    ) -> None:
        super().__init__(code, message, status=status)
        self.decline_code = decline_code
