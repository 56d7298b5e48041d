"""`create_account` when another request of the same principal makes the account during the call, on the
real simulator and a real SQLite store: the provider's 409 `account_exists` is answered with the
connection the other request saved; a 409 with no saved connection, or any other refusal, stands."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.accounts import AccountActivities
from models.provider import TermsAcceptance
from models.provisioning import AccountInput, ConnectionRef
from providers.contract import Provider
from providers.errors import PermanentProviderError
from providers.http_provider import HttpProvider
from providers.registry import ProviderRegistry
from providers.store import Store, open_store
from quartermaster.codec import SecretBox
from quartermaster.keys import Keyring
from tests.fixtures.providers import ProviderSims
from tests.fixtures.stack import new_email

PROVIDER = "cloud"


class RacingProvider:
    """The real adapter, with `before` run inside create_account just before the provider is called:
    what another request does while this one's call is in flight."""

    def __init__(self, real: HttpProvider, before: Callable[[], Awaitable[None]]) -> None:
        self.real, self.before = real, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def create_account(self, **kw: Any) -> Any:
        await self.before()
        return await self.real.create_account(**kw)


@pytest.fixture
def store(tmp_path: Path, keyring: Keyring) -> Store:
    return open_store(tmp_path / "store.sqlite", sealer=SecretBox(keyring))


async def _input(real: HttpProvider, email: str, request: str) -> AccountInput:
    terms = (await real.catalog()).provider.terms_version
    return AccountInput(
        provider=PROVIDER,
        principal_id=f"p-{email}",
        principal_email=email,
        customer_id=f"cus_{secrets.token_hex(6)}",
        idempotency_key=f"{request}-{secrets.token_hex(4)}:account",  # the simulators outlive a test
        terms=TermsAcceptance(
            terms_version=terms, accepted_at=datetime.now(UTC), accepted_by=f"p-{email}", approval_id=request
        ),
    )


def _activities(provider_sims: ProviderSims, store: Store, adapter: object) -> AccountActivities:
    return AccountActivities(
        registry=ProviderRegistry({PROVIDER: cast(Provider, adapter)}),
        store=store.connections,
        signer=provider_sims.signer,
        public_url="http://127.0.0.1:9",
    )


async def _accounts_at_provider(provider_sims: ProviderSims, email: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        state = (await http.get(f"{provider_sims.urls[PROVIDER]}/_sim/state")).json()
    return [a for a in state["accounts"] if a["email"] == email]


async def test_a_409_for_the_account_another_request_just_saved_uses_it(
    provider_sims: ProviderSims, store: Store
) -> None:
    email = new_email()
    async with httpx.AsyncClient() as http:
        real = HttpProvider(name=PROVIDER, base_url=provider_sims.urls[PROVIDER], http_client=http)
        other = _activities(provider_sims, store, real)
        theirs: list[ConnectionRef] = []

        async def other_request_creates() -> None:
            theirs.append(await other.create_account(await _input(real, email, "wf-first")))

        mine = _activities(provider_sims, store, RacingProvider(real, other_request_creates))
        conn = await ActivityEnvironment().run(mine.create_account, await _input(real, email, "wf-second"))
    assert (conn.account_id, conn.reused) == (theirs[0].account_id, True)
    assert [a["account_id"] for a in await _accounts_at_provider(provider_sims, email)] == [conn.account_id]


async def test_a_409_with_no_saved_connection_stands(provider_sims: ProviderSims, store: Store) -> None:
    """The broken variant of the reuse: an account at the provider this store knows nothing of (made
    elsewhere) is not taken over; the request fails PROVIDER_ERROR."""
    email = new_email()
    async with httpx.AsyncClient() as http:
        real = HttpProvider(name=PROVIDER, base_url=provider_sims.urls[PROVIDER], http_client=http)
        elsewhere = await _input(real, email, "wf-elsewhere")
        await real.create_account(
            assertion=provider_sims.signer.sign(subject="cus_x", email=email, audience=PROVIDER),
            terms=cast(TermsAcceptance, elsewhere.terms),
            idempotency_key=elsewhere.idempotency_key,
        )
        mine = _activities(provider_sims, store, real)
        with pytest.raises(ApplicationError) as err:
            await ActivityEnvironment().run(mine.create_account, await _input(real, email, "wf-mine"))
    assert err.value.type == "PROVIDER_ERROR" and "account_exists" in str(err.value)
    assert await store.connections.get_connection(principal_id=f"p-{email}", provider=PROVIDER) is None


async def test_another_refusal_stands_even_with_a_connection_saved(
    provider_sims: ProviderSims, store: Store
) -> None:
    """Only `account_exists` means "someone else made it": a different refusal is not turned into
    success because a connection appeared meanwhile (the first version of the reuse, which caught
    every refusal, fails this test and the first one)."""
    email = new_email()
    async with httpx.AsyncClient() as http:
        real = HttpProvider(name=PROVIDER, base_url=provider_sims.urls[PROVIDER], http_client=http)
        other = _activities(provider_sims, store, real)

        async def other_saves_then_provider_refuses() -> None:
            await other.create_account(await _input(real, email, "wf-first"))
            raise PermanentProviderError("invalid_configuration", "refused for another reason")

        mine = _activities(provider_sims, store, RacingProvider(real, other_saves_then_provider_refuses))
        with pytest.raises(ApplicationError) as err:
            await ActivityEnvironment().run(mine.create_account, await _input(real, email, "wf-second"))
    assert err.value.type == "INVALID_CONFIGURATION", str(err.value)
