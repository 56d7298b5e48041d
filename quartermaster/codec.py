"""The payload codec: seal `Secret` values, then AES-256-GCM over the whole payload.

Encode: JSON payloads have every ``{"__qm_secret__": v}`` replaced by a value sealed with the newest
seal key; then the whole payload (metadata + data) is encrypted with the newest payload key, whose id
goes into the metadata so older keys can still decrypt after rotation. Decode reverses both. A codec
built from `Keyring.codec_only()` (the UI codec server) decrypts payloads but leaves secrets sealed.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from models.secret import REDACTED, SECRET_MARKER
from quartermaster.keys import Keyring

ENCODING = b"binary/encrypted"
SEALED_PREFIX = "qmsealed:"


class _Aead:
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        self._by_kid = {kid: AESGCM(key) for kid, key in keys}
        self.current = keys[-1][0] if keys else None

    def seal(self, data: bytes, aad: bytes) -> tuple[str, bytes]:
        if self.current is None:
            raise RuntimeError("no key to encrypt with")
        nonce = os.urandom(12)
        return self.current, nonce + self._by_kid[self.current].encrypt(nonce, data, aad)

    def open(self, kid: str, blob: bytes, aad: bytes) -> bytes | None:
        aead = self._by_kid.get(kid)
        if aead is None:
            return None
        return aead.decrypt(blob[:12], blob[12:], aad)


def _walk(value: Any, fn: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {SECRET_MARKER}:
            return {SECRET_MARKER: fn(value[SECRET_MARKER])}
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    return value


class EncryptionCodec(PayloadCodec):
    """Worker/client codec (all keys) or UI codec (payload keys only: secrets stay sealed)."""

    def __init__(self, keyring: Keyring, *, redact_secrets: bool = False) -> None:
        self._payload = _Aead([(k.kid, k.key) for k in keyring.payload])
        self._seal = _Aead([(k.kid, k.key) for k in keyring.seal])
        self._redact = redact_secrets

    # -- Secret sealing inside JSON payloads -------------------------------------------------------
    def _seal_value(self, plain: str) -> str:
        kid, blob = self._seal.seal(plain.encode(), SECRET_MARKER.encode())
        return f"{SEALED_PREFIX}{kid}:{base64.b64encode(blob).decode()}"

    def _unseal_value(self, sealed: str) -> str:
        if not isinstance(sealed, str) or not sealed.startswith(SEALED_PREFIX):
            return sealed
        if self._redact:
            return REDACTED
        kid, _, b64 = sealed[len(SEALED_PREFIX) :].partition(":")
        plain = self._seal.open(kid, base64.b64decode(b64), SECRET_MARKER.encode())
        if plain is None:
            return REDACTED
        return plain.decode()

    def _transform_json(self, payload: Payload, fn: Any) -> Payload:
        if payload.metadata.get("encoding") != b"json/plain" or SECRET_MARKER.encode() not in payload.data:
            return payload
        doc = _walk(json.loads(payload.data), fn)
        out = Payload()
        out.CopyFrom(payload)
        out.data = json.dumps(doc, separators=(",", ":")).encode()
        return out

    # -- PayloadCodec ----------------------------------------------------------------------------
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            sealed = self._transform_json(p, self._seal_value)
            kid, blob = self._payload.seal(sealed.SerializeToString(), ENCODING)
            out.append(Payload(metadata={"encoding": ENCODING, "encryption-key-id": kid.encode()}, data=blob))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            kid = p.metadata.get("encryption-key-id", b"").decode()
            plain = self._payload.open(kid, p.data, ENCODING)
            if plain is None:
                raise ValueError(f"no payload key with id {kid!r}")
            inner = Payload()
            inner.ParseFromString(plain)
            out.append(self._transform_json(inner, self._unseal_value))
        return out
