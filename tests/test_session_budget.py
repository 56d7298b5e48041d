"""Budgets are shared, not copied: a sub-agent's purchase counts against its own budget ledger and
every ancestor's, reserved atomically across all of them (all or nothing)."""

from __future__ import annotations

import secrets

from temporalio.testing import ActivityEnvironment

from models.ledger import LayeredReserveOutcome, LedgerLayer, LedgerView, ReserveLayers
from models.money import Money
from models.request import Actor
from models.secret import Secret
from models.session import Authorization, AuthorizationRequest, DelegationRequest
from tests.fixtures.sessions import IdentityStack


async def _layers(stack: IdentityStack, email: str, agent: str, token: Secret) -> list[LedgerLayer]:
    req = AuthorizationRequest(
        actor=Actor(
            principal_email=email, agent=agent, session_token=token, identity_token=stack.identity(agent)
        ),
        service_id="cloud/r2",
        amount=Money(amount=1),
    )
    auth: Authorization = await ActivityEnvironment().run(stack.sessions.authorize_actor, req)
    assert auth.allowed, auth
    return [LedgerLayer.model_validate(layer) for layer in auth.budget_layers]


async def _buy(stack: IdentityStack, layers: list[LedgerLayer], cents: int) -> LayeredReserveOutcome:
    req = ReserveLayers(purchase_id=f"buy-{secrets.token_hex(6)}", amount=Money(amount=cents), layers=layers)
    outcome: LayeredReserveOutcome = await ActivityEnvironment().run(stack.spend.reserve_spend, req)
    return outcome


async def _held(stack: IdentityStack, ledger_id: str) -> int:
    view: LedgerView | None = await stack.spend.ledger_view(ledger_id)
    return 0 if view is None else view.committed.amount + view.reserved.amount


async def test_sub_agent_spend_counts_in_every_ancestor(identity_stack: IdentityStack) -> None:
    stack = identity_stack
    email = f"budget-{secrets.token_hex(4)}@example.com"
    root, root_token = await stack.open_root(
        "buyer", email=email, allow=["cloud/*"], budget_minor=5000, max_depth=2
    )
    child = await stack.qm.delegate(
        DelegationRequest(
            session_token=root_token,
            identity_token=stack.identity("buyer"),
            to_agent="sub",
            budget=Money(amount=4000),
        )
    )
    grand = await stack.qm.delegate(
        DelegationRequest(
            session_token=child.session_token,
            identity_token=stack.identity("sub"),
            to_agent="subsub",
            budget=Money(amount=3000),
        )
    )
    root_l, child_l, grand_l = (
        f"budget-session-{root.session_id}",
        f"budget-session-{child.session_id}",
        f"budget-session-{grand.session_id}",
    )
    grand_layers = await _layers(stack, email, "subsub", grand.session_token)
    assert [layer.ledger_id for layer in grand_layers] == [root_l, child_l, grand_l]

    # the grandchild's purchase is held on all three ledgers
    assert (await _buy(stack, grand_layers, 2000)).ok
    assert [await _held(stack, lid) for lid in (root_l, child_l, grand_l)] == [2000, 2000, 2000]

    # the middle agent may not spend past its own remaining 2000 (4000 - 2000 held by its sub-agent):
    # refused by its layer, and the root's ledger keeps nothing of the attempt
    child_layers = await _layers(stack, email, "sub", child.session_token)
    refused = await _buy(stack, child_layers, 2500)
    assert not refused.ok and refused.refused_by is not None and refused.refused_by.ledger_id == child_l
    assert [await _held(stack, lid) for lid in (root_l, child_l, grand_l)] == [2000, 2000, 2000]

    # the root agent spends 3000 of its own: the root ledger is now full (5000)
    root_layers = await _layers(stack, email, "buyer", root_token)
    assert (await _buy(stack, root_layers, 3000)).ok
    # so the grandchild, though 1000 is left in its own budget, is refused by the root's layer
    again = await _buy(stack, grand_layers, 500)
    assert not again.ok and again.refused_by is not None and again.refused_by.ledger_id == root_l
    assert [await _held(stack, lid) for lid in (root_l, child_l, grand_l)] == [5000, 2000, 2000]

    # and a new delegation sees only what is left of the parent's budget
    remaining_child = await stack.qm.delegate(
        DelegationRequest(
            session_token=child.session_token, identity_token=stack.identity("sub"), to_agent="late"
        )
    )
    assert remaining_child.grant.budget == Money(amount=2000)
