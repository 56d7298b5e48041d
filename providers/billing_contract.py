"""`RenewableProvider`: the contract's billing addition, beside `providers.contract.Provider`.

A provider that sells recurring prices lets the orchestrator charge each further period itself
(`POST /resources/{id}/renew`, docs/provider-contract.openapi.json), so every renewal goes through a
fresh Shared Payment Token under the principal's monthly cap. Kept apart from `Provider` so adapters
without recurring prices need not implement it."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from models.provider import Charge
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
    ) -> Charge: ...
