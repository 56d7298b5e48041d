"""Deliver approval requests and alerts to the principal's channel, never to the agent.

Dev: a line on the `qm dev` console and a JSONL inbox file per principal (`<data dir>/inbox/`), read by
`qm inbox`. Production: a signed JSON POST to an https webhook (the human's chat, e-mail or pager
bridge); see docs/notifications.md for the receiver's signature check.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from providers.errors import RetryableProviderError

#: the header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (Stripe's scheme)
SIGNATURE_HEADER = "QM-Signature"
#: a receiver refuses deliveries signed longer ago than this (replays)
DEFAULT_TOLERANCE_SECONDS = 300


class NotifierConfigError(ValueError):
    """The notification channel is missing or unsafe; the worker does not start."""


class SignatureError(ValueError):
    """A delivery whose signature header is missing, malformed, wrong or too old."""


class Notifier(Protocol):
    async def deliver(self, *, principal_id: str, principal_email: str, message: dict[str, Any]) -> None: ...


class InboxNotifier:
    """Append to `<dir>/<principal id>.jsonl` (mode 0600) and print a line for the human."""

    def __init__(self, *, inbox_dir: Path, console: bool = True) -> None:
        self._dir = inbox_dir
        self._console = console

    def path_for(self, principal_id: str) -> Path:
        return self._dir / f"{principal_id}.jsonl"

    async def deliver(self, *, principal_id: str, principal_email: str, message: dict[str, Any]) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path_for(principal_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(json.dumps({"to": principal_email, **message}) + "\n")
        if self._console:
            line = f"[inbox {principal_id}] {message.get('summary', message.get('kind', 'message'))}"
            if "approval_id" in message:
                line += f"\n    approve: qm approve {message['approval_id']} --code {message.get('code')}"
            if message.get("link"):
                line += f"\n    or open: {message['link']}"
            print(line, file=sys.stdout, flush=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The signature header value for `body`: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    body: bytes, header: str, secret: str, *, tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: int | None = None,
) -> int:  # fmt: skip
    """The receiver's check (docs/notifications.md): returns the signed timestamp, or raises
    SignatureError. Compares in constant time; any `v1` entry may match (secret rotation)."""
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    macs = [v.strip() for k, _, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not macs:
        raise SignatureError("malformed signature header")
    t = int(stamps[0])
    current = int(time.time()) if now is None else now
    if abs(current - t) > tolerance:
        raise SignatureError("signature timestamp outside the tolerance")
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise SignatureError("signature does not match")
    return t


class WebhookNotifier:
    """POST the message as JSON to an https URL (http only on loopback), signed with `secret`."""

    def __init__(self, *, url: str, secret: str, http_client: httpx.AsyncClient | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.hostname or "")):
            raise NotifierConfigError("the notification webhook must be https (http only on loopback)")
        if not secret:
            raise NotifierConfigError("the notification webhook needs a signing secret")
        self._url = url
        self._secret = secret
        self._http = http_client or httpx.AsyncClient(timeout=10)

    async def deliver(self, *, principal_id: str, principal_email: str, message: dict[str, Any]) -> None:
        body = json.dumps({"principal_id": principal_id, "to": principal_email, **message}).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self._secret)}
        try:
            resp = await self._http.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RetryableProviderError("notifier_unreachable", type(exc).__name__) from exc
        if resp.status_code >= 300:
            raise RetryableProviderError(
                "notifier_failed", f"status {resp.status_code}", status=resp.status_code
            )


def read_inbox(inbox_dir: Path, principal_id: str) -> list[dict[str, Any]]:
    path = inbox_dir / f"{principal_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FanoutNotifier:
    """Deliver to several channels (e.g. e-mail and, under `qm dev`, the dev inbox); all must succeed."""

    def __init__(self, *channels: Notifier) -> None:
        self._channels = channels

    async def deliver(self, *, principal_id: str, principal_email: str, message: dict[str, Any]) -> None:
        for channel in self._channels:
            await channel.deliver(principal_id=principal_id, principal_email=principal_email, message=message)
