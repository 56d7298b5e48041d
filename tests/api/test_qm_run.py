"""`qm run` as a human runs it from another directory: the API attests the child and binds it to the
session; the child's environment and the user's config directory hold no key material and no Temporal
address (scanned); the child acts as the agent through the API; its exit code comes back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from quartermaster.client.config import save_login
from tests.fixtures.stack import Stack, new_email

BIN = Path(sys.executable).parent

AGENT = """
import asyncio, json, os, sys
from quartermaster.client import QuartermasterClient
async def main():
    async with QuartermasterClient.from_env() as qm:
        me = await qm.auth.whoami()
        try:
            await qm.approvals.list()
            human_only = "allowed"
        except Exception as exc:
            human_only = getattr(exc, "code", "?")
    out = {"env": dict(os.environ), "whoami": me.model_dump(mode="json"), "approvals": human_only}
    print(json.dumps(out))
asyncio.run(main())
sys.exit(7)
"""


def _key_material(stack: Stack) -> list[str]:
    """Every key's bytes as they could appear in text (base64 of the key file, the key files' JSON)."""
    secrets = [k.key.hex() for k in (*stack.keyring.payload, *stack.keyring.seal)]
    doc = json.loads(stack.keyring.to_json())
    secrets += [k["key"] for section in ("payload", "seal") for k in doc[section]]
    if doc.get("principal"):
        secrets.append(doc["principal"])
    for name in ("attestor-keys.json", "session-keys.json", "assertion-keys.json"):
        path = stack.data_dir / name
        if path.exists():
            secrets += [v for k in json.loads(path.read_text()).get("keys", []) for v in [k.get("d")] if v]
    return [s for s in secrets if s]


async def test_qm_run_injects_only_the_agents_tokens(stack: Stack, tmp_path: Path) -> None:
    email = new_email()
    token = await stack.login_token(email)
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, "builder", allowed_services=["cloud/*"])
    config = tmp_path / "config"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QM_", "TEMPORAL_"))}
    env.update(
        QM_CONFIG_DIR=str(config),
        QM_API_URL=stack.api_url,
        TEMPORAL_ADDRESS="127.0.0.1:7233",
        QM_KEYS_FILE=str(stack.data_dir / "keys.json"),
        QM_DATA_DIR=str(stack.data_dir),
    )
    # the human's login, saved as `qm login` saves it
    env_for_save = dict(os.environ)
    os.environ["QM_CONFIG_DIR"] = str(config)
    try:
        from datetime import UTC, datetime, timedelta

        save_login(
            api_url=stack.api_url, email=email, token=token, expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
    finally:
        os.environ.clear()
        os.environ.update(env_for_save)
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    argv = [str(BIN / "qm"), "run", "--agent", "builder", "--session", sid, "--", sys.executable, str(script)]
    # in a thread: this event loop also runs the worker the child's calls need
    done = await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 7, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    child_env = seen["env"]
    assert seen["whoami"]["kind"] == "agent" and seen["whoami"]["agent"] == "builder"
    assert seen["whoami"]["session_id"] == sid
    assert seen["approvals"] == "FORBIDDEN"
    quartermaster = {k for k in child_env if k.startswith(("QM_", "TEMPORAL_", "STRIPE_"))}
    assert quartermaster == {
        "QM_API_URL", "QM_AGENT", "QM_SESSION_ID", "QM_SESSION_TOKEN", "QM_IDENTITY_TOKEN",
        "QM_IDENTITY_TOKEN_FILE", "QM_CONFIG_DIR",
    }  # fmt: skip
    assert token not in json.dumps(child_env)  # not the human's login
    blob = json.dumps(child_env) + "".join(p.read_text() for p in config.rglob("*") if p.is_file())
    for secret in _key_material(stack):
        assert secret not in blob
    assert str(stack.data_dir) not in blob
    assert Path(child_env["QM_CONFIG_DIR"]) != config
    assert {p.name for p in config.iterdir()} <= {"login.json", "pending-login.json"}
