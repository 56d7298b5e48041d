"""`qm dev` as a user runs it: the whole stack comes up, a request runs through the CLI, Ctrl-C stops
every child process, and a second start finds the earlier workflows (SQLite under the data dir)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quartermaster.config import DEV_PORTS

BIN = Path(sys.executable).parent


def _offset(start: int) -> int:
    """The first offset from `start` whose ports miss every default port (`qm dev` refuses the others:
    300 + pid % 200 = 468, say, puts the UI's 8233 on the codec server's 8701)."""
    defaults = set(DEV_PORTS.values())
    return next(o for o in range(start, start + 1000) if not {p + o for p in defaults} & defaults)


OFFSET = _offset(300 + os.getpid() % 200)  # away from a developer's own `qm dev` on the default ports


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc), so the test can prove none outlives `qm dev`."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(data_dir: Path, offset: int = OFFSET) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(BIN / "qm"), "dev", "--data-dir", str(data_dir), "--port-offset", str(offset)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops everything" in line:
            return proc
        if time.monotonic() > deadline or proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("qm dev did not come up:\n" + "".join(seen[-30:]))


def _qm(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`qm` as a second shell runs it: from another directory, knowing only the API's address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QM_", "TEMPORAL_"))}
    env["QM_API_URL"] = f"http://127.0.0.1:{8700 + OFFSET}"
    env["QM_CONFIG_DIR"] = str(data_dir.parent / "config")
    return subprocess.run(
        [str(BIN / "qm"), *argv], env=env, capture_output=True, text=True, timeout=60, cwd=data_dir.parent
    )


def _login(data_dir: Path, email: str) -> None:
    started = _qm(data_dir, "login", "--email", email, "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    login_id = json.loads(started.stdout)["login_id"]
    inbox = _qm(data_dir, "inbox", "--email", email, "--json")
    (code,) = [m["code"] for m in json.loads(inbox.stdout) if m.get("login_id") == login_id]
    done = _qm(data_dir, "login", "--email", email, "--code", code)
    assert done.returncode == 0, done.stderr
    config = data_dir.parent / "config"
    assert (config / "login.json").stat().st_mode & 0o777 == 0o600
    assert config.stat().st_mode & 0o777 == 0o700


def _stop(proc: subprocess.Popen[str]) -> set[int]:
    descendants = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in descendants):
        time.sleep(0.1)
    return {p for p in descendants if _alive(p)}


def test_qm_dev_runs_stops_cleanly_and_keeps_workflows(tmp_path: Path) -> None:
    data_dir = tmp_path / ".qm"
    proc = _start(data_dir)
    try:
        assert len(_children(proc.pid)) >= 8  # temporal, stripe, 3 providers, codec, api, worker
        catalog = _qm(data_dir, "catalog", "--json")
        assert catalog.returncode == 0, catalog.stderr
        assert {s["service_id"] for c in json.loads(catalog.stdout) for s in c["services"]} >= {
            "cloud/workers"
        }
        _login(data_dir, "dev@example.com")
        run = _qm(data_dir, "provision", "cloud/workers", "--name", "w1", "--request-id", "devstack-1",
                  "--json", "--wait", "30")  # fmt: skip
        assert run.returncode == 3, run.stdout + run.stderr  # a new principal must accept the terms
        assert json.loads(run.stdout)["error"]["code"] == "TERMS_ACCEPTANCE_REQUIRED"
        taken = _qm(data_dir, "dev", "--data-dir", str(tmp_path / "other"), "--port-offset", str(OFFSET))
        assert taken.returncode == 1 and "PORT_IN_USE" in taken.stderr
    finally:
        left = _stop(proc)
    assert left == set(), f"processes left behind: {left}"
    with socket.socket() as s:  # the ports are free again
        s.bind(("127.0.0.1", 7233 + OFFSET))

    proc = _start(data_dir)
    try:
        status = _qm(data_dir, "status", "devstack-1", "--json")
        assert status.returncode == 3, status.stdout + status.stderr  # still waiting, after a restart
        assert json.loads(status.stdout)["request"]["waiting_for"][0]["kind"] == "terms"
    finally:
        assert _stop(proc) == set()
