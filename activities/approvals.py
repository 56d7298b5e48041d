"""Approval notices: make a one-time code, deliver it to the principal's channel, return its keyed hash
(HMAC with the server-side authority key, so the hash in history allows no offline guess).

The human's list of pending approvals is a read model in the store (`PendingApprovalStore`): the
notice writes the row before the code is sent (so the list shows whatever a human was told about),
and `close_approval` closes it when the gate closes. Both writes are idempotent by approval id."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from temporalio import activity

from models.approval import ApprovalClosed, ApprovalNotice, ApprovalRequest, ApprovalTicket
from providers.notifier import Notifier
from providers.store.interfaces import PendingApprovalStore
from quartermaster.crypto.authority import AuthoritySigner

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O/1/I: humans type these


def new_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


#: builds the approval page link for a request and its fresh code (the link stands in for the code)
LinkBuilder = Callable[[ApprovalRequest, str], str]


class ApprovalActivities:
    def __init__(
        self,
        notifier: Notifier,
        *,
        authority: AuthoritySigner,
        link_for: LinkBuilder | None = None,
        pending: PendingApprovalStore | None = None,
    ) -> None:
        self._notifier = notifier
        self._authority = authority
        self._link_for = link_for
        self._pending = pending

    @activity.defn(name="notify_approval")
    async def notify_approval(self, notice: ApprovalNotice) -> ApprovalTicket:
        """Deliver the request with a fresh code. Only the hash goes back into history.

        A retry sends a new code; the workflow keeps the hash of the attempt that returned.
        """
        req = notice.request
        if self._pending is not None:
            await self._pending.open_approval(req)
        code = new_code()
        message = {
            "type": "approval_request",
            "approval_id": req.approval_id,
            "kind": req.kind,
            "summary": req.summary,
            "details": req.details,
            "expires_at": req.expires_at.isoformat(),
            "code": code,
        }
        if self._link_for is not None:
            message["link"] = self._link_for(req, code)
        await self._notifier.deliver(
            principal_id=req.principal_id, principal_email=str(notice.principal_email), message=message
        )
        return self._authority.code_ticket(req.approval_id, code)

    @activity.defn(name="close_approval")
    async def close_approval(self, closed: ApprovalClosed) -> None:
        """The gate closed: the approval leaves the human's list (idempotent)."""
        if self._pending is not None:
            await self._pending.close_approval(closed.approval_id)
