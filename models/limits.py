"""A principal's spending limits: a global monthly limit and per-provider limits (per-provider wins),
defaulting to the protocol's USD 100 per month per provider; and, as layers under that cap, limits per
agent (spend per month, a per-purchase maximum, purchases per rolling hour), each set for one agent
or as the default for every agent (the agent's own value wins)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from models.ledger import LedgerLayer, LedgerView, parse_agent_ledger_id, parse_monthly_ledger_id
from models.money import MAX_MINOR_UNITS, Money
from models.request import AgentName

DEFAULT_MONTHLY_LIMIT = Money(amount=10_000, currency="usd")
ProviderName = str


def limits_workflow_id(principal_id: str) -> str:
    return f"limits-{principal_id}"


#: which limit a change sets: the monthly cap (global or one provider's) or one of the agent layers
LimitKind = Literal["monthly", "agent_monthly", "per_transaction", "velocity"]
AGENT_KINDS: frozenset[str] = frozenset({"agent_monthly", "per_transaction", "velocity"})
#: the most purchases per hour a velocity limit may allow (beyond it, it limits nothing)
MAX_PURCHASES_PER_HOUR = 10_000
#: fields added after histories were recorded: left out of the JSON form while at their defaults, so
#: an old change's authority proof (a MAC over that form) still verifies on replay
_NEW_CHANGE_FIELDS = {"kind": "monthly", "agent": None, "purchases_per_hour": None}


def _without_new_defaults(data: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in data.items() if k not in _NEW_CHANGE_FIELDS or v != _NEW_CHANGE_FIELDS[k]}


class AgentLimits(BaseModel):
    """The layers under the monthly cap for one agent (or the default for every agent)."""

    model_config = ConfigDict(extra="forbid")

    #: the agent's spend per calendar month (UTC), over every provider
    monthly: Money | None = None
    #: the most one purchase may cost
    per_transaction: Money | None = None
    #: purchases per rolling hour
    purchases_per_hour: int | None = Field(default=None, ge=1, le=MAX_PURCHASES_PER_HOUR)


AgentLimitSource = Literal["agent", "default", "none"]


class PrincipalLimits(BaseModel):
    principal_id: str
    global_limit: Money | None = None
    per_provider: dict[ProviderName, Money] = Field(default_factory=dict)
    #: the agent layers every agent gets unless its own entry sets that limit
    agent_default: AgentLimits = Field(default_factory=AgentLimits)
    per_agent: dict[str, AgentLimits] = Field(default_factory=dict)
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

    def for_agent(self, agent: str) -> AgentLimits:
        """The agent's layers: each limit from its own entry, else the default for every agent."""
        own = self.per_agent.get(agent, AgentLimits())
        default = self.agent_default
        return AgentLimits(
            monthly=own.monthly or default.monthly,
            per_transaction=own.per_transaction or default.per_transaction,
            purchases_per_hour=own.purchases_per_hour or default.purchases_per_hour,
        )

    def agent_source_for(self, agent: str, field: str) -> AgentLimitSource:
        if getattr(self.per_agent.get(agent, AgentLimits()), field) is not None:
            return "agent"
        return "default" if getattr(self.agent_default, field) is not None else "none"


def check_limit_target(
    kind: str, *, provider: str | None, agent: str | None, limit: Money | None, per_hour: int | None
) -> None:
    """Raise ValueError unless the fields fit the kind (shared by the API body and the workflow input)."""
    if kind == "velocity":
        if per_hour is None or limit is not None:
            raise ValueError("a velocity limit is a number of purchases per hour, not an amount")
    elif limit is None or per_hour is not None:
        raise ValueError(f"a {kind} limit is an amount")
    if provider is not None and kind != "monthly":
        raise ValueError("only the monthly cap is per provider; agent limits name an agent")
    if agent is not None and kind == "monthly":
        raise ValueError("the monthly cap is per provider, not per agent")


class _LimitTarget(BaseModel):
    """What a change sets: `kind`, and `provider` (monthly) or `agent` (agent layers; None = every
    agent), and the value: `limit` (money) or `purchases_per_hour` (velocity)."""

    provider: str | None = Field(default=None, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    limit: Money | None = None
    kind: LimitKind = "monthly"
    agent: AgentName | None = None
    purchases_per_hour: int | None = Field(default=None, ge=1, le=MAX_PURCHASES_PER_HOUR)

    @model_validator(mode="after")
    def _one_value_for_the_kind(self) -> _LimitTarget:
        check_limit_target(
            self.kind,
            provider=self.provider,
            agent=self.agent,
            limit=self.limit,
            per_hour=self.purchases_per_hour,
        )
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        return _without_new_defaults(handler(self))

    def scope(self) -> str:
        """In words, for approvals and summaries."""
        who = f"agent {self.agent}" if self.agent else "every agent"
        if self.kind == "agent_monthly":
            return f"the monthly spending limit of {who}"
        if self.kind == "per_transaction":
            return f"the per-purchase maximum of {who}"
        if self.kind == "velocity":
            return f"the purchases per hour of {who}"
        return "the monthly spending limit for " + (
            f"provider {self.provider}" if self.provider else "every provider (global)"
        )

    def value(self) -> str:
        return f"{self.purchases_per_hour} per hour" if self.kind == "velocity" else str(self.limit)


def principal_of(layer: LedgerLayer) -> str | None:
    """The principal whose limits set this layer's limit (None for budgets, which carry their own)."""
    if layer.kind == "monthly":
        name = parse_monthly_ledger_id(layer.ledger_id)
        return name.principal_id if name else None
    if layer.kind in ("agent_monthly", "velocity"):
        agent = parse_agent_ledger_id(layer.ledger_id)
        return agent.principal_id if agent else None
    return None


def layer_limit(layer: LedgerLayer, limits: PrincipalLimits, currency: str) -> Money | None:
    """The limit the principal's limits give this layer; None = nothing to enforce (a velocity layer of
    an agent without one). An agent's month without a limit is still kept, unlimited, so a limit set
    mid-month counts what the agent already spent. A velocity limit is a count in `amount`."""
    if layer.kind == "monthly":
        name = parse_monthly_ledger_id(layer.ledger_id)
        return limits.for_provider(name.provider) if name else layer.limit
    agent = parse_agent_ledger_id(layer.ledger_id)
    if agent is None:
        return layer.limit
    own = limits.for_agent(agent.agent)
    if layer.kind == "agent_monthly":
        return own.monthly or Money(amount=MAX_MINOR_UNITS, currency=currency)
    if layer.kind == "velocity":  # the currency is only a placeholder
        count = own.purchases_per_hour
        return None if count is None else Money(amount=min(count, MAX_PURCHASES_PER_HOUR))
    return layer.limit


class LimitChange(_LimitTarget):
    """Set one limit (see `_LimitTarget`). Only after a human approval."""

    model_config = ConfigDict(extra="forbid")

    change_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    principal_id: str
    #: the approval that authorised it (`<workflow id>.limit_change` or `.spend_limit`)
    approval_id: str
    changed_at: datetime
    #: the worker's authority proof over this change (models.authority)
    proof: str | None = Field(default=None, max_length=200)


class LimitsStart(BaseModel):
    principal_id: str
    state: PrincipalLimits | None = None


class LimitChangeRequest(_LimitTarget):
    """Input of `LimitChangeWorkflow` (started by `qm billing set-limit`)."""

    principal_id: str
    principal_email: EmailStr
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


class AgentSpend(BaseModel):
    """One agent's layers this month: its monthly spend against its limit, its per-purchase maximum,
    and its purchases in the last rolling hour against its velocity limit."""

    agent: str
    limits: AgentLimits
    monthly_source: AgentLimitSource = "none"
    per_transaction_source: AgentLimitSource = "none"
    velocity_source: AgentLimitSource = "none"
    #: the agent's monthly ledger (its spend over every provider), when it spent this month; its own
    #: `limit` catches up with a change at the agent's next purchase, so read `limits` and `remaining`
    ledger: LedgerView | None = None
    #: the monthly limit less what the agent spent and holds this month (None without a limit)
    remaining: Money | None = None
    purchases_last_hour: int = 0


class SpendSummary(BaseModel):
    """What `qm billing show` prints: per provider, limit / committed / reserved / remaining; per
    agent, its layers under the cap."""

    principal_id: str
    month: str
    limits: PrincipalLimits
    providers: list[ProviderSpend]
    agents: list[AgentSpend] = Field(default_factory=list)
