"""The two stripe-python releases the contract is read from: GA (the project's own dependency) and the
beta that bootstrap.py installs into .venv/stripe-beta. Each is read in a subprocess by sdk_shapes.py,
so the two `stripe` packages never meet in one interpreter."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.stripe_contract.routes import ENDPOINTS

ROOT = Path(__file__).resolve().parents[2]
BETA_DIR = ROOT / ".venv" / "stripe-beta"
_SCRIPT = Path(__file__).with_name("sdk_shapes.py")
_BETA_ONLY = "stripe.shared_payment."


def pinned(name: str) -> str:
    """`stripe==…` as pyproject.toml pins it (`ga`: the dependency; `beta`: [tool.quartermaster])."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    if name == "beta":
        return str(project["tool"]["quartermaster"]["stripe-beta"])
    deps: list[str] = project["project"]["dependencies"]
    return next(d.split("#")[0].strip() for d in deps if d.startswith("stripe"))


@functools.cache
def shapes(sdk: str) -> dict[str, Any]:
    """Parameter trees and resource trees of every endpoint of one SDK release, read from it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if sdk == "beta":
        stamp = BETA_DIR / ".qm-installed"
        if not stamp.exists() or stamp.read_text() != pinned("beta"):
            raise RuntimeError(
                f"{pinned('beta')} is not installed in {BETA_DIR}: run `python3 bootstrap.py test` "
                "(it installs it there with pip --target), or that pip command by hand"
            )
        env["PYTHONPATH"] = str(BETA_DIR)
    wanted = [e for e in ENDPOINTS if e.sdk == sdk]
    # resources only the beta has are read from it; every other object from GA
    resources = {e.resource for e in ENDPOINTS if e.resource.startswith(_BETA_ONLY) == (sdk == "beta")}
    args = [f"params:{e.params}" for e in wanted] + [f"resource:{r}" for r in sorted(resources)]
    out = subprocess.run(
        [sys.executable, str(_SCRIPT), *args], env=env, cwd="/", capture_output=True, text=True, check=True
    )
    data: dict[str, Any] = json.loads(out.stdout)
    expected = pinned(sdk).partition("==")[2]
    if data["version"] != expected:
        raise RuntimeError(f"stripe {data['version']} found where {expected} is pinned ({sdk})")
    return data


def params_tree(endpoint_sdk: str, params: str) -> dict[str, Any]:
    return dict(shapes(endpoint_sdk)["params"][params])


def resource_tree(resource: str) -> dict[str, Any]:
    """`{"object": …, "fields": …}`: the beta's for Shared Payment Token resources, GA's for others."""
    return dict(shapes("beta" if resource.startswith(_BETA_ONLY) else "ga")["resources"][resource])
