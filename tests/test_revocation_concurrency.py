"""Revoking a full session's credentials keeps a bounded number of provider calls in flight.

A session holds up to 1,000 credentials. Sent all at once, the revocations made httpx's pool spend
quadratic time assigning requests to connections; on a slow machine the batch outran the activity's
60 s start-to-close, and every retry timed out again (found in CI). The activity now holds at most
REVOKE_CONCURRENCY calls in flight; a variant without the bound is shown to fail this test."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.testing import ActivityEnvironment

import activities.session_revocation as revocation
from activities.session_revocation import REVOKE_CONCURRENCY, SessionRevocationActivities
from models.session import CredentialRecord, RevokeCredentials
from providers.errors import PermanentProviderError

N = 1000


class CountingRevoker:
    """A provider that records every revocation and the most calls it ever had in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.revoked: list[str] = []

    async def revoke(self, *, provider: str, account_ref: str, credential_id: str) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if credential_id.endswith("-gone"):
                raise PermanentProviderError("credential_not_found", "no such credential")
            self.revoked.append(credential_id)
        finally:
            self.in_flight -= 1


def _request() -> RevokeCredentials:
    ids = [f"cred_{i}" + ("-gone" if i % 100 == 0 else "") for i in range(N)]
    return RevokeCredentials(
        session_id="s1",
        credentials=[CredentialRecord(provider="cloud", credential_id=c, account_ref="p1") for c in ids],
    )


async def _revoke_all(revoker: CountingRevoker) -> set[str]:
    acts = SessionRevocationActivities(client=None, revoker=revoker)  # type: ignore[arg-type]
    result = await ActivityEnvironment().run(acts.revoke_session_credentials, _request())
    assert result.failed == {}
    return set(result.revoked)


async def test_a_full_session_is_revoked_with_bounded_calls_in_flight() -> None:
    revoker = CountingRevoker()
    revoked = await _revoke_all(revoker)
    assert revoked == {c.credential_id for c in _request().credentials}  # the gone ones count as revoked
    assert len(revoker.revoked) == N - N // 100  # each live one reached the provider once
    assert 1 < revoker.most <= REVOKE_CONCURRENCY, revoker.most


async def test_the_bound_check_catches_a_revocation_that_sends_everything_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revocation, "REVOKE_CONCURRENCY", N)  # the unbounded variant
    revoker = CountingRevoker()
    await _revoke_all(revoker)
    assert revoker.most > REVOKE_CONCURRENCY  # what the test above refuses
