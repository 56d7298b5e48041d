"""Plan changes through the API, SDK and CLI on the real stack: the proration is quoted before
anything moves, only the resource's owner may change it (another principal gets NOT_FOUND and nothing
moves), an upgrade waits for the human's approval and then charges exactly the quoted difference."""

from __future__ import annotations

import asyncio
import json

import pytest

from models.errors import QuartermasterError
from quartermaster.api.routes import resources as resources_routes
from quartermaster.cli import main_async as qm_main
from tests.fixtures.stack import Stack, new_email
from tests.test_renewals import provision, stripe_intents


async def test_upgrade_through_the_api_and_cli_with_ownership(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, other = new_email(), new_email()
    res = await provision(stack, owner, "db/postgres:pro")
    assert res.resource_id
    rid = res.resource_id
    async with await stack.login(owner) as human:
        quote = await human.resources.plan_quote(rid, "db/postgres:team")
        assert quote.direction == "upgrade" and 0 < quote.due_now.amount <= 2500
    async with await stack.login(other) as stranger:
        for call in (
            stranger.resources.plan_quote(rid, "db/postgres:team"),
            stranger.resources.change_plan(rid, "db/postgres:team", direction="upgrade"),
        ):
            with pytest.raises(QuartermasterError) as err:
                await call
            assert str(err.value.code) == "NOT_FOUND"
    assert len(await stripe_intents(stack, {rid})) == 1  # the stranger moved nothing
    # the broken variant: without the route's ownership check the stranger would get the quote, so the
    # NOT_FOUND above is that check's doing
    with monkeypatch.context() as broken:

        async def no_check(*_: object) -> None:
            return None

        broken.setattr(resources_routes, "_visible_resource", no_check)
        async with await stack.login(other) as stranger:
            leaked = await stranger.resources.plan_quote(rid, "db/postgres:team")
        assert leaked.resource_id == rid

    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(owner))
    capsys.readouterr()
    # the wrong direction is refused with a stable code
    assert await qm_main(["downgrade", rid, "--to", "db/postgres:team"]) == 2
    assert "PLAN_CHANGE_NOT_ALLOWED" in capsys.readouterr().err
    assert await qm_main(["upgrade", rid, "--to", "db/postgres:team", "--quote"]) == 0
    assert "due now" in capsys.readouterr().out
    assert await qm_main(["upgrade", rid, "--to", "db/postgres:team", "--request-id", "up1", "--json"]) == 3
    line = next(x for x in reversed(capsys.readouterr().out.splitlines()) if x.startswith("{"))
    waiting = json.loads(line)
    assert (
        waiting["state"] == "awaiting_approval" and waiting["error"]["code"] == "PURCHASE_APPROVAL_REQUIRED"
    )
    for _ in range(100):
        if any(m.get("approval_id") == waiting["approval_id"] for m in stack.inbox(owner)):
            break
        await asyncio.sleep(0.05)
    await stack.decide(waiting["approval_id"], owner)
    assert await qm_main(["upgrade", rid, "--to", "db/postgres:team", "--request-id", "up1", "--json"]) == 0
    line = next(x for x in reversed(capsys.readouterr().out.splitlines()) if x.startswith("{"))
    done = json.loads(line)
    assert done["state"] == "completed"
    charged = done["result"]["charged"]["amount"]
    assert charged == done["quote"]["due_now"]["amount"] > 0
    intents = await stripe_intents(stack, {rid})
    assert sorted(int(i["amount_received"]) for i in intents) == sorted([2500, charged])
    (row,) = [r for r in (await stack.provider_state("db"))["resources"] if r["resource_id"] == rid]
    assert row["service_id"] == "db/postgres:team"
