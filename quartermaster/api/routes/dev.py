"""The dev inbox (only under `qm dev`): what the notification channel would have sent each human.

In dev the channel is a local file anyone on the machine can read; production uses a real channel
(webhook, e-mail) and this router is not mounted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import EmailStr

from providers.email_notifier import render_email
from providers.notifier import read_inbox
from quartermaster.api import page_templates
from quartermaster.api.deps import Services, services

router = APIRouter(prefix="/v1/dev", tags=["dev"], dependencies=[Depends(services)])


@router.get("/inbox", response_model=list[dict[str, Any]])
async def inbox(email: EmailStr, svc: Services) -> list[dict[str, Any]]:
    """The dev channel's messages to `email` (login and approval codes), each with its `status`:
    an approval `open`, `closed` (decided, or its request ended) or `expired`; a login code `valid`
    or `expired`."""
    principal_id = svc.keyring.principal_id(str(email).strip().lower())
    messages = read_inbox(svc.settings.data_dir / "inbox", principal_id)
    open_ids = {a.approval_id for a in await svc.orchestrator.approvals(principal_id=principal_id)}
    now = datetime.now(UTC)
    for m in messages:
        try:
            expired = datetime.fromisoformat(str(m.get("expires_at"))) <= now
        except ValueError:
            expired = False
        if "approval_id" in m:
            m["status"] = "open" if m["approval_id"] in open_ids else "expired" if expired else "closed"
        else:
            m["status"] = "expired" if expired else "valid"
    return messages


#: the dev inbox as a page: what each channel (e-mail, webhook) would have sent
pages_router = APIRouter(include_in_schema=False, dependencies=[Depends(services)])


@pages_router.get("/dev/inbox")
async def inbox_page(email: EmailStr, svc: Services) -> HTMLResponse:
    address = str(email).strip().lower()
    messages = read_inbox(svc.settings.data_dir / "inbox", svc.keyring.principal_id(address))[::-1]
    page = page_templates.inbox_page(address, messages, [render_email(m) for m in messages])
    return HTMLResponse(page, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
