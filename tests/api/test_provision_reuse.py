"""A request id is the principal's idempotency key: the same request again is the same request; other
parameters, or the same id from another of the principal's sessions, is 409 IDEMPOTENCY_CONFLICT and
changes nothing; another principal's equal id is their own request. `POST /v1/provisions` learns a
reuse from Temporal refusing the start (it no longer describes first), so these are checked on what
the human sees: the approvals in their list. Run against a deliberately broken API (ownership checks
off), the cross-session reuse is seen, so the test can fail."""

from __future__ import annotations

import pytest

from models.errors import ErrorCode
from quartermaster.client import QuartermasterClient
from quartermaster.client.errors import ApiError
from tests.fixtures.stack import Stack, new_email


async def _conflict(agent: QuartermasterClient, **body: object) -> ApiError:
    with pytest.raises(ApiError) as err:
        await agent.provisions.create(**body)  # type: ignore[arg-type]
    return err.value


async def _cross_session_reuse(stack: Stack) -> tuple[list[str], list[str]]:
    """(what went wrong, the human's approval ids for the request) after the reuse attempts."""
    email = new_email()
    human = await stack.login(email)
    first = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
    second = await stack.open_session(human, email, "helper", allowed_services=["cloud/*"])
    wrong: list[str] = []
    body = {"service_id": "cloud/workers", "name": "w1", "request_id": "reuse-1"}
    async with await stack.agent(human, "planner", first) as planner:
        view = await planner.provisions.create(**body, wait=20)  # type: ignore[arg-type]
        assert view.state == "waiting_for_human", view
        again = await planner.provisions.create(**body, wait=5)  # type: ignore[arg-type]
        if [w.approval_id for w in again.waiting_for] != [w.approval_id for w in view.waiting_for]:
            wrong.append(f"the same request again is another request: {again}")
        other = await _conflict(planner, **{**body, "name": "w2"})
        if (other.code, other.status) != (ErrorCode.IDEMPOTENCY_CONFLICT, 409):
            wrong.append(f"other parameters: {other.code} {other.status}")
    async with await stack.agent(human, "helper", second) as helper:
        try:
            seen = await helper.provisions.create(**body, wait=5)  # type: ignore[arg-type]
            wrong.append(f"another session reused the request id and saw {seen.state}")
        except ApiError as err:
            if (err.code, err.status) != (ErrorCode.IDEMPOTENCY_CONFLICT, 409):
                wrong.append(f"another session: {err.code} {err.status}")
            if "other parameters" in str(err):
                wrong.append("another session learned about the request's parameters")
    stranger_email = new_email()
    stranger = await stack.login(stranger_email)
    sid = await stack.open_session(stranger, stranger_email, "planner", allowed_services=["cloud/*"])
    async with await stack.agent(stranger, "planner", sid) as theirs:
        own = await theirs.provisions.create(**{**body, "name": "w9"}, wait=20)  # type: ignore[arg-type]
        if own.state != "waiting_for_human":
            wrong.append(f"another principal's equal request id: {own.state}")
    approvals = [a.approval_id for a in await human.approvals.list() if a.workflow_id.endswith("-reuse-1")]
    await stranger.aclose()
    await human.aclose()
    return wrong, approvals


async def test_a_reused_request_id_is_the_same_request_or_a_conflict(stack: Stack) -> None:
    wrong, approvals = await _cross_session_reuse(stack)
    assert wrong == []
    assert len(approvals) == 1, approvals  # one request, one gate: nothing started twice


async def test_the_test_catches_an_api_that_lets_another_session_reuse_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack.api, "authorization_disabled", True)
    wrong, _ = await _cross_session_reuse(stack)
    # its agent differs, so the broken API reports "other parameters": it tells the other session
    assert any(w.startswith("another session") for w in wrong), wrong
