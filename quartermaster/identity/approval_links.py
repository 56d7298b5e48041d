"""Approval links: the credential a notification carries instead of the one-time code.

A link token is AES-256-GCM over `{approval id, principal id, expiry, code}` under a key derived from
the principal key (which only the API and the worker hold). The worker's notifier activity seals it
when it makes the code; the API opens it when the human follows the link, checks that it names the
approval in the URL and has not expired, records its hash as used (single use), and later submits the
decision to the workflow with the code inside. So the code never travels in clear outside the dev
channel, and the workflow's code check is unchanged: a page decision is proven exactly like `qm approve`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from models.secret import Secret

_LABEL = b"quartermaster approval link v1"
_AAD = b"qm-approval-link"


def derive_key(principal_key: bytes, label: bytes) -> bytes:
    """A purpose-bound 32-byte key from the principal key (HMAC-SHA256 as a KDF)."""
    return hmac.new(principal_key, label, hashlib.sha256).digest()


@dataclass(frozen=True)
class LinkClaims:
    approval_id: str
    principal_id: str
    expires_at: datetime
    code: Secret


class InvalidLink(ValueError):
    """The token is forged, damaged, expired or names another approval."""


class ApprovalLinkSealer:
    """Seal (worker) and open (API) approval link tokens."""

    def __init__(self, *, principal_key: bytes) -> None:
        self._aead = AESGCM(derive_key(principal_key, _LABEL))

    def seal(self, *, approval_id: str, principal_id: str, code: str, expires_at: datetime) -> str:
        body = json.dumps(
            {"a": approval_id, "p": principal_id, "e": int(expires_at.timestamp()), "c": code},
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, body, _AAD)).decode().rstrip("=")

    def open(self, token: str, *, approval_id: str, now: datetime | None = None) -> LinkClaims:
        """The claims of a valid, unexpired token for `approval_id`; else InvalidLink."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            body = json.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
        except (ValueError, InvalidTag, TypeError) as exc:
            raise InvalidLink("this approval link is not valid") from exc
        if body.get("a") != approval_id:
            raise InvalidLink("this link is for another approval")
        expires = datetime.fromtimestamp(int(body["e"]), UTC)
        if expires <= (now or datetime.now(UTC)):
            raise InvalidLink("this approval link has expired")
        return LinkClaims(
            approval_id=str(body["a"]),
            principal_id=str(body["p"]),
            expires_at=expires,
            code=Secret(body["c"]),
        )


def link_hash(token: str) -> str:
    """What the API keeps of a used link (tokens are random-nonce ciphertexts: unguessable)."""
    return hashlib.sha256(f"approval-link:{token}".encode()).hexdigest()
