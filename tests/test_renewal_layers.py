"""Which budget layers a renewal still reserves in: a session's budget while the session is open, not
after it was revoked (its ledger may still be running); a ledger that never existed is no layer."""

from __future__ import annotations

from activities.renewals import RenewalActivities
from activities.spend import SpendActivities
from models.ledger import LedgerLayer, ReserveLayers
from models.money import Money
from models.renewal import OpenLayers
from models.session import budget_ledger_id
from providers.notifier import InboxNotifier
from providers.registry import ProviderRegistry
from quartermaster.crypto.authority import AuthoritySigner
from tests.fixtures.stack import Stack, new_email


async def test_a_revoked_sessions_budget_no_longer_binds_renewals(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        session_id = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        layer = LedgerLayer(ledger_id=budget_ledger_id(session_id), limit=Money.usd(50), kind="budget")
        spend = SpendActivities(
            stack.client, stack.settings.task_queue, authority=AuthoritySigner.from_keyring(stack.keyring)
        )
        held = await spend.reserve_spend(
            ReserveLayers(purchase_id="p-1", amount=Money.usd(1), layers=[layer], principal_id="x")
        )
        assert held.ok
        renewals = RenewalActivities(
            client=stack.client,
            task_queue=stack.settings.task_queue,
            registry=ProviderRegistry.from_settings(stack.settings),
            store=stack.store.connections,
            notifier=InboxNotifier(inbox_dir=stack.data_dir / "inbox", console=False),
        )
        never = LedgerLayer(ledger_id=budget_ledger_id("nosuchsession"), limit=Money.usd(5), kind="budget")
        out = await renewals.open_layers(OpenLayers(layers=[layer, never]))
        assert [x.ledger_id for x in out.layers] == [layer.ledger_id]
        await human.sessions.revoke(session_id)
        assert (await stack.client.get_workflow_handle(layer.ledger_id).describe()).status.name == "RUNNING"
        out = await renewals.open_layers(OpenLayers(layers=[layer]))
        assert out.layers == []
