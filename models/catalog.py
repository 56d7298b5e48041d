"""Discovery: what a provider publishes at `GET /catalog` (see docs/provider-contract.openapi.json)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.money import Money

ProviderName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")]
#: `<provider>/<service>`, e.g. `cloud/registrar:domain`
ServiceId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,30}/[a-z][a-z0-9:._-]{0,62}$")]
Interval = Literal["month", "year", "one_time"]


class Pricing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["free", "paid"]
    #: present when `type == "paid"`
    price: Money | None = None
    interval: Interval | None = None


class ServiceEntry(BaseModel):
    """A catalog entry (the protocol's `ProviderServiceDetail`)."""

    model_config = ConfigDict(extra="ignore")

    service_id: ServiceId
    kind: Literal["plan", "deployable"]
    description: str
    pricing: Pricing
    configuration_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    scopes: list[str] = Field(default_factory=list)
    reversible: bool = True
    llm_context: str = ""
    #: the services a resource of this one may change to in place (up- and downgrades)
    allowed_updates: list[ServiceId] = Field(default_factory=list)
    #: e.g. `{"max_resources": 1}`: at most that many resources of this service per account
    constraints: dict[str, Any] = Field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.service_id.split("/", 1)[0]


class ProviderInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ProviderName
    description: str
    tos_url: str
    terms_version: str
    privacy_policy_url: str
    website_url: str = ""


class Catalog(BaseModel):
    model_config = ConfigDict(extra="ignore")

    provider: ProviderInfo
    services: list[ServiceEntry]

    def service(self, service_id: str) -> ServiceEntry | None:
        return next((s for s in self.services if s.service_id == service_id), None)
