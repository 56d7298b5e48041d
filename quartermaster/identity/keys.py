"""Ed25519 signing keys for Quartermaster's own tokens (agent identity, sessions), kept in a JSON file.

    {"keys": [{"jwk": {...private OKP JWK with kid...}, "created_at": 1714000000}]}

Mode 0600 from the first byte. The newest key signs; every key in the file verifies, so keys rotate by
appending (`rotate`) and dropping old ones once their tokens have expired.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from providers.eddsa import (
    ACCEPTED_ALGORITHMS,
    SIGNING_ALGORITHM,
    generate_key,
    import_signing_key,
    public_jwk,
    verification_key_set,
)

__all__ = ["ACCEPTED_ALGORITHMS", "SIGNING_ALGORITHM", "SigningKeys"]


class SigningKeys:
    """A list of Ed25519 keys: sign with the newest, verify with any."""

    def __init__(self, keys: list[OKPKey], *, path: Path | None = None) -> None:
        if not keys or any(not k.is_private or k.kid is None for k in keys):
            raise ValueError("signing keys must be private OKP keys with a kid")
        self._keys = keys
        self._path = path

    @staticmethod
    def _generate(prefix: str) -> OKPKey:
        kid = f"{prefix}-{int(time.time())}-{secrets.token_hex(4)}"
        return generate_key(kid)

    @classmethod
    def ephemeral(cls, prefix: str = "qm") -> SigningKeys:
        """Keys that live only in memory (tests)."""
        return cls([cls._generate(prefix)])

    @classmethod
    def from_json(cls, text: str, *, path: Path | None = None) -> SigningKeys:
        doc = json.loads(text)
        return cls([import_signing_key(item["jwk"]) for item in doc["keys"]], path=path)

    @classmethod
    def load_or_create(cls, path: Path, *, prefix: str = "qm", create: bool = True) -> SigningKeys:
        """Load the key file at `path`; with `create` (dev), write a fresh one (mode 0600) if absent."""
        if path.exists():
            return cls.from_json(path.read_text(), path=path)
        if not create:
            raise FileNotFoundError(f"no signing key file at {path}")
        keys = cls([cls._generate(prefix)], path=path)
        keys.save()
        return keys

    def to_json(self) -> str:
        """The private key set as the key-file document ({"keys": [{"jwk": ...}]})."""
        return json.dumps({"keys": [{"jwk": dict(k.as_dict(private=True))} for k in self._keys]}, indent=2)

    def save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_json())
        os.replace(tmp, self._path)

    def rotate(self, prefix: str = "qm") -> str:
        """Append a new signing key; returns its kid."""
        self._keys.append(self._generate(prefix))
        self.save()
        return str(self._keys[-1].kid)

    @property
    def current_kid(self) -> str:
        return str(self._keys[-1].kid)

    def sign(self, claims: dict[str, Any], *, typ: str) -> str:
        """A compact JWS over `claims` with an explicit `typ` and the newest key's `kid`."""
        key = self._keys[-1]
        header = {"alg": SIGNING_ALGORITHM, "kid": str(key.kid), "typ": typ}
        return jwt.encode(header, claims, key, algorithms=[SIGNING_ALGORITHM])

    def jwks(self) -> dict[str, Any]:
        """The public halves (`alg: EdDSA`, `use: sig`), as a JWKS document."""
        return {"keys": [public_jwk(k) for k in self._keys]}

    def key_set(self) -> KeySet:
        """The public keys for verifying, under either accepted algorithm name."""
        return verification_key_set(self.jwks())
