"""Human approvals: what a human is asked, how they answer, and what the workflow made of it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, TypeAdapter, model_validator

from models.money import Money
from models.secret import Secret

ApprovalKind = Literal[
    "terms",
    "payment_method",
    "oauth_consent",
    "purchase",
    "information",
    "spend_limit",
    "limit_change",
    "session_open",
    "agent_unfreeze",
]


#: kinds a code cannot settle: approving sends the human on, to the page that does it (the `details` key
#: holding its URL, and what to do there); denying is a decision like any other
HANDED_ON: dict[str, tuple[str, str]] = {
    "payment_method": ("checkout_url", "Add the card on the Checkout page"),
    "oauth_consent": ("authorization_url", "Continue to the provider"),
}


#: `details` keys only the human may see: whoever holds the OAuth authorization URL can consent with
#: another account; whoever holds the Checkout URL can attach a card to the principal's customer
HUMAN_ONLY_DETAILS = frozenset({"authorization_url", "checkout_url"})


#: the most approvals one page of `GET /v1/approvals` returns (about 300 KB of JSON; docs/decisions.md)
APPROVALS_PAGE_MAX = 500


class ApprovalRequest(BaseModel):
    """A question for the principal. No secrets: it is shown by `qm approvals` and queries.

    `human_only` names the `details` keys that go to the human's channel only; `for_agent()` is the
    request without them (what an agent may read: status, waiting results)."""

    model_config = ConfigDict(extra="forbid")

    approval_id: str
    kind: ApprovalKind
    workflow_id: str
    principal_id: str
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    requested_at: datetime
    expires_at: datetime
    human_only: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _mark_human_only(self) -> ApprovalRequest:
        marked = set(self.human_only) | (HUMAN_ONLY_DETAILS & set(self.details))
        self.human_only = sorted(marked)
        return self

    def for_agent(self) -> ApprovalRequest:
        """The request as an agent may see it: human-only details removed."""
        hidden = set(self.human_only)
        kept = {k: v for k, v in self.details.items() if k not in hidden}
        return self.model_copy(update={"details": kept})


#: a page of approvals as JSON bytes, both ways (built once: building an adapter costs more than a page)
APPROVAL_PAGE = TypeAdapter(list[ApprovalRequest])


class ApprovalNotice(BaseModel):
    """Input of the notifier: the request plus where to reach the human (inside encrypted payloads)."""

    request: ApprovalRequest
    principal_email: EmailStr


class ApprovalClosed(BaseModel):
    """Input of `close_approval`: the gate closed (decided, timed out, or satisfied otherwise)."""

    approval_id: str


class ApprovalTicket(BaseModel):
    """What the workflow keeps: only the keyed hash of the one-time code the human received."""

    code_hash: str
    #: the authority key the hash was made with; None = the unkeyed sha256 of older histories
    kid: str | None = None


class ApprovalDecision(BaseModel):
    """A human's answer, with the one-time code as proof that the human (not the agent) sent it."""

    model_config = ConfigDict(extra="forbid")

    approval_id: str
    decision: Literal["approve", "deny"]
    code: Secret
    reason: str | None = Field(default=None, max_length=500)
    #: for kind `information`: the missing fields
    information: dict[str, Any] | None = None
    #: for kind `spend_limit`: raise the provider's monthly limit instead of approving once
    raise_limit_to: Money | None = None
    #: who sent it, as the API authenticated them (wrong codes are counted per caller)
    caller: str | None = Field(default=None, max_length=200)
    #: the API's authority proof over everything above but the code (models.authority)
    proof: str | None = Field(default=None, max_length=200)


DecisionStatus = Literal[
    "ACCEPTED",
    "WRONG_CODE",
    "UNKNOWN_APPROVAL",
    "ALREADY_DECIDED",
    "LOCKED_OUT",
    # an empty code: never counted as a try
    "CODE_REQUIRED",
    # no valid proof that the API sent it (e.g. straight to Temporal): never counted as a try
    "UNAUTHENTICATED",
]


class DecisionOutcome(BaseModel):
    status: DecisionStatus
    approval_id: str
    #: wrong codes this caller may still send before they are locked out of this approval
    tries_left: int | None = None


def code_hash(key: bytes, approval_id: str, code: str) -> str:
    """HMAC-SHA256 with a server-side authority key over the approval id and the code: a code proves
    one approval only, and the hash in history allows no offline guess without the key."""
    from models.authority import code_mac

    return code_mac(key, approval_id, code)


def legacy_code_hash(approval_id: str, code: str) -> str:
    """The unkeyed sha256 of histories recorded before keyed hashes (verification only)."""
    import hashlib

    return hashlib.sha256(f"{approval_id}:{code}".encode()).hexdigest()
