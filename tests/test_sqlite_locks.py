"""The SQLite corruption of issue 15, reproduced and shown fixed (docs/decisions.md, "SQLite and POSIX
advisory locks").

POSIX `fcntl` locks belong to the (process, file) pair: closing ANY descriptor of a file drops every
lock the process holds on it. A process with a long-lived WAL connection that also reads the database
file with a plain `open()`/`read()`/`close()` therefore loses its shared lock without knowing. A peer
process that then closes its own connection finds itself alone, checkpoints and deletes the WAL; the
survivor keeps appending to the deleted WAL, and those acknowledged rows are gone for every other
reader (and later `disk I/O error` / `database disk image is malformed`).

The first test shows the failure with bare `sqlite3`; the others show that each fix removes it: the
raw read done in a child process (what tests/fixtures/files.py does), and the store's own SQLite
backend, which holds no lock between units of work. The last one kills a writer mid-stream.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from models.audit import AuditEvent
from models.secret import Secret
from providers.store import open_store
from tests.fixtures.files import read_bytes_in_child
from tests.test_store_contract import Rot13Sealer

ROOT = Path(__file__).resolve().parent.parent

#: a peer process (another worker): writes one row and closes, as a restarting worker would
PEER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("INSERT INTO t VALUES ('peer')")
db.close()
"""


def count_elsewhere(path: Path, table: str = "t") -> int:
    """Rows as a fresh process sees them (what a restarted worker or `qm audit` would read)."""
    script = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])"
    sql = f"SELECT count(*) FROM {table}"  # noqa: S608 - a test's constant table name
    out = subprocess.run(
        [sys.executable, "-c", script, str(path), sql], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


def survivor_scenario(path: Path, read: str) -> tuple[int, int]:
    """A long-lived WAL connection writes 3 rows; the files are read (`read`: "none", "raw" in this
    process, "child" in a child process); a peer writes one row and closes; the survivor writes 3 more.
    Returns (rows the survivor sees, rows a fresh process sees)."""
    survivor = sqlite3.connect(path, isolation_level=None)
    survivor.execute("PRAGMA journal_mode=WAL")
    survivor.execute("CREATE TABLE t (v TEXT)")
    for i in range(3):
        survivor.execute("INSERT INTO t VALUES (?)", (f"s{i}",))
    files = sorted(path.parent.glob(path.name + "*"))
    if read == "raw":
        for f in files:
            f.read_bytes()  # open + read + close: this process's locks on that file are gone
    elif read == "child":
        read_bytes_in_child(files)
    subprocess.run([sys.executable, "-c", PEER, str(path)], check=True)
    for i in range(3, 6):
        survivor.execute("INSERT INTO t VALUES (?)", (f"s{i}",))
    seen = survivor.execute("SELECT count(*) FROM t").fetchone()[0]
    try:
        return seen, count_elsewhere(path)
    finally:
        survivor.close()


def test_a_raw_read_in_the_process_loses_acknowledged_rows(tmp_path: Path) -> None:
    seen, elsewhere = survivor_scenario(tmp_path / "audit.sqlite", read="raw")
    # the survivor believes all 7 rows are stored; the database holds only 4: its last 3 are lost
    assert (seen, elsewhere) == (7, 4)


def test_without_the_raw_read_nothing_is_lost(tmp_path: Path) -> None:
    assert survivor_scenario(tmp_path / "audit.sqlite", read="none") == (7, 7)


def test_reading_the_files_in_a_child_process_is_harmless(tmp_path: Path) -> None:
    assert survivor_scenario(tmp_path / "audit.sqlite", read="child") == (7, 7)


STORE_PEER = """
import sys
from datetime import UTC, datetime
from models.audit import AuditEvent
from providers.store import open_store
store = open_store(sys.argv[1])
store.audit.append(AuditEvent(event_id="peer", time=datetime.now(UTC), action="charge.made"))
store.close()
"""


def test_the_store_survives_a_raw_read_in_its_own_process(tmp_path: Path) -> None:
    """The same sequence on the store: it holds no lock between units of work, so there is none to
    lose. (Project code still never reads the files raw; this is the second line of defence.)"""
    path = tmp_path / "quartermaster.sqlite"
    store = open_store(path)

    def append(name: str) -> None:
        assert store.audit.append(AuditEvent(event_id=name, time=datetime.now(UTC), action="charge.made"))

    for i in range(3):
        append(f"s{i}")
    for f in sorted(tmp_path.glob("quartermaster.sqlite*")):
        f.read_bytes()
    subprocess.run([sys.executable, "-c", STORE_PEER, str(path)], check=True, cwd=ROOT)
    for i in range(3, 6):
        append(f"s{i}")
    assert count_elsewhere(path, "audit_records") == 7
    report = open_store(path).audit.verify()
    assert report.ok and report.records == 7


KILLED_WRITER = """
import asyncio, sys
from datetime import UTC, datetime
from models.audit import AuditEvent
from models.secret import Secret
from providers.store import open_store
from tests.test_store_contract import Rot13Sealer
store = open_store(sys.argv[1], sealer=Rot13Sealer())
async def forever():
    i = 0
    while True:
        store.audit.append(AuditEvent(event_id=f"k{i}", time=datetime.now(UTC), action="charge.made"))
        await store.connections.put_connection(principal_id=f"p{i % 7}", provider="cloud",
            account_id=f"a{i}", link_action="created", credential=Secret(f"c{i}"), scopes=[])
        if i == 20:
            print("writing", flush=True)
        i += 1
asyncio.run(forever())
"""


def test_a_writer_killed_mid_write_leaves_the_store_readable_and_the_chain_verifiable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "quartermaster.sqlite"
    store = open_store(path, sealer=Rot13Sealer())
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    # this process writes too while the other is killed in the middle of its stream
    for i in range(30):
        store.audit.append(AuditEvent(event_id=f"here{i}", time=datetime.now(UTC), action="charge.made"))
        if i == 10:
            proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.05)
    reopened = open_store(path, sealer=Rot13Sealer())
    report = reopened.audit.verify()
    assert report.ok and report.records >= 51
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn = asyncio.run(reopened.connections.get_connection(principal_id="p0", provider="cloud"))
    assert conn is not None and conn.credential.reveal().startswith("c")
    assert isinstance(conn.credential, Secret)
