"""The README's tour, line by line, as a newcomer runs it: `qm dev --port-offset N` in one shell, every
line of the tour in another, from a directory outside the repository. Placeholders (CODE, APPROVAL_ID,
RESOURCE, SESSION) are filled the way a person would, from the inbox and the previous answers. The test
fails when the README and the CLI disagree (a line that errors, or a different exit code)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.test_devstack import _start, _stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OFFSET = 500 + os.getpid() % 200 if (500 + os.getpid() % 200) % 1000 else 510
#: lines the tour says wait for a human
WAITING = ("qm provision cloud/workers --name w1", "qm session open")


def tour_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
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


def test_the_readme_tour_works_as_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack" / ".qm"
    home = tmp_path / "elsewhere"
    home.mkdir()
    proc = _start(data_dir, offset=OFFSET)
    shell = Shell(home)
    state: dict[str, str] = {}
    try:
        for line in tour_lines():
            if line.startswith(". "):
                assert line.endswith("/.venv/bin/activate"), line
                shell.env["PATH"] = f"{BIN}{os.pathsep}{shell.env.get('PATH', '')}"  # what activate does
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
            assert done.returncode == expected, (
                f"{line}\n-> exit {done.returncode}\n{done.stdout}{done.stderr}"
            )
            if argv[1:3] == ["session", "open"]:
                state["session"] = re.search(r"session (\w+) waits", done.stdout).group(1)  # type: ignore[union-attr]
            if argv[1] == "exec":
                assert done.stdout.strip().isdigit() and int(done.stdout) > 10, done.stdout
    finally:
        left = _stop(proc)
    assert left == set()
