"""The e-mail channel: approval links and login codes sent through SMTP (QM_SMTP_*).

An approval e-mail carries the one-line summary and the approval link, never the one-time code: the
link is the credential (single use, short-lived, opened by the API, see
quartermaster/identity/approval_links.py). A login e-mail carries the login code, which is what a
login is. `render_email` is also what the dev inbox page shows as "what e-mail would have sent".
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any, Literal

from providers.errors import PermanentProviderError, RetryableProviderError

SmtpTls = Literal["starttls", "ssl", "none"]


def render_email(message: dict[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body) of a notifier message; never the approval code."""
    summary = str(message.get("summary", message.get("kind", "a message")))
    if message.get("type") == "login_code":
        return (
            "Your Quartermaster login code",
            f"Your login code: {message.get('code')}\n\nIt expires at {message.get('expires_at')}.\n"
            "If you did not ask to log in, ignore this e-mail.\n",
        )
    if message.get("type") == "approval_request":
        lines = [f"An agent asks for your approval: {summary}", ""]
        if message.get("link"):
            lines += ["Review and decide (this link works once):", str(message["link"]), ""]
        else:
            lines += [f"Review it with: qm approvals, then qm approve {message.get('approval_id')}", ""]
        lines += [f"Approval {message.get('approval_id')}, expires at {message.get('expires_at')}."]
        return f"[Quartermaster] Approve? {summary}"[:200], "\n".join(lines) + "\n"
    return f"[Quartermaster] {summary}"[:200], f"{summary}\n"


class SmtpNotifier:
    """Send each message as one plain-text e-mail to the principal."""

    def __init__(
        self,
        *,
        host: str,
        port: int = 587,
        tls: SmtpTls = "starttls",
        sender: str,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 15,
    ) -> None:
        if tls not in ("starttls", "ssl", "none"):
            raise ValueError("smtp tls is starttls, ssl or none")
        self._host, self._port, self._tls = host, port, tls
        self._sender, self._username, self._password = sender, username, password
        self._timeout = timeout

    def _build(self, to: str, message: dict[str, Any]) -> EmailMessage:
        subject, body = render_email(message)
        mail = EmailMessage()
        mail["From"] = self._sender
        mail["To"] = to
        mail["Subject"] = subject.replace("\n", " ")
        if message.get("approval_id"):
            mail["X-QM-Approval"] = str(message["approval_id"])
        mail.set_content(body)
        return mail

    def _send(self, mail: EmailMessage) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self._tls == "ssl":
            smtp = smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout, context=context)
        else:
            smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        with smtp:
            if self._tls == "starttls":
                smtp.starttls(context=context)
            if self._username and self._password:
                smtp.login(self._username, self._password)
            smtp.send_message(mail)

    async def deliver(self, *, principal_id: str, principal_email: str, message: dict[str, Any]) -> None:
        mail = self._build(principal_email, message)
        try:
            await asyncio.to_thread(self._send, mail)
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentProviderError("email_refused", "the recipient was refused") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise RetryableProviderError("email_unreachable", type(exc).__name__) from exc
