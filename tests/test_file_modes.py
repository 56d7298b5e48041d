"""After a real run (a paid purchase through the whole stack) the data directory is 0700 and every
SQLite store in it (the server's one store, the local Stripe, the simulators), with its WAL and
shared-memory files, is 0600, even under a permissive umask and in a directory created 0755."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from providers.private_files import connect_private_sqlite
from quartermaster.keys import Keyring
from tests.fixtures.stack import new_email, open_stack
from tests.test_provision_e2e import result_of


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_and_every_store_are_private_after_a_real_run(
    client: Client, keyring: Keyring, tmp_path: Path, permissive_umask: None
) -> None:
    data_dir = tmp_path / "qm-data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)  # noqa: S103 - the loose mode a 022 umask gives, to be tightened
    async with open_stack(client, keyring, data_dir) as stack:
        email = new_email()
        req = stack.request("cloud/r2", email)
        await stack.qm.submit(req)
        await stack.decide((await stack.wait_for_approval(req.request_id, "terms"))["approval_id"], email)
        pm = await stack.wait_for_approval(req.request_id, "payment_method")
        await stack.attach_card(pm["details"]["checkout_url"])  # the Stripe webhook fills the inbox
        assert (await result_of(stack, req.request_id)).outcome == "completed"
        stores = sorted(data_dir.rglob("*.sqlite*"))
        assert _mode(data_dir) == 0o700
        names = {p.name for p in stores}
        # the one store (connections, OAuth state, audit, webhook inbox, replay guard, ...; its WAL goes
        # when its per-unit-of-work connection closes) and the simulators, which keep theirs
        for expected in ("quartermaster.sqlite", "stripe.sqlite",
                         "cloud.sqlite", "cloud.sqlite-wal"):  # fmt: skip
            assert expected in names, sorted(names)
        loose = {str(p.relative_to(data_dir)): oct(_mode(p)) for p in stores if _mode(p) != 0o600}
        assert loose == {}
        dirs = {str(p.relative_to(data_dir)): oct(_mode(p)) for p in data_dir.rglob("*") if p.is_dir()}
        assert all(mode == oct(0o700) for mode in dirs.values()), dirs


def test_an_existing_loose_store_is_tightened(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "old.sqlite"
    db = connect_private_sqlite(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    for p in tmp_path.glob("old.sqlite*"):
        os.chmod(p, 0o644)  # as an earlier version left it
    db.close()
    again = connect_private_sqlite(path)
    again.execute("INSERT INTO t VALUES (1)")
    assert {p.name: _mode(p) for p in tmp_path.glob("old.sqlite*")} == {
        p.name: 0o600 for p in tmp_path.glob("old.sqlite*")
    }
    again.close()
