"""What an agent asks for, and who is asking."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from models.catalog import ServiceId
from models.money import Money
from models.secret import Secret

#: client-chosen; the idempotency key of the whole request and part of the workflow ID
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,80}$")]
ResourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
AgentName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


class Actor(BaseModel):
    """Who is asking, as the API built it after authenticating the caller.

    An agent (`kind="agent"`) presents a session: the worker verifies `session_token` +
    `identity_token` and takes the principal and chain from them. A logged-in human's own request
    (`kind="human"`) carries the API's authority `proof` over the email, request and service
    (`quartermaster.crypto.authority.sign_human_actor`). Anything else is refused.
    """

    model_config = ConfigDict(extra="forbid")

    principal_email: EmailStr
    agent: AgentName
    session_token: Secret | None = None
    identity_token: Secret | None = None
    kind: Literal["agent", "human"] = "agent"
    proof: str | None = Field(default=None, max_length=200)


class ProvisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    service_id: ServiceId
    name: ResourceName
    configuration: dict[str, Any] = Field(default_factory=dict)
    #: the most the agent accepts to pay now (the first charge); None = the catalog price
    max_price: Money | None = None
    #: a budget for this request below the monthly caps
    budget: Money | None = None
    #: scopes the agent needs on the minted credential; empty = all the service offers
    scopes: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100
    )
    credential_ttl_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600
    actor: Actor

    @property
    def provider(self) -> str:
        return self.service_id.split("/", 1)[0]
