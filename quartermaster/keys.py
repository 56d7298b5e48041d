"""The worker's and client's key material, loaded from one JSON key file (owner-only permissions).

    {"payload": [{"kid": "p1", "key": "<base64 32 bytes>"}, ...],   # AES-256-GCM over whole payloads
     "seal":    [{"kid": "s1", "key": "<base64 32 bytes>"}, ...],   # seals Secret values inside payloads
     "principal": "<base64 32 bytes>"}                              # HMAC key for opaque principal ids

The last key of each list encrypts; all of them decrypt, so keys rotate by appending. The UI codec
server is given a file with the `payload` keys only, so it can show payloads but never secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NamedKey:
    kid: str
    key: bytes


@dataclass(frozen=True)
class Keyring:
    payload: tuple[NamedKey, ...]
    seal: tuple[NamedKey, ...]
    principal: bytes | None

    def principal_id(self, email: str) -> str:
        """An opaque, stable id for a human: safe for workflow IDs and search attributes."""
        if self.principal is None:
            raise RuntimeError("this key file has no principal key")
        digest = hmac.new(self.principal, email.strip().lower().encode(), hashlib.sha256).hexdigest()
        return "p" + digest[:20]

    def codec_only(self) -> Keyring:
        """The subset the UI codec server may hold: payload keys, no seal or principal key."""
        return Keyring(payload=self.payload, seal=(), principal=None)

    def to_json(self) -> str:
        def enc(keys: tuple[NamedKey, ...]) -> list[dict[str, str]]:
            return [{"kid": k.kid, "key": base64.b64encode(k.key).decode()} for k in keys]

        doc: dict[str, object] = {"payload": enc(self.payload), "seal": enc(self.seal)}
        if self.principal is not None:
            doc["principal"] = base64.b64encode(self.principal).decode()
        return json.dumps(doc, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        doc = json.loads(text)

        def dec(items: list[dict[str, str]]) -> tuple[NamedKey, ...]:
            keys = tuple(NamedKey(i["kid"], base64.b64decode(i["key"])) for i in items)
            if any(len(k.key) != 32 for k in keys):
                raise ValueError("every key must be 32 bytes (AES-256)")
            return keys

        principal = doc.get("principal")
        return cls(
            payload=dec(doc.get("payload", [])),
            seal=dec(doc.get("seal", [])),
            principal=base64.b64decode(principal) if principal else None,
        )

    @classmethod
    def generate(cls) -> Keyring:
        return cls(
            payload=(NamedKey("p1", secrets.token_bytes(32)),),
            seal=(NamedKey("s1", secrets.token_bytes(32)),),
            principal=secrets.token_bytes(32),
        )

    def rotated(self) -> Keyring:
        """A new payload and seal key appended; old ones stay for decryption."""
        return Keyring(
            payload=(*self.payload, NamedKey(f"p{len(self.payload) + 1}", secrets.token_bytes(32))),
            seal=(*self.seal, NamedKey(f"s{len(self.seal) + 1}", secrets.token_bytes(32))),
            principal=self.principal,
        )


def write_key_file(path: Path, keyring: Keyring) -> None:
    """Write with mode 0600 from the first byte (no window where others can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(keyring.to_json())
    os.replace(tmp, path)


def load_keyring(path: Path, *, create: bool = False) -> Keyring:
    """Load the key file; with `create`, make one first (dev only)."""
    if "QM_KEYS" in os.environ:
        return Keyring.from_json(os.environ["QM_KEYS"])
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no key file at {path}; run `qm dev` once or set QM_KEYS_FILE")
        write_key_file(path, Keyring.generate())
    return Keyring.from_json(path.read_text())
