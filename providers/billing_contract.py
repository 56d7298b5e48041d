"""`RenewableProvider`: the contract's billing addition, beside `providers.contract.Provider`.

A provider that sells recurring prices lets the orchestrator charge each further period itself
(`POST /resources/{id}/renew`, docs/provider-contract.openapi.json), so every renewal goes through a
fresh Shared Payment Token under the principal's monthly cap, and changes plan in place
(`POST /resources/{id}/plan`) within the catalog's `allowed_updates`. Kept apart from `Provider` so adapters
without recurring prices need not implement it."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from models.provider import Charge, Resource
from models.secret import Secret


@runtime_checkable
class RenewableProvider(Protocol):
    async def renew_resource(
        self,
        *,
        account: Secret,
        resource_id: str,
        period: int,
        due: datetime,
        payment_token: Secret,
        idempotency_key: str,
        amount: int | None = None,
    ) -> Charge: ...

    async def change_plan(
        self,
        *,
        account: Secret,
        resource_id: str,
        service_id: str,
        amount: int | None,
        payment_token: Secret | None,
        idempotency_key: str,
    ) -> Resource: ...
