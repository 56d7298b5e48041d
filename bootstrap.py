"""Create the virtual environment when needed, then run the main job or the checks.

    python3 bootstrap.py dev     # install into .venv, then `qm dev` (the whole local stack)
    python3 bootstrap.py test    # install into .venv, then ruff, mypy and pytest

Only the standard library is used here, so it runs on a fresh clone with just Python and pip.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".qm-installed"
STRIPE_BETA = VENV / "stripe-beta"


def _ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before the venv exists
        sys.exit("Quartermaster needs Python 3.11 or newer")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != digest:
        print("installing Quartermaster and its dependencies into .venv ...", flush=True)
        subprocess.run(
            [str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"], check=True
        )
        STAMP.write_text(digest)
    # byte-compile the workflow code: the worker's sandbox re-imports it for every new workflow, and
    # where PYTHONDONTWRITEBYTECODE is set it would compile from source each time (docs/performance.md)
    packages = [
        str(ROOT / p)
        for p in ("workflows", "models", "activities", "providers", "quartermaster", "simulators")
    ]
    subprocess.run([str(BIN / "python"), "-m", "compileall", "-q", *packages], check=False)


def _ensure_stripe_beta() -> None:
    """Stripe's beta SDK (`[tool.quartermaster] stripe-beta` in pyproject.toml) in its own directory,
    beside the GA release the product imports: the contract test reads its Shared Payment Token types
    in a subprocess. Reinstalled when the pinned requirement changes."""
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["quartermaster"]["stripe-beta"]
    stamp = STRIPE_BETA / ".qm-installed"
    if stamp.exists() and stamp.read_text() == pinned:
        return
    print(f"installing {pinned} into {STRIPE_BETA} (the Stripe contract test's reference) ...", flush=True)
    shutil.rmtree(STRIPE_BETA, ignore_errors=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(STRIPE_BETA), pinned],
        check=True,
    )  # fmt: skip
    stamp.write_text(pinned)


def _ensure_chromium() -> None:
    """The browser tests drive Debian's chromium; install it when missing, only as root with apt-get."""
    if shutil.which("chromium") or os.name == "nt" or not shutil.which("apt-get"):
        return
    if os.geteuid() != 0:
        print("chromium is missing: browser tests will fail (install it, or run pytest -m 'not browser')")
        return
    print("installing chromium (apt-get) for the browser tests ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env)


def _postgres_installed() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _ensure_postgresql() -> None:
    """The store's PostgreSQL tests start a throwaway server from Debian's `postgresql` package; they
    fail (never skip) without it. Install it when missing, only as root with apt-get."""
    if _postgres_installed() or os.name == "nt" or not shutil.which("apt-get"):
        return
    if os.geteuid() != 0:
        print("the PostgreSQL server is missing: the store tests will fail (apt-get install postgresql)")
        return
    print("installing the PostgreSQL server (apt-get) for the store tests ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env)


def _ensure_node_packages() -> None:
    """`npm ci` in clients/typescript when node_modules is missing or package-lock.json changed."""
    package = ROOT / "clients" / "typescript"
    lock = package / "package-lock.json"
    if not lock.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        print("npm is missing: the TypeScript SDK's tests will fail (install Node 20+ with npm)")
        return
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    stamp = package / "node_modules" / ".qm-installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print("installing the TypeScript SDK's packages (npm ci) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=package, check=True)
    stamp.write_text(digest)


def _run(*argv: str) -> int:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT).returncode


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"dev", "test"}:
        print(__doc__)
        return 2
    _ensure_venv()
    extra = sys.argv[2:]
    if sys.argv[1] == "dev":
        os.execv(str(BIN / "qm"), [str(BIN / "qm"), "dev", *extra])  # noqa: S606
    for step in (("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy", ".")):
        print("$", " ".join(step), flush=True)
        if rc := _run(*step):
            return rc
    _ensure_stripe_beta()
    _ensure_chromium()
    _ensure_postgresql()
    _ensure_node_packages()
    print("$ pytest", " ".join(extra), flush=True)
    return _run("python", "-m", "pytest", *extra)


if __name__ == "__main__":
    sys.exit(main())
