"""`qm audit` in-process on a real store: queries, the trace of a sub-agent's purchase, verify, exports."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.audit import AuditEvent
from models.money import Money
from models.secret import Secret
from providers.audit import SqliteAuditStore
from quartermaster.cli import main
from quartermaster.config import STORE_FILE
from quartermaster.keys import Keyring, write_key_file
from tests.fixtures.files import read_bytes_in_child, store_files
from tests.leak_scan import canary_forms
from tests.ocsf_validator import ocsf_errors

CANARY = "canary-audit-5be1c0de-never-stored"
STORY = [
    "request.received",
    "authorization.decided",
    "approval.requested",
    "approval.granted",
    "account.created",
    "payment_token.issued",
    "charge.made",
    "resource.created",
    "credential.minted",
]
CHAIN = ["agent:planner", "agent:sub-agent"]


@pytest.fixture
def qm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Keyring]:
    keyring = Keyring.generate()
    write_key_file(tmp_path / "keys.json", keyring)
    monkeypatch.setenv("QM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("QM_KEYS", raising=False)
    monkeypatch.delenv("QM_KEYS_FILE", raising=False)
    monkeypatch.delenv("QM_AUDIT_DB", raising=False)
    return tmp_path, keyring


@pytest.fixture
def story(qm_env: tuple[Path, Keyring]) -> dict[str, str]:
    """A sub-agent's purchase for alice, interleaved with bob's unrelated request."""
    data_dir, keyring = qm_env
    alice, bob = keyring.principal_id("alice@example.com"), keyring.principal_id("bob@example.com")
    store = SqliteAuditStore(data_dir / STORE_FILE)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    wf = "provision-req-42"
    common = {"principal_id": alice, "workflow_id": wf, "request_id": "req-42", "provider": "cloud"}
    extra: dict[str, dict[str, object]] = {
        "request.received": {"agent_chain": CHAIN, "session_ids": ["s-planner", "s-sub"], "service_id": "vm"},
        "authorization.decided": {"agent_chain": CHAIN, "reason": "within the delegated scope"},
        "approval.requested": {"amount": Money(amount=1500)},
        "approval.granted": {"approved_by": alice},
        "account.created": {"details": {"link_action": "created"}},
        "payment_token.issued": {"details": {"spt": Secret(CANARY), "token_id": "spt_123"}},
        "charge.made": {"amount": Money(amount=1500), "details": {"client_secret": CANARY}},
        "resource.created": {"resource_id": "res-9", "service_id": "vm"},
        "credential.minted": {"resource_id": "res-9", "credential_id": "cred-77",
                              "details": {"access": {"__qm_secret__": CANARY}}},
    }  # fmt: skip
    for i, action in enumerate(STORY):
        # two steps share a workflow time (one workflow task): seq must order them
        when = t0 + timedelta(minutes=min(i, 5))
        store.append(
            AuditEvent.model_validate(
                {"event_id": f"{wf}:{i}", "time": when, "action": action, **common, **extra[action]}
            )
        )
        if i in (2, 6):
            store.append(
                AuditEvent(
                    event_id=f"provision-req-other:{i}",
                    time=datetime.now(UTC) - timedelta(minutes=10 - i),
                    action="request.received",
                    principal_id=bob,
                    agent_chain=["agent:other"],
                    request_id="req-other",
                    provider="db",
                )
            )
    store.close()
    return {"alice": alice, "bob": bob, "t0": t0.isoformat()}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


# -- trace -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("subject", ["req-42", "res-9"])
def test_trace_shows_the_whole_purchase_in_order(
    capsys: pytest.CaptureFixture[str], story: dict[str, str], subject: str
) -> None:
    trace = run_json(capsys, "audit", "trace", subject, "--json")
    assert isinstance(trace, dict)
    assert [r["event"]["action"] for r in trace["records"]] == STORY
    assert trace["chain"] == [story["alice"], *CHAIN]
    granted = [a for a in trace["approvals"] if a["action"] == "approval.granted"]
    assert granted == [{"action": "approval.granted", "seq": granted[0]["seq"], "approved_by": story["alice"],
                        "outcome": "success", "reason": None}]  # fmt: skip
    assert [c["amount"] for c in trace["charges"]] == [{"amount": 1500, "currency": "usd"}]
    assert trace["credential_ids"] == ["cred-77"]
    assert trace["request_ids"] == ["req-42"]


def test_trace_text_names_the_chain_approver_charge_and_credential(
    capsys: pytest.CaptureFixture[str], story: dict[str, str]
) -> None:
    code, out, _ = run(capsys, "audit", "trace", "req-42")
    assert code == 0
    assert f"chain: {story['alice']} -> agent:planner -> agent:sub-agent" in out
    assert f"approval: approval.granted by {story['alice']}" in out
    assert "charge: 15.00 USD at cloud" in out
    assert "credentials: cred-77" in out
    table_lines = out.split("\n\n", 1)[1].splitlines()[1:]
    assert [line.split()[2] for line in table_lines] == STORY
    assert "req-other" not in out


def test_trace_of_an_unknown_subject_is_not_found(
    capsys: pytest.CaptureFixture[str], story: dict[str, str]
) -> None:
    code, out, _ = run(capsys, "audit", "--json", "trace", "req-nope")
    assert code == 2
    assert json.loads(out)["error"]["code"] == "NOT_FOUND"


# -- queries ---------------------------------------------------------------------------------------
def test_query_filters(capsys: pytest.CaptureFixture[str], story: dict[str, str]) -> None:
    def actions(*argv: str) -> list[tuple[str | None, str]]:
        records = run_json(capsys, "audit", "--json", *argv)
        assert isinstance(records, list)
        return [(r["event"]["request_id"], r["event"]["action"]) for r in records]

    assert actions("--principal", "alice@example.com") == [("req-42", a) for a in STORY]
    assert actions("--principal", "Bob@Example.com") == [("req-other", "request.received")] * 2
    assert actions("--principal", story["bob"]) == [("req-other", "request.received")] * 2
    assert actions("--agent", "agent:sub-agent") == [("req-42", "request.received"),
                                                     ("req-42", "authorization.decided")]  # fmt: skip
    assert actions("--session", "s-sub") == [("req-42", "request.received")]
    assert actions("--provider", "db") == [("req-other", "request.received")] * 2
    assert actions("--since", "1h") == [("req-other", "request.received")] * 2
    since = (datetime.fromisoformat(story["t0"]) + timedelta(minutes=3)).isoformat()
    assert [a for _, a in actions("--since", since, "--principal", "alice@example.com")] == STORY[3:]
    assert actions("--action", "charge.made", "--limit", "1") == [("req-42", "charge.made")]
    assert actions("--principal", "carol@example.com") == []


def test_query_table_for_people(capsys: pytest.CaptureFixture[str], story: dict[str, str]) -> None:
    code, out, _ = run(capsys, "audit", "--agent", "agent:sub-agent")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["SEQ", "TIME", "ACTION", "OUTCOME"]
    assert "agent:planner > agent:sub-agent" in lines[1]
    assert len(lines) == 3


def test_the_service_column_names_the_provider_once(
    capsys: pytest.CaptureFixture[str], qm_env: tuple[Path, Keyring]
) -> None:
    data_dir, keyring = qm_env
    store = SqliteAuditStore(data_dir / STORE_FILE)
    store.append(
        AuditEvent(
            event_id="provision-req-r2:0", time=datetime.now(UTC), action="request.received",
            principal_id=keyring.principal_id("carol@example.com"), request_id="req-r2",
            provider="cloud", service_id="cloud/r2",
        )
    )  # fmt: skip
    store.close()
    code, out, _ = run(capsys, "audit", "--principal", "carol@example.com")
    assert code == 0 and " cloud/r2 " in out and "cloud/cloud" not in out, out


@pytest.mark.parametrize(
    ("argv", "code", "error"),
    [
        (["audit", "--since", "yesterday"], 2, "INVALID_REQUEST"),
        (["audit", "--limit", "0"], 2, "INVALID_REQUEST"),
        (["audit", "--principal", "not-an-email"], 2, "INVALID_REQUEST"),
    ],
)
def test_bad_input_is_refused(
    capsys: pytest.CaptureFixture[str], story: dict[str, str], argv: list[str], code: int, error: str
) -> None:
    got, out, _ = run(capsys, *argv, "--json")
    assert (got, json.loads(out)["error"]["code"]) == (code, error)


def test_no_store_and_no_key_file_are_clear_errors(
    capsys: pytest.CaptureFixture[str], qm_env: tuple[Path, Keyring]
) -> None:
    data_dir, _ = qm_env
    code, out, _ = run(capsys, "audit", "verify", "--json")
    assert (code, json.loads(out)["error"]["code"]) == (2, "NOT_FOUND")
    assert not (data_dir / STORE_FILE).exists()  # a read never creates the store
    SqliteAuditStore(data_dir / STORE_FILE).close()
    (data_dir / "keys.json").unlink()
    code, out, _ = run(capsys, "audit", "--principal", "alice@example.com", "--json")
    assert (code, json.loads(out)["error"]["code"]) == (2, "INVALID_CONFIGURATION")


# -- verify ----------------------------------------------------------------------------------------
def test_verify_passes_then_fails_at_the_edited_row(
    capsys: pytest.CaptureFixture[str], story: dict[str, str], qm_env: tuple[Path, Keyring]
) -> None:
    code, out, _ = run(capsys, "audit", "verify")
    assert code == 0 and out.startswith("audit trail intact: 11 records")
    db = qm_env[0] / STORE_FILE
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TRIGGER audit_records_no_update")
        (seq,) = conn.execute("SELECT seq FROM audit_records WHERE action = 'charge.made'").fetchone()
        conn.execute(
            "UPDATE audit_records SET event_json = replace(event_json, '1500', '15') WHERE seq = ?", (seq,)
        )
        conn.commit()
    code, out, _ = run(capsys, "audit", "verify", "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["first_broken_seq"]) == (1, False, seq)
    code, out, _ = run(capsys, "audit", "verify")
    assert code == 1 and out.startswith(f"audit trail BROKEN at seq {seq}:")


def test_verify_fails_at_the_row_after_a_deleted_one(
    capsys: pytest.CaptureFixture[str], story: dict[str, str], qm_env: tuple[Path, Keyring]
) -> None:
    with closing(sqlite3.connect(qm_env[0] / STORE_FILE)) as conn:
        conn.execute("DROP TRIGGER audit_records_no_delete")
        conn.execute("DELETE FROM audit_records WHERE seq = 5")
        conn.commit()
    code, out, _ = run(capsys, "audit", "verify", "--json")
    assert (code, json.loads(out)["first_broken_seq"]) == (1, 6)


# -- export ----------------------------------------------------------------------------------------
def _no_canary(blob: bytes) -> None:
    for form, variants in canary_forms(CANARY).items():
        for v in variants:
            assert v not in blob, f"canary found as {form}"


def test_exports_are_json_lines_without_secrets(
    capsys: pytest.CaptureFixture[str], story: dict[str, str], qm_env: tuple[Path, Keyring]
) -> None:
    data_dir = qm_env[0]
    jsonl, ocsf = data_dir / "audit.jsonl", data_dir / "audit.ocsf.jsonl"
    assert run_json(capsys, "audit", "export", "--format", "jsonl", "--output", str(jsonl), "--json") == {
        "exported": 11, "format": "jsonl", "output": str(jsonl)}  # fmt: skip
    code, _, _ = run(capsys, "audit", "export", "--format", "ocsf", "--output", str(ocsf))
    assert code == 0

    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 12))
    assert [line["prev_hash"] for line in lines[1:]] == [line["hash"] for line in lines[:-1]]
    story_lines = [line for line in lines if line["event"]["request_id"] == "req-42"]
    assert [line["event"]["action"] for line in story_lines] == STORY

    events = [json.loads(line) for line in ocsf.read_text().splitlines()]
    assert len(events) == 11
    for doc, line in zip(events, lines, strict=True):
        assert ocsf_errors(doc) == [], (line["event"]["action"], ocsf_errors(doc))  # the real OCSF 1.7.0
        assert doc["class_uid"] == 6003 and doc["category_uid"] == 6
        assert doc["type_uid"] == 600300 + doc["activity_id"]
        assert doc["api"]["operation"] == line["event"]["action"]
        assert doc["metadata"]["uid"] == line["event"]["event_id"]
        assert doc["actor"]["user"]["uid"] == line["event"]["principal_id"]
        event_time = datetime.fromisoformat(line["event"]["time"])
        assert doc["time"] == int(event_time.timestamp() * 1000)
    charge = next(d for d in events if d["api"]["operation"] == "charge.made")
    assert charge["activity_id"] == 1 and charge["status_id"] == 1
    minted = next(d for d in events if d["api"]["operation"] == "credential.minted")
    assert {"uid": "cred-77", "type": "credential"} in minted["resources"]
    received = next(d for d in events if d["metadata"]["uid"] == "provision-req-42:0")
    assert received["actor"]["app_name"] == "agent:sub-agent"
    assert [a["name"] for a in received["src_endpoint"]["agent_list"]] == CHAIN
    assert received["unmapped"]["agent_chain"] == CHAIN

    # stdout export matches the file
    code, out, _ = run(capsys, "audit", "export", "--format", "jsonl")
    assert code == 0 and out == jsonl.read_text()
    # the canary reached the store as a Secret, a sealed marker and a secret-named field: 0 occurrences
    # the live store's files are read in a child process (tests/fixtures/files.py explains why)
    for blob in read_bytes_in_child([jsonl, ocsf, *store_files(data_dir)]).values():
        _no_canary(blob)
    assert "alice@example.com" not in jsonl.read_text() + ocsf.read_text()
