"""Spend alerts: tell the principal (never the agent) that committed spend crossed a threshold."""

from __future__ import annotations

from temporalio import activity

from models.ledger import SpendAlert
from providers.notifier import Notifier


class AlertActivities:
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    @activity.defn(name="spend_alert")
    async def spend_alert(self, alert: SpendAlert) -> None:
        """Deliver one alert. The ledger sends each threshold once; a retry may deliver it again."""
        if alert.principal_id is None:
            activity.logger.info("spend alert for %s has no principal: not delivered", alert.ledger_id)
            return
        what = f"{alert.provider} this month" if alert.kind == "monthly" else f"budget {alert.ledger_id}"
        if alert.kind == "agent_monthly":
            what = f"one agent this month ({alert.ledger_id})"
        await self._notifier.deliver(
            principal_id=alert.principal_id,
            principal_email=alert.principal_email or "",
            message={
                "type": "spend_alert",
                "alert_id": alert.event_id,
                "kind": "spend_alert",
                "summary": f"spend on {what} reached {alert.threshold}% of the limit: "
                f"{alert.committed} of {alert.limit}",
                "ledger_id": alert.ledger_id,
                "threshold": alert.threshold,
                "committed": alert.committed.model_dump(),
                "limit": alert.limit.model_dump(),
                "month": alert.month,
                "provider": alert.provider,
            },
        )
