"""Resources and credentials at providers, acting with the account credential from the store."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import adapter_errors, permanent
from models.errors import ErrorCode
from models.provider import Resource
from models.provisioning import (
    CreateResourceInput,
    IssuedCredential,
    MintInput,
    ResourceRef,
    RevokeCredentialInput,
    SubmitInformationInput,
)
from models.secret import Secret
from providers.registry import ProviderRegistry
from providers.store.interfaces import ConnectionStore


class RemoveInput(ResourceRef):
    idempotency_key: str


def env_prefix(provider: str) -> str:
    return provider.upper().replace("-", "_")


class ResourceActivities:
    def __init__(self, *, registry: ProviderRegistry, store: ConnectionStore) -> None:
        self._registry = registry
        self._store = store

    async def _account(self, principal_id: str, provider: str) -> Secret:
        conn = await self._store.get_connection(principal_id=principal_id, provider=provider)
        if conn is None:
            raise permanent(ErrorCode.NOT_FOUND, f"no connection to {provider} for this principal")
        return conn.credential

    @activity.defn(name="create_resource")
    async def create_resource(self, inp: CreateResourceInput) -> Resource:
        account = await self._account(inp.principal_id, inp.provider)
        with adapter_errors("create resource"):
            return await self._registry.get(inp.provider).create_resource(
                account=account,
                service_id=inp.service_id,
                name=inp.name,
                configuration=inp.configuration,
                payment_token=inp.payment_token,
                idempotency_key=inp.idempotency_key,
            )

    @activity.defn(name="resource_ready")
    async def resource_ready(self, ref: ResourceRef) -> Resource:
        """The resource once it left `pending`; while pending this fails retryably (the retry
        policy is the poll)."""
        with adapter_errors("read resource"):
            res = await self._registry.get(ref.provider).get_resource(
                account=await self._account(ref.principal_id, ref.provider), resource_id=ref.resource_id
            )
        if res.status == "pending":
            raise ApplicationError("resource still pending", type="ResourcePending")
        return res

    @activity.defn(name="submit_information")
    async def submit_information(self, inp: SubmitInformationInput) -> Resource:
        with adapter_errors("submit information"):
            return await self._registry.get(inp.ref.provider).submit_information(
                account=await self._account(inp.ref.principal_id, inp.ref.provider),
                resource_id=inp.ref.resource_id,
                information=inp.information,
                idempotency_key=inp.idempotency_key,
            )

    @activity.defn(name="remove_resource")
    async def remove_resource(self, inp: RemoveInput) -> Resource:
        with adapter_errors("remove resource"):
            return await self._registry.get(inp.provider).remove_resource(
                account=await self._account(inp.principal_id, inp.provider),
                resource_id=inp.resource_id,
                idempotency_key=inp.idempotency_key,
            )

    @activity.defn(name="mint_credential")
    async def mint_credential(self, inp: MintInput) -> IssuedCredential:
        ref = inp.ref
        with adapter_errors("mint credential"):
            cred = await self._registry.get(ref.provider).mint_credential(
                account=await self._account(ref.principal_id, ref.provider),
                resource_id=ref.resource_id,
                scopes=inp.scopes,
                ttl_seconds=inp.ttl_seconds,
                idempotency_key=inp.idempotency_key,
            )
        prefix = env_prefix(ref.provider)
        return IssuedCredential(
            credential_id=cred.credential_id,
            env={
                f"{prefix}_API_TOKEN": cred.token,
                f"{prefix}_ACCOUNT_ID": Secret(cred.account_id),
                f"{prefix}_RESOURCE_ID": Secret(ref.resource_id),
            },
            scopes=cred.scopes,
            expires_at=cred.expires_at,
        )

    @activity.defn(name="revoke_credential")
    async def revoke_credential(self, inp: RevokeCredentialInput) -> None:
        with adapter_errors("revoke credential"):
            await self._registry.get(inp.ref.provider).revoke_credential(
                account=await self._account(inp.ref.principal_id, inp.ref.provider),
                credential_id=inp.credential_id,
            )
