"""The server-side key material, loaded from one JSON key file (owner-only permissions).

    {"payload":   [{"kid": "p1", "key": "<base64 32 bytes>"}, ...],  # AES-256-GCM over whole payloads
     "seal":      [{"kid": "s1", "key": "<base64 32 bytes>"}, ...],  # seals Secret values inside payloads
     "principal": "<base64 32 bytes>",                               # HMAC key for opaque principal ids
     "authority": [{"kid": "a1", "key": "<base64 32 bytes>"}, ...],  # HMAC-SHA256: authority proofs and
                                                                     #   approval code hashes
     "assertion": {"keys": [...]},   # Ed25519 JWKs: identity assertions to providers (JWKS published)
     "attestor":  {"keys": [...]},   # Ed25519 JWKs: agent identity tokens
     "session":   {"keys": [...]}}   # Ed25519 JWKs: session tokens

The last key of each list encrypts or signs; all of them decrypt or verify, so keys rotate by
appending. Only the API and the worker hold the whole file, so every replica given the same file signs
and verifies the same. The UI codec server gets `codec_only()` (payload keys only): it can show
payloads, never secrets, and cannot forge an authority proof. See docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.assertions import AssertionSigner
    from quartermaster.identity.keys import SigningKeys

#: the Ed25519 key sets in the key file, and the file each was kept in before it moved here
SIGNING_SECTIONS = {
    "assertion": "assertion-keys.json",
    "attestor": "attestor-keys.json",
    "session": "session-keys.json",
}
_SIGNING_PREFIX = {"assertion": "qm", "attestor": "att", "session": "ses"}


class KeyMaterialMissing(RuntimeError):
    """The key file lacks a section this process needs (an old file, or a codec-only file)."""


@dataclass(frozen=True)
class NamedKey:
    kid: str
    key: bytes


def _signing_doc(section: str) -> str:
    if section == "assertion":
        from providers.assertions import AssertionSigner

        text = AssertionSigner.ephemeral(issuer="").to_json()
    else:
        from quartermaster.identity.keys import SigningKeys

        text = SigningKeys.ephemeral(_SIGNING_PREFIX[section]).to_json()
    return json.dumps(json.loads(text))  # the compact form `from_json` keeps


@dataclass(frozen=True)
class Keyring:
    payload: tuple[NamedKey, ...]
    seal: tuple[NamedKey, ...]
    principal: bytes | None
    authority: tuple[NamedKey, ...] = ()
    #: the Ed25519 key sets as JSON documents ({"keys": [...]}); None when the file has none
    assertion: str | None = None
    attestor: str | None = None
    session: str | None = None

    def principal_id(self, email: str) -> str:
        """An opaque, stable id for a human: safe for workflow IDs and search attributes."""
        if self.principal is None:
            raise KeyMaterialMissing("this key file has no principal key")
        digest = hmac.new(self.principal, email.strip().lower().encode(), hashlib.sha256).hexdigest()
        return "p" + digest[:20]

    def codec_only(self) -> Keyring:
        """The subset the UI codec server may hold: payload keys only (no seal, principal, authority
        or signing key)."""
        return Keyring(payload=self.payload, seal=(), principal=None)

    # ---- server-side signing keys ----------------------------------------------------------------

    def authority_keys(self) -> tuple[NamedKey, ...]:
        if not self.authority:
            raise KeyMaterialMissing(
                "the key file has no `authority` keys; start once with QM_DEV=1 to add them to a dev "
                "file, or add them as described in docs/security.md"
            )
        return self.authority

    def _signing(self, section: str) -> str:
        doc: str | None = getattr(self, section)
        if doc is None:
            raise KeyMaterialMissing(
                f"the key file has no `{section}` keys; start once with QM_DEV=1 to add them to a dev "
                "file, or add them as described in docs/security.md"
            )
        return doc

    def signing_keys(self, section: str) -> SigningKeys:
        """The Ed25519 keys of `attestor` or `session` (newest signs, all verify)."""
        from quartermaster.identity.keys import SigningKeys

        if section not in ("attestor", "session"):
            raise ValueError(f"no signing key section {section!r}")
        return SigningKeys.from_json(self._signing(section))

    def assertion_signer(self, issuer: str) -> AssertionSigner:
        """The identity-assertion signer (worker signs, gateway/API publishes its JWKS)."""
        from providers.assertions import AssertionSigner

        return AssertionSigner.from_json(self._signing("assertion"), issuer=issuer)

    # ---- the file -------------------------------------------------------------------------------

    def to_json(self) -> str:
        def enc(keys: tuple[NamedKey, ...]) -> list[dict[str, str]]:
            return [{"kid": k.kid, "key": base64.b64encode(k.key).decode()} for k in keys]

        doc: dict[str, object] = {"payload": enc(self.payload), "seal": enc(self.seal)}
        if self.principal is not None:
            doc["principal"] = base64.b64encode(self.principal).decode()
        if self.authority:
            doc["authority"] = enc(self.authority)
        for section in SIGNING_SECTIONS:
            text = getattr(self, section)
            if text is not None:
                doc[section] = json.loads(text)
        return json.dumps(doc, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        doc = json.loads(text)

        def dec(items: list[dict[str, str]]) -> tuple[NamedKey, ...]:
            keys = tuple(NamedKey(i["kid"], base64.b64decode(i["key"])) for i in items)
            if any(len(k.key) != 32 for k in keys):
                raise ValueError("every key must be 32 bytes (AES-256, HMAC-SHA256)")
            return keys

        def signing(section: str) -> str | None:
            value: Any = doc.get(section)
            if value is None:
                return None
            if not isinstance(value, dict) or not value.get("keys"):
                raise ValueError(f"the `{section}` section is {{'keys': [...]}} with at least one key")
            return json.dumps(value)

        principal = doc.get("principal")
        return cls(
            payload=dec(doc.get("payload", [])),
            seal=dec(doc.get("seal", [])),
            principal=base64.b64decode(principal) if principal else None,
            authority=dec(doc.get("authority", [])),
            assertion=signing("assertion"),
            attestor=signing("attestor"),
            session=signing("session"),
        )

    def missing(self) -> list[str]:
        """The server-side sections this key file lacks."""
        out = [] if self.principal is not None else ["principal"]
        out += [] if self.authority else ["authority"]
        return out + [s for s in SIGNING_SECTIONS if getattr(self, s) is None]

    def completed(self, legacy_dir: Path | None = None) -> Keyring:
        """Every missing server-side section added: a signing key set from its old separate file in
        `legacy_dir` when there is one (so tokens and JWKS stay valid), else freshly generated."""
        changes: dict[str, Any] = {}
        if self.principal is None:
            changes["principal"] = secrets.token_bytes(32)
        if not self.authority:
            changes["authority"] = (NamedKey("a1", secrets.token_bytes(32)),)
        for section, filename in SIGNING_SECTIONS.items():
            if getattr(self, section) is not None:
                continue
            old = legacy_dir / filename if legacy_dir is not None else None
            if old is not None and old.exists():
                changes[section] = json.dumps(json.loads(old.read_text()))
            else:
                changes[section] = _signing_doc(section)
        return replace(self, **changes)

    @classmethod
    def generate(cls, legacy_dir: Path | None = None) -> Keyring:
        """A fresh key file (signing keys from their old files in `legacy_dir`, if any)."""
        return cls(
            payload=(NamedKey("p1", secrets.token_bytes(32)),),
            seal=(NamedKey("s1", secrets.token_bytes(32)),),
            principal=secrets.token_bytes(32),
        ).completed(legacy_dir)

    def rotated(self) -> Keyring:
        """A new payload, seal and authority key appended; old ones stay for decryption/verification."""
        authority = self.authority
        if authority:
            authority = (*authority, NamedKey(f"a{len(authority) + 1}", secrets.token_bytes(32)))
        return replace(
            self,
            payload=(*self.payload, NamedKey(f"p{len(self.payload) + 1}", secrets.token_bytes(32))),
            seal=(*self.seal, NamedKey(f"s{len(self.seal) + 1}", secrets.token_bytes(32))),
            authority=authority,
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
    """Load the key file; with `create` (dev only), make one first, or add the sections an older file
    lacks (importing the signing keys from their old files next to it)."""
    if "QM_KEYS" in os.environ:
        return Keyring.from_json(os.environ["QM_KEYS"])
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no key file at {path}; run `qm dev` once or set QM_KEYS_FILE")
        write_key_file(path, Keyring.generate(legacy_dir=path.parent))
    keyring = Keyring.from_json(path.read_text())
    if create and keyring.seal and keyring.missing():  # a full (not codec-only) file from before
        keyring = keyring.completed(legacy_dir=path.parent)
        write_key_file(path, keyring)
    return keyring
