"""`qm approve` is bound to what `qm approvals` showed, like the approval page: the provider raises
its price between the listing and the code, and the code decides nothing (APPROVAL_CHANGED, exit 4);
listed again, the same code approves. A payment-method approval cannot be "approved" with a code (that
used to print `approved`, then end the request rejected): the CLI sends the human to Checkout, exit 3.

The broken variant (a `qm approve` that binds to the current view instead of the one shown) lets the
changed price through: the check catches exactly what it is there for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.catalog import Pricing
from models.money import Money
from providers.http_provider import HttpProvider
from quartermaster.cli import main_async as qm_main
from quartermaster.cli import provision_verbs
from simulators.provider.catalogs import CATALOGS
from tests.fixtures.stack import Stack, new_email


def _last_json(out: str) -> dict:
    """The CLI's JSON answer; the in-process worker's dev notifier may print its own lines beside it."""
    return dict(json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{"))))


async def _as_human(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, email: str) -> None:
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(email))
    monkeypatch.setenv("QM_CONFIG_DIR", str(tmp_path / "config"))


def _set_price(stack: Stack, cents: int) -> None:
    """The simulated provider changes its price of cloud/r2 (the simulators run in this process)."""
    service = next(s for s in CATALOGS["cloud"].services if s.service_id == "cloud/r2")
    service.pricing = Pricing.model_validate(
        {"type": "paid", "price": Money(amount=cents), "interval": "month"}
    )
    adapter = stack.api.orchestrator.registry.get("cloud")
    assert isinstance(adapter, HttpProvider)
    adapter._catalog = None  # the API's 60 s catalog cache: the provider's new price is seen now


@pytest.fixture
def restore_r2(stack: Stack) -> Iterator[None]:
    yield
    _set_price(stack, 500)


@pytest.mark.parametrize("broken", [False, True], ids=["bound", "broken-binds-to-current-view"])
async def test_a_price_changed_after_qm_approvals_voids_the_code(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    restore_r2: None,
    broken: bool,
) -> None:
    email = new_email()
    await _as_human(stack, monkeypatch, tmp_path, email)
    rid = f"bind-{'broken' if broken else 'ok'}-{email.split('@')[0]}"
    assert (
        await qm_main(
            ["provision", "cloud/r2", "--name", "b1", "--request-id", rid, "--wait", "20", "--json"]
        )
        == 3
    )
    capsys.readouterr()
    assert await qm_main(["approvals", "--json"]) == 0
    (shown,) = [a for a in _last_json_list(capsys.readouterr().out) if rid in a["approval_id"]]
    assert shown["kind"] == "terms" and len(shown["view_hash"]) == 64
    approval_id = shown["approval_id"]
    code = stack.code_for(approval_id, email)

    _set_price(stack, 700)  # the provider raises cloud/r2 from 5.00 to 7.00 USD a month
    if broken:
        monkeypatch.setattr(provision_verbs, "shown_hash", lambda _approval_id: None)
    exit_code = await qm_main(["approve", approval_id, "--code", code, "--json"])
    out = capsys.readouterr().out
    if broken:
        assert exit_code == 0, out  # the changed price went through: what the binding prevents
        return
    assert exit_code == 4 and _last_json(out)["error"]["code"] == "APPROVAL_CHANGED", out
    # nothing was decided: the approval still waits, and the request with it
    assert await qm_main(["status", rid, "--json"]) == 3
    capsys.readouterr()
    # listed again (now showing 7.00 USD), the same code approves
    assert await qm_main(["approvals", "--json"]) == 0
    capsys.readouterr()
    assert await qm_main(["approve", approval_id, "--code", code]) == 0
    capsys.readouterr()

    _set_price(stack, 500)  # back to 5.00 USD before anything is charged
    # the payment method: a code cannot add a card; the CLI says where to go and decides nothing
    pm = await _notified(stack, email, "payment_method", rid)
    exit_code = await qm_main(
        ["approve", pm["approval_id"], "--code", stack.code_for(pm["approval_id"], email), "--json"]
    )
    error = _last_json(capsys.readouterr().out)["error"]
    assert exit_code == 3 and error["code"] == "APPROVAL_HANDED_ON", error
    assert pm["details"]["checkout_url"] in error["message"]
    # the API refuses it the same way for any other client
    async with await stack.login(email) as human:
        with pytest.raises(Exception, match="APPROVAL_HANDED_ON"):
            await human.approvals.decide(
                pm["approval_id"], decision="approve", code=stack.code_for(pm["approval_id"], email)
            )
    await stack.attach_card(pm["details"]["checkout_url"])
    for _ in range(100):  # the Stripe webhook wakes the request; until then it still waits (3)
        if (exit_code := await qm_main(["status", rid, "--wait", "5", "--json"])) != 3:
            break
        await asyncio.sleep(0.2)
    done = _last_json(capsys.readouterr().out)
    assert exit_code == 0, done
    assert done["state"] == "completed" and done["charge"]["amount"] == 500, done


async def _notified(stack: Stack, email: str, kind: str, rid: str) -> dict:
    for _ in range(300):
        found = [m for m in stack.inbox(email) if m.get("kind") == kind and rid in m.get("approval_id", "")]
        if found:
            return dict(found[-1])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} approval for {rid}")


def _last_json_list(out: str) -> list[dict]:
    return list(json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("["))))
