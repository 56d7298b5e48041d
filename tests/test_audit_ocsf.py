"""The OCSF export against the real OCSF 1.7.0 schema (tests/ocsf_validator.py): every action, outcome
and actor shape exports a valid event of the class that fits, and broken events are refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from models.audit import AuditAction, AuditEvent
from models.money import Money
from models.session import agent_workflow_id
from providers.audit.ocsf import to_ocsf
from providers.audit.store import StoredAuditRecord
from tests.ocsf_validator import ocsf_errors

PRINCIPAL = "p0123456789abcdef0123"
CHAIN = ["planner", "builder"]
OUTCOMES = ("success", "failure", "refused")


def _record(action: str, *, chain: list[str], outcome: str = "success", **fields: Any) -> StoredAuditRecord:
    event = AuditEvent.model_validate(
        {
            "event_id": f"session-abc:{action}",
            "time": datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC),
            "action": action,
            "outcome": outcome,
            "principal_id": PRINCIPAL,
            "agent_chain": chain,
            "session_ids": ["s-root", "s-child"][: len(chain)],
            "workflow_id": "session-abc",
            **fields,
        }
    )
    return StoredAuditRecord(seq=7, event=event, prev_hash="0" * 64, hash="1" * 64)


def _full(action: str, chain: list[str], outcome: str) -> StoredAuditRecord:
    """A record with every field an event of `action` may carry."""
    details: dict[str, Any] = (
        {"allowed_services": ["cloud/*", "db/postgres"]} if action.startswith("session.") else {}
    )
    return _record(
        action,
        chain=chain,
        outcome=outcome,
        reason=None if outcome == "success" else "refused for a reason",
        request_id="req-1",
        provider="cloud",
        service_id="vm",
        resource_id="res-1",
        credential_id="cred-1",
        amount=Money(amount=1500),
        approved_by=PRINCIPAL,
        details=details,
    )


def test_every_action_exports_a_valid_ocsf_1_7_event() -> None:
    actions = get_args(AuditAction)
    assert len(actions) >= 30
    checked = 0
    for action in actions:
        for chain in ([], CHAIN[:1], CHAIN):
            for outcome in OUTCOMES:
                for record in (_full(action, chain, outcome), _record(action, chain=chain, outcome=outcome)):
                    doc = to_ocsf(record)
                    assert ocsf_errors(doc) == [], (action, chain, outcome, ocsf_errors(doc))
                    expected = 3003 if action in ("session.opened", "session.delegated") else 6003
                    assert doc["class_uid"] == expected, action
                    assert doc["metadata"]["version"] == "1.7.0" and "profiles" not in doc["metadata"]
                    assert "cloud" not in doc
                    assert doc["src_endpoint"]["name"] and doc["src_endpoint"]["uid"]
                    checked += 1
    assert checked == len(actions) * 3 * 3 * 2


def test_grants_and_delegations_are_authorize_session_events() -> None:
    doc = to_ocsf(_full("session.delegated", CHAIN, "success"))
    assert (doc["class_uid"], doc["category_uid"], doc["activity_id"], doc["type_uid"]) == (
        3003,
        3,
        1,
        300301,
    )
    assert doc["privileges"] == ["cloud/*", "db/postgres"] and "group" not in doc
    assert doc["user"] == {"uid": PRINCIPAL, "type_id": 1, "type": "User"}
    assert doc["session"]["uid"] == "s-child"
    assert doc["actor"]["invoked_by"] == "planner > builder" and doc["actor"]["app_name"] == "builder"
    # a record from before the grant's services were audited names the session as the one `group`
    old = to_ocsf(_record("session.opened", chain=CHAIN[:1]))
    assert old["group"] == {"name": "quartermaster session", "uid": "s-root"} and "privileges" not in old
    assert ocsf_errors(old) == []


def test_the_agent_chain_is_ocsf_agent_objects_root_first() -> None:
    doc = to_ocsf(_full("charge.made", CHAIN, "success"))
    agents = doc["src_endpoint"]["agent_list"]
    assert [a["name"] for a in agents] == CHAIN
    assert [a["uid"] for a in agents] == [agent_workflow_id(PRINCIPAL, a) for a in CHAIN]
    assert {(a["type_id"], a["type"]) for a in agents} == {(99, "AI Agent")}
    assert doc["src_endpoint"]["uid"] == agent_workflow_id(PRINCIPAL, "builder")
    assert doc["api"] == {
        "operation": "charge.made",
        "service": {"name": "cloud"},
        "request": {"uid": "req-1"},
    }
    assert doc["unmapped"]["amount"] == {"amount": 1500, "currency": "usd"}
    assert doc["time"] == int(datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC).timestamp() * 1000)


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _set(value: Any, *path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


BROKEN: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "API Activity without its required src_endpoint": ("charge.made", _drop("src_endpoint")),
    "API Activity without api.operation": ("charge.made", _drop("api", "operation")),
    "without metadata.product": ("charge.made", _drop("metadata", "product")),
    "without severity_id": ("charge.made", _drop("severity_id")),
    "src_endpoint naming nothing": ("charge.made", _set({"port": 443}, "src_endpoint")),
    "cloud without the cloud profile (the 1.3 export)": (
        "charge.made",
        _set({"provider": "quartermaster"}, "cloud"),
    ),
    "an activity API Activity does not define": ("charge.made", _set(7, "activity_id")),
    "a type_uid that does not match": ("charge.made", _set(600302, "type_uid")),
    "a string where OCSF wants a timestamp": ("charge.made", _set("2026-12-01T12:00:00Z", "time")),
    "an attribute OCSF does not define": ("charge.made", _set("x", "qm_extra")),
    "an agent object naming nothing": ("charge.made", _set([{"type_id": 99}], "src_endpoint", "agent_list")),
    "Authorize Session without its required user": ("session.opened", _drop("user")),
    "Authorize Session with both privileges and group": (
        "session.opened",
        _set({"name": "g"}, "group"),
    ),
    "Authorize Session with neither privileges nor group": ("session.opened", _drop("privileges")),
    "the 1.3 version label": ("charge.made", _set("1.3.0", "metadata", "version")),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_validator_refuses_a_broken_event(name: str) -> None:
    action, mutate = BROKEN[name]
    doc = to_ocsf(_full(action, CHAIN, "success"))
    assert ocsf_errors(doc) == []
    broken = copy.deepcopy(doc)
    mutate(broken)
    assert ocsf_errors(broken), f"the validator accepted: {name}"


def test_the_1_3_export_shape_broke_its_own_version_too() -> None:
    """What 0.2 exported (`cloud` with no `metadata.profiles`) is refused by the 1.3.0 schema it
    claimed, and the profile it lacked is what would have made `cloud` legal."""
    doc = to_ocsf(_full("charge.made", CHAIN, "success"))
    old = {**copy.deepcopy(doc), "cloud": {"provider": "quartermaster"}}
    for key in ("type_name", "src_endpoint"):  # keep to what 1.3's objects define
        old.pop(key)
    old["src_endpoint"] = {"svc_name": "quartermaster"}
    old["metadata"] = {**old["metadata"], "version": "1.3.0"}
    old["metadata"].pop("event_code")
    errors = ocsf_errors(old, version="1.3.0")
    assert any("'cloud' was unexpected" in e for e in errors), errors
    old["metadata"]["profiles"] = ["cloud"]
    assert not any("'cloud' was unexpected" in e for e in ocsf_errors(old, version="1.3.0"))
