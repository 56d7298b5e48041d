"""Deliver approval requests and alerts to the principal's channel, never to the agent.

Dev: a line on the `qm dev` console and a JSONL inbox file per principal (`<data dir>/inbox/`), read by
`qm inbox`. Production: a JSON POST to a webhook URL (the human's chat, e-mail or pager bridge).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol

import httpx

from providers.errors import RetryableProviderError


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
            print(line, file=sys.stdout, flush=True)


class WebhookNotifier:
    """POST the message as JSON to the configured URL."""

    def __init__(self, *, url: str, http_client: httpx.AsyncClient | None = None) -> None:
        self._url = url
        self._http = http_client or httpx.AsyncClient(timeout=10)

    async def deliver(self, *, principal_id: str, principal_email: str, message: dict[str, Any]) -> None:
        try:
            resp = await self._http.post(
                self._url, json={"principal_id": principal_id, "to": principal_email, **message}
            )
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
