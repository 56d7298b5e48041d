"""The `Provider` protocol: how the orchestrator talks to any provider that implements the contract in
docs/provider-contract.openapi.json. One generic httpx adapter (providers.http_provider) speaks it;
third-party adapters plug in through the entry-point group `quartermaster.providers`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from models.catalog import Catalog
from models.provider import (
    AccountLookup,
    Credential,
    Introspection,
    ProviderAccount,
    Resource,
    TermsAcceptance,
)
from models.secret import Secret


@runtime_checkable
class Provider(Protocol):
    name: str

    async def catalog(self) -> Catalog: ...

    async def lookup_account(self, *, assertion: Secret) -> AccountLookup: ...

    async def create_account(
        self, *, assertion: Secret, terms: TermsAcceptance, idempotency_key: str
    ) -> ProviderAccount: ...

    def authorization_url(
        self,
        *,
        client_id: str,
        redirect_uri: str,
        state: str,
        code_challenge: str,
        scopes: list[str],
        login_hint: str | None = None,
    ) -> str: ...

    async def exchange_code(
        self, *, client_id: str, code: Secret, code_verifier: Secret, redirect_uri: str
    ) -> ProviderAccount: ...

    async def create_resource(
        self,
        *,
        account: Secret,
        service_id: str,
        name: str,
        configuration: dict[str, Any],
        payment_token: Secret | None,
        idempotency_key: str,
    ) -> Resource: ...

    async def get_resource(self, *, account: Secret, resource_id: str) -> Resource: ...

    async def remove_resource(
        self, *, account: Secret, resource_id: str, idempotency_key: str
    ) -> Resource: ...

    async def submit_information(
        self, *, account: Secret, resource_id: str, information: dict[str, Any], idempotency_key: str
    ) -> Resource: ...

    async def mint_credential(
        self, *, account: Secret, resource_id: str, scopes: list[str], ttl_seconds: int, idempotency_key: str
    ) -> Credential: ...

    async def revoke_credential(self, *, account: Secret, credential_id: str) -> None: ...

    async def revoke_token(self, *, token: Secret, token_type_hint: str | None = None) -> None: ...

    async def introspect(self, *, token: Secret) -> Introspection: ...
