"""The e-mail channel against a real SMTP server on loopback (aiosmtpd): an approval e-mail carries the
summary and the approval link, never the one-time code; a login e-mail carries the login code."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

import worker
from activities.approvals import ApprovalActivities
from models.approval import ApprovalNotice, ApprovalRequest
from providers.email_notifier import SmtpNotifier
from providers.notifier import FanoutNotifier, read_inbox
from quartermaster.config import Settings
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.identity.approval_links import ApprovalLinkSealer
from quartermaster.keys import Keyring
from tests.fixtures.servers import free_port


class Capture:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


async def test_approval_email_has_the_link_not_the_code(tmp_path: Path) -> None:
    capture = Capture()
    port = free_port()
    controller = Controller(capture, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        keyring = Keyring.generate()
        settings = Settings(
            data_dir=tmp_path, public_url="http://127.0.0.1:9", smtp_host="127.0.0.1", smtp_port=port,
            smtp_tls="none", smtp_sender="qm@example.com", dev=True,
        )  # fmt: skip
        notifier = worker.build_notifier(settings)
        assert isinstance(notifier, FanoutNotifier)  # e-mail, and the dev inbox under dev
        activities = ApprovalActivities(
            notifier,
            authority=AuthoritySigner.from_keyring(keyring),
            link_for=worker.approval_link_builder(settings, keyring),
        )
        now = datetime.now(UTC)
        request = ApprovalRequest(
            approval_id="provision-p1-r1.purchase", kind="purchase", workflow_id="provision-p1-r1",
            principal_id="p1", summary="approve a purchase of cloud/registrar:domain for 10.99 USD",
            details={"amount": {"amount": 1099, "currency": "usd"}}, requested_at=now,
            expires_at=now + timedelta(hours=1),
        )  # fmt: skip
        await activities.notify_approval(ApprovalNotice(request=request, principal_email="alice@example.com"))
        for _ in range(100):
            if capture.messages:
                break
            await asyncio.sleep(0.05)
        (mail,) = capture.messages
        body = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
        (sent,) = read_inbox(tmp_path / "inbox", "p1")
        assert mail["To"] == "alice@example.com" and "10.99 USD" in mail["Subject"]
        assert sent["link"] in body and sent["link"].startswith("http://127.0.0.1:9/approve/")
        assert sent["code"] not in body and sent["code"] not in str(mail)
        # the link carries the code sealed: only the server side opens it, for this approval only
        token = sent["link"].split("?t=", 1)[1]
        claims = ApprovalLinkSealer(principal_key=keyring.principal or b"").open(
            token, approval_id=request.approval_id
        )
        assert claims.code.reveal() == sent["code"] and claims.principal_id == "p1"
        # a login e-mail carries the login code
        smtp = SmtpNotifier(host="127.0.0.1", port=port, tls="none", sender="qm@example.com")
        await smtp.deliver(
            principal_id="p1", principal_email="alice@example.com",
            message={"type": "login_code", "code": "1234-5678-9012", "expires_at": "soon"},
        )  # fmt: skip
        for _ in range(100):
            if len(capture.messages) > 1:
                break
            await asyncio.sleep(0.05)
        assert "1234-5678-9012" in str(capture.messages[1])
    finally:
        controller.stop()
