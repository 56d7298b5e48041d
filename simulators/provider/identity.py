"""Identity assertions as a provider checks them: the orchestrator's JWKS fetched over HTTP and cached,
`verify_assertion` for signature and claims, and a one-time `jti` so a captured assertion cannot be
replayed within its lifetime."""

from __future__ import annotations

import time
from typing import Any

import httpx

from providers.assertions import AssertionClaims, InvalidAssertionError, verify_assertion
from simulators.provider.store import SimulatorStore

JWKS_CACHE_SECONDS = 300.0
#: after an unknown key, fetch again at most this often (a rotated key appears; a forged one does not)
JWKS_REFETCH_SECONDS = 2.0


class IdentityError(Exception):
    """A refused assertion (401) or an unreachable key set (503); `code` is the contract's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class IdentityVerifier:
    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        http_client: httpx.AsyncClient,
        store: SimulatorStore,
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self._http = http_client
        self._store = store
        self._jwks: dict[str, Any] | None = None
        self._fetched_at = 0.0

    async def _key_set(self, *, refresh: bool = False) -> dict[str, Any]:
        age = time.monotonic() - self._fetched_at
        if self._jwks is not None and not refresh and age < JWKS_CACHE_SECONDS:
            return self._jwks
        try:
            response = await self._http.get(self.jwks_url, timeout=5.0)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            if self._jwks is not None:
                return self._jwks  # keep verifying with the last good keys
            raise IdentityError(
                503, "identity_unavailable", "the orchestrator's JWKS is unreachable"
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise IdentityError(503, "identity_unavailable", "the orchestrator's JWKS is malformed")
        self._jwks, self._fetched_at = doc, time.monotonic()
        return doc

    async def verify(self, token: str) -> AssertionClaims:
        """Signature, typ, iss, aud, exp, nbf; not yet the jti (see `consume`)."""
        try:
            return verify_assertion(
                token, jwks=await self._key_set(), issuer=self.issuer, audience=self.audience
            )
        except InvalidAssertionError as err:
            if err.code != "assertion_invalid" or time.monotonic() - self._fetched_at < JWKS_REFETCH_SECONDS:
                raise IdentityError(401, err.code, err.message) from err
        try:  # maybe signed with a key rotated in since the last fetch
            return verify_assertion(
                token, jwks=await self._key_set(refresh=True), issuer=self.issuer, audience=self.audience
            )
        except InvalidAssertionError as err:
            raise IdentityError(401, err.code, err.message) from err

    def consume(self, claims: AssertionClaims) -> None:
        """Use up the assertion's `jti`; a second use is `assertion_replayed`."""
        if not self._store.use_jti(claims.jti, claims.exp):
            raise IdentityError(401, "assertion_replayed", "this assertion was already used")
