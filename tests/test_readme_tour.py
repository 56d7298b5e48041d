"""The README's tour, line by line, as a newcomer runs it on a fresh clone: `git clone` of this
repository into a temporary directory, the README's `python3 bootstrap.py dev` there (with
`--port-offset N`) in one shell, every line of the tour in another, from a directory outside the
clone. Placeholders (CODE, APPROVAL_ID, RESOURCE, SESSION, /path/to/quartermaster) are filled the way
a person would, from the inbox and the previous answers. Each line's exit code and output are
checked: the test fails when the README and the CLI disagree.

To avoid reinstalling, the clone's `.venv` links to this checkout's environment (with bootstrap's
install stamp, so bootstrap installs nothing) and `PYTHONPATH` points at the clone, so the code that
runs, the stack's processes included, is the clone's (asserted)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_devstack import _stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OFFSET = 500 + os.getpid() % 200 if (500 + os.getpid() % 200) % 1000 else 510
#: lines the tour says wait for a human
WAITING = ("qm provision cloud/workers --name w1", "qm session open")
#: what each line prints (stdout and stderr together), by the line's beginning; every line has one
EXPECT = {
    "qm catalog": r"cloud/workers\s+deployable\s+free",
    "qm quote": r"cloud/registrar:domain: due now 10\.99 USD, then 10\.99 USD per year; NOT reversible",
    "qm login --email alice@example.com --code": r"logged in as alice@example\.com until",
    "qm login --email": r"a login code was sent to alice@example\.com's channel",
    "qm inbox": r"\blogin\b",
    "qm provision": r"TERMS_ACCEPTANCE_REQUIRED: accept cloud's terms of service",
    "qm approvals": r"\.(terms|session_open)\s",
    "qm approve": r"approved \S+\.(terms|session_open): ",
    "qm status demo-1": r"cloud/workers res_\w+: complete, account created",
    "qm resources": r"res_\w+\s+cloud/workers\s+cred_",
    "qm exec": r"^\d+$",
    "qm session open": r"session \w+ waits for your approval",
    "qm run --agent planner --session SESSION -- qm provision": r"cloud/workers res_\w+: complete",
    "qm run --agent planner --session SESSION -- qm session delegate": r"for helper \(depth 1\)",
    "qm rotate": r"new credential cred_\w+ expires",
    "qm remove": r"removed res_\w+",
    "qm billing show": r"cloud\s+100\.00 USD \(default\)",
    "qm session revoke": r"session \w+ revoked: 1 descendant session\(s\) closed, \d+ credential\(s\)",
}


WHERE = "import quartermaster, workflows; print(quartermaster.__file__, workflows.__file__)"


def expected_output(line: str) -> str:
    for prefix in sorted(EXPECT, key=len, reverse=True):
        if line.startswith(prefix):
            return EXPECT[prefix]
    raise AssertionError(f"the tour has a line the test does not know: {line}")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of this repository whose .venv reuses this checkout's installed environment."""
    target = tmp_path / "quartermaster"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    venv = target / ".venv"
    venv.mkdir()
    for entry in BIN.parent.iterdir():
        if not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    digest = hashlib.sha256((target / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".qm-installed").write_text(digest)  # what bootstrap writes after installing
    return target


def start_bootstrap_dev(repo: Path, data_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """The README's first command, on the clone, with the port offset and a data directory."""
    argv = [sys.executable, "bootstrap.py", "dev", "--data-dir", str(data_dir), "--port-offset", str(OFFSET)]
    proc = subprocess.Popen(
        argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + 120, []
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops everything" in line:
            assert f"export QM_API_URL=http://127.0.0.1:{8700 + OFFSET}" in "".join(seen), "".join(seen)
            return proc
        if time.monotonic() > deadline or proc.poll() is not None:
            break
    proc.kill()
    pytest.fail("bootstrap.py dev did not come up:\n" + "".join(seen[-30:]))


def tour_lines(root: Path = ROOT) -> list[str]:
    text = (root / "README.md").read_text()
    block = text.split("## A tour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", raw).strip()
        if line:
            lines.append(line)
    return lines


class Shell:
    def __init__(self, home: Path) -> None:
        self.cwd = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("QM_", "TEMPORAL_"))}
        self.env["QM_CONFIG_DIR"] = str(home / "config")
        self.email = ""

    def qm(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "qm"), *argv], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=120
        )

    def json(self, *argv: str) -> Any:
        done = self.qm(*argv, "--json")
        return json.loads(done.stdout)

    def newest_code(self, key: str, value: str | None = None) -> str:
        items = self.json("inbox", "--email", self.email)
        codes = [m["code"] for m in items if key in m and (value is None or m[key] == value)]
        assert codes, items
        return str(codes[-1])


def test_the_readme_tour_works_as_written_on_a_fresh_clone(tmp_path: Path, clone: Path) -> None:
    data_dir = tmp_path / "stack" / ".qm"
    home = tmp_path / "elsewhere"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QM_", "TEMPORAL_"))}
    base["PYTHONPATH"] = str(clone)  # the clone's code, not this checkout's editable install
    where = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-c", WHERE],
        env=base, cwd=home, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert all(path.startswith(str(clone)) for path in where.stdout.split()), where.stdout
    proc = start_bootstrap_dev(clone, data_dir, base)
    shell = Shell(home)
    shell.env["PYTHONPATH"] = str(clone)
    state: dict[str, str] = {}
    try:
        for line in tour_lines(clone):  # the clone's README, as the newcomer reads it
            if line.startswith(". "):
                assert line.endswith("/.venv/bin/activate"), line
                activate = Path(line.removeprefix(". ").replace("/path/to/quartermaster", str(clone)))
                assert activate.exists(), activate
                shell.env["PATH"] = f"{activate.parent}{os.pathsep}{shell.env.get('PATH', '')}"
                continue
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                shell.env[name] = value.replace("8700", str(8700 + OFFSET))
                continue
            argv = shlex.split(line)
            assert argv[0] == "qm", line
            if argv[1] == "login" and "--email" in argv:
                shell.email = argv[argv.index("--email") + 1]
            if "APPROVAL_ID" in argv:
                pending = shell.json("approvals")
                assert pending, f"nothing to approve before: {line}"
                state["approval"] = pending[-1]["approval_id"]
                argv = [state["approval"] if a == "APPROVAL_ID" else a for a in argv]
            if "CODE" in argv:
                pending = state.get("approval")
                if argv[1] == "login":
                    login = json.loads((home / "config" / "pending-login.json").read_text())
                    code = shell.newest_code("login_id", login["login_id"])
                else:
                    code = shell.newest_code("approval_id", pending)
                argv = [code if a == "CODE" else a for a in argv]
            if "RESOURCE" in argv:
                resources = shell.json("resources")
                argv = [resources[0]["resource_id"] if a == "RESOURCE" else a for a in argv]
            if "SESSION" in argv:
                argv = [state["session"] if a == "SESSION" else a for a in argv]
            done = shell.qm(*argv[1:])
            expected = 3 if line.startswith(WAITING) else 0
            said = done.stdout + done.stderr
            assert done.returncode == expected, f"{line}\n-> exit {done.returncode}\n{said}"
            assert re.search(expected_output(line), said, re.MULTILINE), f"{line}\n-> printed\n{said}"
            if argv[1:3] == ["session", "open"]:
                state["session"] = re.search(r"session (\w+) waits", done.stdout).group(1)  # type: ignore[union-attr]
            if argv[1] == "exec":
                assert done.stdout.strip().isdigit() and int(done.stdout) > 10, done.stdout
    finally:
        left = _stop(proc)
    assert left == set()
