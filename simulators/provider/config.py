"""How a simulated provider is configured, and the payment interface it charges through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from models.money import Money
from models.payment import ChargeResult
from models.secret import Secret


class PaymentCharger(Protocol):
    """Charges a Shared Payment Token (the Stripe side; `providers.stripe_adapter.StripeAdapter` fits).

    Raises `providers.errors.PermanentProviderError` for a decline and `RetryableProviderError` when
    the outcome is unknown or Stripe is unavailable.
    """

    async def charge(
        self, *, token_id: Secret, amount: Money, idempotency_key: str, metadata: dict[str, str]
    ) -> ChargeResult: ...


@dataclass(frozen=True)
class SimulatorConfig:
    """One simulated provider. `public_url` is the orchestrator's: the assertions' issuer and the base
    of the only registered OAuth redirect URI."""

    provider: str
    data_dir: Path
    public_url: str
    jwks_url: str | None = None
    client_id: str = "quartermaster"
    #: the registered client's secret (introspection needs it); None: made once, kept in the data dir
    client_secret: str | None = None
    charger: PaymentCharger | None = None
    #: the longest TTL a minted API credential gets, whatever is asked
    max_credential_ttl_seconds: int = 86_400
    access_token_ttl_seconds: int = 3600
    #: for fetching the JWKS; the app makes (and closes) its own when None
    http_client: httpx.AsyncClient | None = None

    @property
    def issuer(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return f"{self.issuer}/oauth/callback"

    @property
    def resolved_jwks_url(self) -> str:
        return self.jwks_url or f"{self.issuer}/.well-known/jwks.json"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "providers" / f"{self.provider}.sqlite"

    @property
    def client_secret_path(self) -> Path:
        return self.data_dir / "providers" / f"{self.provider}.client-secret"

    @property
    def seal_key_path(self) -> Path:
        return self.data_dir / "providers" / f"{self.provider}.key"
