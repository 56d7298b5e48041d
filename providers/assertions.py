"""Identity assertions: short-lived JWTs in which the orchestrator attests the human (Stripe customer
id and verified email) to one provider.

The orchestrator signs with Ed25519 (JWS alg `EdDSA`, RFC 8037; see `providers.eddsa`) and publishes
the public keys as a JWKS; providers verify with `verify_assertion`, following RFC 8725: an algorithm
allow-list, an explicit `typ`, and checks of `iss`, `aud`, `exp`, `nbf` with a small clock skew.
Refusing a replayed `jti` within its lifetime is the verifier's (the provider's) job, since only it
sees every use.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from pydantic import BaseModel, ConfigDict, ValidationError

from models.secret import Secret
from providers.eddsa import (
    ACCEPTED_ALGORITHMS,
    SIGNING_ALGORITHM,
    generate_key,
    import_signing_key,
    public_jwk,
    verification_key_set,
)
from quartermaster.config import DEV_PORTS

ASSERTION_TYP = "qm-assertion+jwt"
#: `EdDSA` (RFC 8037) and, for assertions signed before 0.3, RFC 9864's `Ed25519`; nothing else
ALLOWED_ALGORITHMS = ACCEPTED_ALGORITHMS
MAX_TTL_SECONDS = 300
#: how long a retired key stays published: its last assertion's lifetime plus the verifiers' skew
RETIRED_KEY_GRACE_SECONDS = MAX_TTL_SECONDS + 60
#: a token longer than this is not one of ours; refuse before parsing
MAX_TOKEN_CHARS = 4096

DEFAULT_ISSUER = f"http://127.0.0.1:{DEV_PORTS['gateway']}"

AssertionErrorCode = Literal["assertion_invalid", "assertion_expired", "assertion_wrong_audience"]


class InvalidAssertionError(Exception):
    """An assertion was refused. `code` is stable; the message never repeats the token or its claims."""

    def __init__(self, code: AssertionErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: AssertionErrorCode = code
        self.message = message


class AssertionClaims(BaseModel):
    """The verified claims of an identity assertion."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    iss: str
    sub: str
    email: str
    email_verified: bool
    aud: str
    iat: int
    exp: int
    jti: str
    nbf: int | None = None


@dataclass
class _SigningKey:
    key: OKPKey
    created_at: int
    retired_at: int | None = None

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def to_json(self) -> dict[str, Any]:
        return {
            "jwk": dict(self.key.as_dict(private=True)),
            "created_at": self.created_at,
            "retired_at": self.retired_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> _SigningKey:
        key = import_signing_key(doc["jwk"])
        if not key.is_private or key.kid is None:
            raise ValueError("an assertion key file entry needs a private OKP key with a kid")
        return cls(key=key, created_at=int(doc["created_at"]), retired_at=doc.get("retired_at"))

    @classmethod
    def generate(cls, now: int) -> _SigningKey:
        kid = f"qm-{now}-{secrets.token_hex(4)}"
        return cls(key=generate_key(kid), created_at=now)


class AssertionSigner:
    """Signs identity assertions with the newest key; publishes every key that may still verify one."""

    def __init__(self, *, issuer: str, keys: list[_SigningKey], path: Path | None = None) -> None:
        if not keys:
            raise ValueError("an AssertionSigner needs at least one key")
        self.issuer = issuer
        self._keys = keys
        self._path = path

    @classmethod
    def load_or_create(cls, path: Path, *, issuer: str = DEFAULT_ISSUER) -> AssertionSigner:
        """Load the JSON key set at `path` (mode 0600), creating it with one fresh key when absent."""
        if path.exists():
            doc = json.loads(path.read_text())
            keys = [_SigningKey.from_json(k) for k in doc["keys"]]
            signer = cls(issuer=issuer, keys=keys, path=path)
        else:
            signer = cls(issuer=issuer, keys=[_SigningKey.generate(int(time.time()))], path=path)
            signer._save()
        return signer

    @classmethod
    def from_json(cls, text: str, *, issuer: str) -> AssertionSigner:
        """A signer from the key-file document (the `assertion` section of the server's key file)."""
        return cls(issuer=issuer, keys=[_SigningKey.from_json(k) for k in json.loads(text)["keys"]])

    def to_json(self) -> str:
        return json.dumps({"keys": [k.to_json() for k in self._keys]}, indent=2)

    @classmethod
    def ephemeral(cls, *, issuer: str) -> AssertionSigner:
        """A signer whose keys live only in memory (tests, one-off tools)."""
        return cls(issuer=issuer, keys=[_SigningKey.generate(int(time.time()))])

    @property
    def current_kid(self) -> str:
        return self._keys[-1].kid

    def rotate(self) -> str:
        """Start signing with a new key. The old one stays in `jwks()` until its assertions have
        expired; keys past that are dropped. Returns the new key id."""
        now = int(time.time())
        for key in self._keys:
            if key.retired_at is None:
                key.retired_at = now
        self._keys = [k for k in self._keys if self._published(k, now)]
        self._keys.append(_SigningKey.generate(now))
        self._save()
        return self.current_kid

    def sign(
        self,
        *,
        subject: str,
        email: str,
        audience: str,
        ttl_seconds: int = MAX_TTL_SECONDS,
        issued_at: datetime | None = None,
    ) -> Secret:
        """An assertion that `subject` (the Stripe customer id) owns the verified `email`, for the
        provider `audience` only, valid `ttl_seconds` (at most 300). `issued_at` is for tests."""
        if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
        if not subject or not email or not audience:
            raise ValueError("subject, email and audience are required")
        iat = int(issued_at.timestamp()) if issued_at is not None else int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "email": email,
            "email_verified": True,
            "aud": audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl_seconds,
            "jti": secrets.token_urlsafe(16),
        }
        signing = self._keys[-1]
        header = {"alg": SIGNING_ALGORITHM, "kid": signing.kid, "typ": ASSERTION_TYP}
        token = jwt.encode(header, claims, signing.key, algorithms=[SIGNING_ALGORITHM])
        return Secret(token)

    def jwks(self) -> dict[str, Any]:
        """The public keys (no private parts) that may verify a live assertion, as a JWKS document."""
        now = int(time.time())
        keys = [public_jwk(k.key) for k in self._keys if self._published(k, now)]
        return {"keys": keys}

    @staticmethod
    def _published(key: _SigningKey, now: int) -> bool:
        return key.retired_at is None or now < key.retired_at + RETIRED_KEY_GRACE_SECONDS

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        # 0600 from the first byte: no window in which another user could read the private keys
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_json())
        os.replace(tmp, self._path)


def verify_assertion(
    token: str, *, jwks: dict[str, Any], issuer: str, audience: str, leeway: int = 30
) -> AssertionClaims:
    """Verify signature, `typ`, `iss`, `aud`, `exp`, `nbf`, `iat` and lifetime of an identity assertion.

    Raises InvalidAssertionError with code `assertion_expired`, `assertion_wrong_audience` or
    `assertion_invalid` (everything else). Replay of `jti` is the caller's check.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise InvalidAssertionError("assertion_invalid", "not a compact JWS")
    try:
        key_set = verification_key_set(jwks)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidAssertionError("assertion_invalid", "the issuer's key set is unusable") from exc
    try:
        decoded = jwt.decode(token, key_set, algorithms=list(ALLOWED_ALGORITHMS))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidAssertionError("assertion_invalid", "signature, algorithm or key id refused") from exc
    if decoded.header.get("typ") != ASSERTION_TYP:
        raise InvalidAssertionError("assertion_invalid", "wrong token type")
    try:
        claims = AssertionClaims.model_validate(decoded.claims, strict=True)
    except ValidationError as exc:
        raise InvalidAssertionError("assertion_invalid", "missing or malformed claims") from exc
    now = int(time.time())
    if claims.iss != issuer:
        raise InvalidAssertionError("assertion_invalid", "unexpected issuer")
    if claims.aud != audience:
        raise InvalidAssertionError("assertion_wrong_audience", "the assertion is for another provider")
    if not claims.email_verified:
        raise InvalidAssertionError("assertion_invalid", "the email is not verified")
    if claims.exp - claims.iat > MAX_TTL_SECONDS or claims.exp <= claims.iat:
        raise InvalidAssertionError("assertion_invalid", "lifetime out of bounds")
    if claims.iat > now + leeway or (claims.nbf is not None and claims.nbf > now + leeway):
        raise InvalidAssertionError("assertion_invalid", "not valid yet")
    if claims.exp <= now - leeway:
        raise InvalidAssertionError("assertion_expired", "the assertion has expired")
    return claims
