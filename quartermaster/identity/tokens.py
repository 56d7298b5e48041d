"""Session tokens: JWTs signed by Quartermaster that bind a session to one attested agent identity.

Claims (RFC 8693 shape): `sub` = the principal id (the human the session acts for), `act` = the agent
holding the session, with earlier agents nested inside (`act.act...`, the root agent innermost);
`sid` = the session id, `services`, `depth`, `ancestors` (session ids root first), `exp`. A session
token is useless alone: every enforcement point also verifies an identity token whose SPIFFE id equals
`act.sub`, then asks the session entity whether the session and its ancestors are still active.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError

from models.errors import ErrorCode, QuartermasterError
from models.secret import Secret
from models.session import SessionTokenRequest
from quartermaster.identity.keys import ACCEPTED_ALGORITHMS, SigningKeys
from quartermaster.identity.settings import AUDIENCE

SESSION_TYP = "qm-session+jwt"
LEEWAY_SECONDS = 30
MAX_TOKEN_CHARS = 16_384


def nest_actors(chain_identities: list[str]) -> dict[str, Any]:
    """`[root, ..., holder]` -> `{"sub": holder, "act": {... {"sub": root}}}` (RFC 8693 section 4.1)."""
    if not chain_identities:
        raise ValueError("a session has at least one agent")
    act: dict[str, Any] = {"sub": chain_identities[0]}
    for identity in chain_identities[1:]:
        act = {"sub": identity, "act": act}
    return act


def flatten_actors(act: Any) -> list[str]:
    """The inverse of `nest_actors`: root first."""
    out: list[str] = []
    while isinstance(act, dict):
        sub = act.get("sub")
        if not isinstance(sub, str):
            raise ValueError("an act claim without sub")
        out.append(sub)
        act = act.get("act")
    if act is not None or not out:
        raise ValueError("malformed act claim")
    return list(reversed(out))


@dataclass(frozen=True)
class SessionClaims:
    session_id: str
    principal_id: str
    #: the SPIFFE id the token is bound to (`act.sub`)
    agent_identity: str
    chain_identities: list[str]
    allowed_services: list[str]
    ancestors: list[str]
    depth: int
    expires_at: datetime
    jti: str


def _invalid(message: str) -> QuartermasterError:
    return QuartermasterError(ErrorCode.SESSION_INVALID, message)


class SessionTokens:
    """Issue and verify session tokens with Quartermaster's session keys (held by the worker)."""

    def __init__(self, *, keys: SigningKeys, issuer: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self._key_set = keys.key_set()

    def issue(self, req: SessionTokenRequest) -> Secret:
        """Sign a token stating `req`; it expires with the session."""
        if req.chain_identities[-1:] != [req.agent_identity]:
            raise ValueError("the chain must end with the holder's identity")
        iat = int(req.issued_at.timestamp())
        claims = {
            "iss": self.issuer,
            "sub": req.principal_id,
            "aud": AUDIENCE,
            "iat": iat,
            "nbf": iat,
            "exp": int(req.expires_at.timestamp()),
            "jti": secrets.token_urlsafe(12),
            "sid": req.session_id,
            "act": nest_actors(req.chain_identities),
            "services": list(req.allowed_services),
            "ancestors": list(req.ancestors),
            "depth": req.depth,
        }
        return Secret(self.keys.sign(claims, typ=SESSION_TYP))

    def verify(self, token: str, *, now: float | None = None) -> SessionClaims:
        """Signature, `typ`, `iss`, `aud`, `nbf`, `exp` and shape. Raises QuartermasterError with
        SESSION_INVALID (tampered, foreign, malformed) or SESSION_EXPIRED."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise _invalid("not a session token")
        try:
            decoded = jwt.decode(token, self._key_set, algorithms=list(ACCEPTED_ALGORITHMS))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise _invalid("signature, algorithm or key id refused") from exc
        if decoded.header.get("typ") != SESSION_TYP:
            raise _invalid("wrong token type")
        c = decoded.claims
        if c.get("iss") != self.issuer or c.get("aud") != AUDIENCE:
            raise _invalid("wrong issuer or audience")
        try:
            chain = flatten_actors(c.get("act"))
            exp, nbf = int(c["exp"]), int(c["nbf"])
            claims = SessionClaims(
                session_id=str(c["sid"]),
                principal_id=str(c["sub"]),
                agent_identity=chain[-1],
                chain_identities=chain,
                allowed_services=[str(s) for s in c["services"]],
                ancestors=[str(a) for a in c.get("ancestors", [])],
                depth=int(c.get("depth", 0)),
                expires_at=datetime.fromtimestamp(exp, UTC),
                jti=str(c["jti"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid("missing or malformed claims") from exc
        t = time.time() if now is None else now
        if nbf > t + LEEWAY_SECONDS:
            raise _invalid("not valid yet")
        if exp <= t:
            raise QuartermasterError(ErrorCode.SESSION_EXPIRED, "the session has expired")
        return claims
