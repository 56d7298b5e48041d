"""`qm provision --wait` at a terminal shows each step and what the human must do, and follows the
request through the human's approval to the end; with `--json` it is quiet and answers at the first
human gate with exit code 3 (an agent's loop)."""

from __future__ import annotations

import asyncio
import json

import pytest

from quartermaster.cli import main_async as qm_main
from quartermaster.cli import provision_verbs
from tests.fixtures.stack import Stack, new_email


async def _approve_when_asked(stack: Stack, email: str, rid: str) -> None:
    for _ in range(300):
        found = [
            m for m in stack.inbox(email) if m.get("kind") == "terms" and rid in m.get("approval_id", "")
        ]
        if found:
            await asyncio.sleep(0.5)  # let the terminal show the wait first
            async with await stack.login(email) as human:
                await human.approvals.decide(
                    found[-1]["approval_id"], decision="approve", code=found[-1]["code"]
                )
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no terms approval")


async def test_terminal_progress_follows_the_request_through_the_human(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(email))
    monkeypatch.setattr(provision_verbs, "interactive", lambda args: not args.json)  # stderr "is a tty"
    rid = f"progress-{email.split('@')[0]}"
    approver = asyncio.create_task(_approve_when_asked(stack, email, rid))
    code = await qm_main(["provision", "cloud/workers", "--name", "p1", "--request-id", rid, "--wait", "60"])
    await approver
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "  ... waiting for you (terms): accept cloud's terms of service" in out.err, out.err
    assert "qm approve provision-" in out.err and ".terms --code CODE" in out.err
    # the first line is a step (which one depends on how far the request got before the first answer)
    assert out.err.startswith("  ... "), out.err
    assert "cloud/workers res_" in out.out and ": complete" in out.out


async def test_json_is_quiet_and_stops_at_the_human(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", await stack.login_token(email))
    monkeypatch.setattr(provision_verbs, "interactive", lambda args: not args.json)
    code = await qm_main(["provision", "cloud/workers", "--name", "p2", "--wait", "60", "--json"])
    out = capsys.readouterr()
    assert code == 3
    assert "..." not in out.err
    answer = json.loads(next(line for line in reversed(out.out.splitlines()) if line.startswith("{")))
    assert answer["error"]["code"] == "TERMS_ACCEPTANCE_REQUIRED"
    assert answer["error"]["stripe_projects_code"] == "TOS_ACCEPTANCE_REQUIRED"
