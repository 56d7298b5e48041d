"""Verifying agent identity tokens: Quartermaster's own attestor and trusted external attestors.

RFC 8725 hygiene: an algorithm allow-list per issuer, explicit `typ` for our tokens, `iss`, `aud`,
`exp`, `nbf`, `iat` and a bounded lifetime, 30 s clock skew. Replay: a token of a single-use issuer
(external OIDC tokens, RFC 7523 `jti`) is accepted once; a token of ours is refused once `qm run`
has retired it (its process exited). Every refusal is `IDENTITY_INVALID` with a message that never
repeats the token or its claims.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

from models.errors import ErrorCode, QuartermasterError
from providers.eddsa import public_jwk, verification_key_set
from providers.store.database import open_database
from providers.store.identity import SqlReplayGuard
from providers.store.interfaces import ReplayStore
from providers.store.migrations import migrate
from quartermaster.identity.attestation import IDENTITY_TYP, agent_from_spiffe_id, spiffe_id
from quartermaster.identity.keys import ACCEPTED_ALGORITHMS, SigningKeys
from quartermaster.identity.settings import AUDIENCE, MAX_IDENTITY_TTL_SECONDS, TrustedAttestor

LEEWAY_SECONDS = 30
MAX_TOKEN_CHARS = 8192
JWKS_CACHE_SECONDS = 300


def _refuse(message: str) -> QuartermasterError:
    return QuartermasterError(ErrorCode.IDENTITY_INVALID, message)


class ReplayGuard:
    """The store's record of identity token ids (`jti`) per issuer, consumed (single use) or retired,
    opened at `location` (`IdentitySettings.replay_db`: the store's path or URL), for synchronous
    callers that hold no `providers.store.Store` (`qm run`'s launcher, the API's retire route).
    `store` is the same record behind the async `ReplayStore` interface the verifier uses."""

    def __init__(self, location: str | Path) -> None:
        db = open_database(location)
        migrate(db)
        self.store = SqlReplayGuard(db)

    @classmethod
    def over(cls, store: SqlReplayGuard) -> ReplayGuard:
        """The same guard over an open store's `replay` (the API's: the store every replica shares)."""
        guard = cls.__new__(cls)
        guard.store = store
        return guard

    def consume(self, issuer: str, jti: str, exp: int, use_id: str) -> bool:
        """Record the one use of a single-use token. True when new, or when `use_id` is the same use
        (a retried activity); False for any other presentation."""
        return self.store.consume_now(issuer, jti, exp, use_id)

    def retire(self, issuer: str, jti: str, exp: int) -> None:
        """Mark a token dead before its expiry (its process ended): any later presentation is a replay."""
        self.store.retire_now(issuer, jti, exp)

    def is_retired(self, issuer: str, jti: str) -> bool:
        return self.store.is_retired_now(issuer, jti)


@dataclass(frozen=True)
class VerifiedIdentity:
    """An agent identity proven by a valid token."""

    agent: str
    #: `spiffe://<trust domain>/agent/<agent>`, whichever attestor vouched for it
    spiffe_id: str
    issuer: str
    jti: str
    expires_at: int
    external_subject: str | None = None
    measurement: dict[str, Any] | None = None
    #: the session the local attestor bound this process to (`qm_sid`), when it did
    bound_session: str | None = None


def _unverified_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    try:
        doc = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse("malformed token") from exc
    if not isinstance(doc, dict):
        raise _refuse("malformed token")
    return doc


class IdentityVerifier:
    """Verifies identity tokens from the local attestor (its public keys) and trusted external ones."""

    def __init__(
        self,
        *,
        trust_domain: str,
        local_issuer: str,
        local_keys: SigningKeys | KeySet | None,
        trusted: tuple[TrustedAttestor, ...] = (),
        replay: ReplayStore | ReplayGuard,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.local_issuer = local_issuer
        self._local = local_keys.key_set() if isinstance(local_keys, SigningKeys) else local_keys
        if isinstance(local_keys, SigningKeys):
            self._local_jwks: dict[str, Any] = local_keys.jwks()
        elif local_keys is not None:
            self._local_jwks = {
                "keys": [
                    public_jwk(k) if isinstance(k, OKPKey) else dict(k.as_dict(private=False))
                    for k in local_keys.keys
                ]
            }
        else:
            self._local_jwks = {"keys": []}
        self._trusted = {t.issuer: t for t in trusted}
        self._replay: ReplayStore = replay.store if isinstance(replay, ReplayGuard) else replay
        self._http = http
        self._jwks_cache: dict[str, tuple[float, KeySet]] = {}

    def local_jwks(self) -> dict[str, Any]:
        """The public keys this verifier checks the local attestor's tokens with (a JWKS document;
        empty when this deployment has no local attestor)."""
        return self._local_jwks

    async def _external_keys(self, attestor: TrustedAttestor) -> KeySet:
        cached = self._jwks_cache.get(attestor.issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            if attestor.jwks_file is not None:
                doc = json.loads(attestor.jwks_file.read_text())
            else:
                http = self._http or httpx.AsyncClient(timeout=5)
                try:
                    resp = await http.get(str(attestor.jwks_url))
                finally:
                    if self._http is None:
                        await http.aclose()
                if resp.status_code != 200:
                    raise _refuse("the attestor's key set is unavailable")
                doc = resp.json()
            keys = verification_key_set(doc)
        except (OSError, ValueError, JoseError, KeyError, TypeError, httpx.HTTPError) as exc:
            raise _refuse("the attestor's key set is unavailable") from exc
        self._jwks_cache[attestor.issuer] = (time.monotonic() + JWKS_CACHE_SECONDS, keys)
        return keys

    async def verify(self, token: str, *, use_id: str | None = None) -> VerifiedIdentity:
        """Verify `token`. `use_id` names this presentation (e.g. workflow + activity id) so a retried
        check of a single-use token is not taken for a replay; None = a presentation of its own."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise _refuse("not a compact JWS")
        issuer = _unverified_part(token, 1).get("iss")
        if not isinstance(issuer, str):
            raise _refuse("no issuer")
        attestor: TrustedAttestor | None = None
        if issuer == self.local_issuer and self._local is not None:
            keys, algorithms, max_life = self._local, list(ACCEPTED_ALGORITHMS), MAX_IDENTITY_TTL_SECONDS
        elif issuer in self._trusted:
            attestor = self._trusted[issuer]
            keys, algorithms = await self._external_keys(attestor), attestor.algorithms
            max_life = attestor.max_lifetime_seconds
        else:
            raise _refuse("unknown issuer")
        try:
            decoded = jwt.decode(token, keys, algorithms=algorithms)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise _refuse("signature, algorithm or key id refused") from exc
        typ = decoded.header.get("typ")
        if attestor is None and typ != IDENTITY_TYP:
            raise _refuse("wrong token type")
        if attestor is not None and typ not in (None, "JWT", "jwt", IDENTITY_TYP):
            raise _refuse("wrong token type")
        claims = decoded.claims
        sub, jti = claims.get("sub"), claims.get("jti")
        iat, exp, nbf = claims.get("iat"), claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not (isinstance(sub, str) and isinstance(jti, str) and jti):
            raise _refuse("missing subject or token id")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp, nbf)):
            raise _refuse("missing or malformed times")
        assert isinstance(iat, int) and isinstance(exp, int) and isinstance(nbf, int)
        audience = AUDIENCE if attestor is None else attestor.audience
        aud = claims.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise _refuse("wrong audience")
        now = int(time.time())
        if exp <= iat or exp - iat > max_life:
            raise _refuse("lifetime out of bounds")
        if iat > now + LEEWAY_SECONDS or nbf > now + LEEWAY_SECONDS:
            raise _refuse("not valid yet")
        if exp <= now - LEEWAY_SECONDS:
            raise _refuse("expired")
        if attestor is None:
            agent = agent_from_spiffe_id(self.trust_domain, sub)
            if agent is None or claims.get("agent") != agent:
                raise _refuse("subject is not an agent of this trust domain")
            if await self._replay.is_retired(issuer, jti):
                raise _refuse("replayed: the attested process has ended")
            measurement = claims.get("qm_measurement")
            bound = claims.get("qm_sid")
            return VerifiedIdentity(
                agent=agent,
                spiffe_id=sub,
                issuer=issuer,
                jti=jti,
                expires_at=exp,
                measurement=measurement if isinstance(measurement, dict) else None,
                bound_session=bound if isinstance(bound, str) else None,
            )
        mapped = attestor.agent_for(sub)
        if mapped is None:
            raise _refuse("the attestor's subject maps to no agent")
        if attestor.single_use and not await self._replay.consume(
            issuer, jti, exp, use_id or secrets.token_hex(12)
        ):
            raise _refuse("replayed: this token was already used")
        if attestor.single_use is False and await self._replay.is_retired(issuer, jti):
            raise _refuse("replayed")
        return VerifiedIdentity(
            agent=mapped,
            spiffe_id=spiffe_id(self.trust_domain, mapped),
            issuer=issuer,
            jti=jti,
            expires_at=exp,
            external_subject=sub,
        )
