"""Crash (issue 15): a worker process SIGKILLed while it writes audit and connection rows leaves the
shared store readable, every acknowledged row in place and the audit chain verifiable, on both
backends, while another process (a second host) keeps writing through the kill.

The killed process writes the way the worker does: the store from `worker.build_store` (the real
AES-GCM seal key), audit batches through the `record_audit_batch` activity (run in Temporal's
`ActivityEnvironment`), linked accounts through the connection store; it prints each row once the
store acknowledged it, so the test knows what must have survived.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.audit import AuditEvent
from models.secret import Secret
from quartermaster.codec import SecretBox
from quartermaster.config import Settings
from quartermaster.keys import Keyring
from tests.fixtures.hosts import ROOT
from worker import build_store

#: one worker's writes, forever, until it is killed
KILLED_WORKER = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from temporalio.testing import ActivityEnvironment
from activities.audit import AuditActivities
from models.audit import AuditEvent
from models.secret import Secret
from quartermaster.config import Settings
from quartermaster.keys import Keyring
from worker import build_store

keyring = Keyring.from_json(Path(sys.argv[2]).read_text())
store = build_store(Settings(data_dir=Path(sys.argv[3]), database_url=sys.argv[1]), keyring)
audit = AuditActivities(store.audit)
env = ActivityEnvironment()

async def forever() -> None:
    i = 0
    while True:
        batch = [AuditEvent(event_id=f"w{i}-{j}", time=datetime.now(UTC), action="account.linked",
                            principal_id=f"p{i % 5}", provider="cloud") for j in range(3)]
        await env.run(audit.record_batch, batch)
        await store.connections.put_connection(principal_id=f"p{i % 5}", provider="cloud",
            account_id=f"acct-{i}", link_action="created", credential=Secret(f"cred-{i}"), scopes=["a"])
        print(f"acked {i}", flush=True)
        i += 1

asyncio.run(forever())
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_worker_killed_mid_write_leaves_the_store_readable_and_the_chain_verifiable(
    tmp_path: Path, keyring: Keyring, request: pytest.FixtureRequest, backend: str
) -> None:
    url = (
        str(tmp_path / "quartermaster.sqlite")
        if backend == "sqlite"
        else request.getfixturevalue("postgres_db")
    )
    keys = tmp_path / "keys.json"
    keys.write_text(keyring.to_json())
    here = build_store(Settings(data_dir=tmp_path, database_url=url), keyring)  # the other host
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, url, str(keys), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked, mine = -1, 0
    try:
        while acked < 20:  # both hosts write at once ...
            line = proc.stdout.readline()
            assert line.startswith("acked "), line
            acked = int(line.split()[1])
            here.audit.append(AuditEvent(event_id=f"h{mine}", time=datetime.now(UTC), action="charge.made"))
            mine += 1
        proc.send_signal(signal.SIGKILL)  # ... and one dies mid-stream (usually inside a transaction)
        proc.wait(10)
        out = proc.stdout.read()
        acked = max([acked, *(int(x.split()[1]) for x in out.splitlines() if x.startswith("acked "))])
        # the surviving host keeps writing after the kill: nothing is locked or half-written
        for n in range(mine, mine + 10):
            assert here.audit.append(
                AuditEvent(event_id=f"h{n}", time=datetime.now(UTC), action="charge.made")
            )
    finally:
        if proc.poll() is None:
            proc.kill()
        here.close()
    # what a restarted worker or `qm audit verify` reads
    store = build_store(Settings(data_dir=tmp_path, database_url=url), keyring)
    try:
        report = store.audit.verify()
        assert report.ok, report
        ids = {r.event.event_id for r in store.audit.iter_all()}
        assert {f"w{i}-{j}" for i in range(acked + 1) for j in range(3)} <= ids  # every acknowledged row
        assert {f"h{n}" for n in range(mine + 10)} <= ids
        assert report.records == len(ids)
        for p in range(5):  # every principal's account row reads back and unseals
            conn = asyncio.run(store.connections.get_connection(principal_id=f"p{p}", provider="cloud"))
            assert (
                conn is not None
                and conn.credential.reveal() == f"cred-{conn.account_id.removeprefix('acct-')}"
            )
            assert isinstance(conn.credential, Secret)
        # sealed at rest: no credential in the table in plaintext
        rows = store.db.run_sync(lambda tx: tx.execute("SELECT credential FROM connections"))
        assert rows and not any(str(r[0]).startswith("cred-") for r in rows)
        assert all(SecretBox(keyring).unseal(str(r[0])).startswith("cred-") for r in rows)
    finally:
        store.close()
    if backend == "sqlite":
        with sqlite3.connect(url) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
