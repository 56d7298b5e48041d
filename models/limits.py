"""A principal's spending limits: a global monthly limit and per-provider limits (per-provider wins),
defaulting to the protocol's USD 100 per month per provider."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from models.ledger import LedgerView
from models.money import Money

DEFAULT_MONTHLY_LIMIT = Money(amount=10_000, currency="usd")
ProviderName = str


def limits_workflow_id(principal_id: str) -> str:
    return f"limits-{principal_id}"


class PrincipalLimits(BaseModel):
    principal_id: str
    global_limit: Money | None = None
    per_provider: dict[ProviderName, Money] = Field(default_factory=dict)
    #: increases with every applied change; ledgers ignore pushes older than what they hold
    version: int = 0
    applied_change_ids: list[str] = Field(default_factory=list)

    def for_provider(self, provider: str) -> Money:
        """The monthly limit for one provider: per-provider, else global, else USD 100."""
        return self.per_provider.get(provider) or self.global_limit or DEFAULT_MONTHLY_LIMIT

    def source_for(self, provider: str) -> Literal["provider", "global", "default"]:
        if provider in self.per_provider:
            return "provider"
        return "global" if self.global_limit is not None else "default"


class LimitChange(BaseModel):
    """Set the global limit (`provider` None) or one provider's limit. Only after a human approval."""

    model_config = ConfigDict(extra="forbid")

    change_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    principal_id: str
    provider: str | None = Field(default=None, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    limit: Money
    #: the approval that authorised it (`<workflow id>.limit_change` or `.spend_limit`)
    approval_id: str
    changed_at: datetime
    #: the worker's authority proof over this change (models.authority)
    proof: str | None = Field(default=None, max_length=200)


class LimitsStart(BaseModel):
    principal_id: str
    state: PrincipalLimits | None = None


class LimitChangeRequest(BaseModel):
    """Input of `LimitChangeWorkflow` (started by `qm billing set-limit`)."""

    principal_id: str
    principal_email: EmailStr
    provider: str | None = Field(default=None, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    limit: Money
    approval_timeout_seconds: int = Field(default=86_400, ge=1)
    #: the API's authority proof (the principal id and the email the code goes to belong together)
    proof: str | None = Field(default=None, max_length=200)


LimitChangeStatus = Literal["applied", "denied", "timed_out", "locked_out", "refused"]


class LimitChangeResult(BaseModel):
    status: LimitChangeStatus
    limits: PrincipalLimits | None = None


class ProviderSpend(BaseModel):
    provider: str
    limit_source: Literal["provider", "global", "default"]
    ledger: LedgerView


class SpendSummaryRequest(BaseModel):
    principal_id: str
    month: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    providers: list[str] = Field(default_factory=list)


class SpendSummary(BaseModel):
    """What `qm billing show` prints: per provider, limit / committed / reserved / remaining."""

    principal_id: str
    month: str
    limits: PrincipalLimits
    providers: list[ProviderSpend]
