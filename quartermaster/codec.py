"""The payload codec: seal `Secret` values, then AES-256-GCM over the whole payload.

Encode: JSON payloads have every ``{"__qm_secret__": v}`` replaced by a value sealed with the newest
seal key; then the whole payload (metadata + data) is encrypted with the newest payload key, whose id
goes into the metadata so older keys can still decrypt after rotation. Decode reverses both. A codec
built from `Keyring.codec_only()` (the UI codec server) decrypts payloads but leaves secrets sealed.

Every secret value this codec seals or unseals is also remembered by the log redaction filter
(`quartermaster.logging_setup.remember_secret`), so a log line that quotes it is redacted even when
the value has no recognisable shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from models.secret import REDACTED, SECRET_MARKER
from quartermaster.keys import Keyring
from quartermaster.logging_setup import remember_secret

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
SEALED_PREFIX = "qmsealed:"
_NONCE_BYTES = 12


class PayloadDecryptionError(ValueError):
    """A payload could not be decrypted: unknown key id, or ciphertext that fails authentication.

    The message names the key id only; never payload bytes.
    """


class _Aead:
    """AES-256-GCM under a list of named keys: the last one encrypts, any of them decrypts."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        self._by_kid = {kid: AESGCM(key) for kid, key in keys}
        self.current = keys[-1][0] if keys else None

    def seal(self, data: bytes, aad: bytes) -> tuple[str, bytes]:
        if self.current is None:
            raise RuntimeError("this keyring holds no key to encrypt with")
        nonce = os.urandom(_NONCE_BYTES)
        return self.current, nonce + self._by_kid[self.current].encrypt(nonce, data, aad)

    def has(self, kid: str) -> bool:
        return kid in self._by_kid

    def open(self, kid: str, blob: bytes, aad: bytes) -> bytes:
        """Decrypt; raises KeyError for an unknown kid and InvalidTag for a forged/damaged blob."""
        aead = self._by_kid[kid]
        return aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)


def _walk(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {SECRET_MARKER}:
            return {SECRET_MARKER: fn(value[SECRET_MARKER])}
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    return value


class EncryptionCodec(PayloadCodec):
    """Worker/client codec (all keys) or UI codec (payload keys only: secrets stay sealed).

    With `redact_secrets=True` (the UI codec server) sealed secrets decode to ``***`` even when a
    seal key is present; without a seal key they decode to ``***`` anyway.
    """

    def __init__(self, keyring: Keyring, *, redact_secrets: bool = False) -> None:
        self._payload = _Aead([(k.kid, k.key) for k in keyring.payload])
        self._seal = _Aead([(k.kid, k.key) for k in keyring.seal])
        self._redact = redact_secrets

    # -- Secret sealing inside JSON payloads -------------------------------------------------------
    def _seal_value(self, plain: Any) -> Any:
        if not isinstance(plain, str):
            return plain
        if self._seal.current is None:
            raise RuntimeError("cannot encode a Secret: this keyring has no seal key (codec-only keys?)")
        remember_secret(plain)
        kid, blob = self._seal.seal(plain.encode(), SECRET_MARKER.encode())
        return f"{SEALED_PREFIX}{kid}:{base64.b64encode(blob).decode()}"

    def _unseal_value(self, sealed: Any) -> Any:
        if not isinstance(sealed, str) or not sealed.startswith(SEALED_PREFIX):
            return sealed
        if self._redact:
            return REDACTED
        kid, _, b64 = sealed[len(SEALED_PREFIX) :].partition(":")
        if not self._seal.has(kid):
            # the UI codec server holds no seal key: the operator sees the redaction marker
            return REDACTED
        try:
            plain = self._seal.open(kid, base64.b64decode(b64), SECRET_MARKER.encode()).decode()
        except (InvalidTag, binascii.Error) as exc:
            raise PayloadDecryptionError(f"a sealed secret failed authentication (seal key {kid!r})") from exc
        remember_secret(plain)
        return plain

    def _transform_json(self, payload: Payload, fn: Callable[[Any], Any]) -> Payload:
        if payload.metadata.get("encoding") != b"json/plain" or SECRET_MARKER.encode() not in payload.data:
            return payload
        doc = _walk(json.loads(payload.data), fn)
        out = Payload()
        out.CopyFrom(payload)
        out.data = json.dumps(doc, separators=(",", ":")).encode()
        return out

    # -- PayloadCodec ----------------------------------------------------------------------------
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Seal secrets, then encrypt each whole payload under the newest payload key."""
        out = []
        for p in payloads:
            sealed = self._transform_json(p, self._seal_value)
            kid, blob = self._payload.seal(sealed.SerializeToString(), ENCODING)
            out.append(Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: kid.encode()}, data=blob))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt payloads we encrypted (others pass through), then unseal or redact secrets."""
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            kid = p.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
            if not self._payload.has(kid):
                raise PayloadDecryptionError(
                    f"no payload key with id {kid!r} in this keyring; was the key file rotated without "
                    "keeping the old key?"
                )
            try:
                plain = self._payload.open(kid, p.data, ENCODING)
            except InvalidTag as exc:
                raise PayloadDecryptionError(
                    f"payload failed authentication under key {kid!r}: tampered or damaged ciphertext"
                ) from exc
            inner = Payload()
            inner.ParseFromString(plain)
            out.append(self._transform_json(inner, self._unseal_value))
        return out


class SecretBox:
    """Seal single strings at rest (connection store) with the keyring's seal keys."""

    def __init__(self, keyring: Keyring) -> None:
        self._aead = _Aead([(k.kid, k.key) for k in keyring.seal])

    def seal(self, plain: str) -> str:
        kid, blob = self._aead.seal(plain.encode(), b"qm-at-rest")
        return f"{kid}:{base64.b64encode(blob).decode()}"

    def unseal(self, sealed: str) -> str:
        kid, _, b64 = sealed.partition(":")
        plain = self._aead.open(kid, base64.b64decode(b64), b"qm-at-rest")
        if plain is None:
            raise ValueError(f"no seal key with id {kid!r}")
        return plain.decode()
