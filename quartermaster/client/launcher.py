"""`qm run`: measure a command, have the API attest it and bind it to a session, start it with its own
tokens in ITS environment only, keep the identity fresh while it runs, and retire every token when it
exits.

The child gets `QM_API_URL`, `QM_IDENTITY_TOKEN` (at start), `QM_IDENTITY_TOKEN_FILE` (a 0600 file
re-issued every `refresh_seconds`; not refreshed once the measured script or binary changes on disk),
`QM_AGENT`, `QM_SESSION_TOKEN` and `QM_SESSION_ID`. Nothing else of Quartermaster's: no Temporal
address, no key file, no data directory, no human login (`SCRUBBED`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from quartermaster.client.env import (
    ENV_API_URL,
    ENV_CONFIG_DIR,
    ENV_HUMAN_TOKEN,
    ENV_IDENTITY,
    ENV_IDENTITY_FILE,
    ENV_SESSION,
)
from quartermaster.identity.attestation import Measurement, MeasurementError, measure

log = logging.getLogger("quartermaster.run")

#: prefixes of variables a child never inherits: the server side's settings and keys, and tokens
SCRUBBED_PREFIXES = ("QM_", "TEMPORAL_", "STRIPE_")
SCRUBBED = (ENV_HUMAN_TOKEN, "QM_KEYS", "QM_KEYS_FILE", "TEMPORAL_API_KEY", "STRIPE_API_KEY")


@dataclass(frozen=True)
class Issued:
    token: str
    jti: str
    expires_at: datetime


@dataclass
class LaunchRecord:
    measurement: Measurement
    issued: list[Issued] = field(default_factory=list)
    exit_code: int | None = None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def child_environment(
    base: Mapping[str, str],
    *,
    api_url: str | None,
    agent: str,
    identity: str,
    identity_file: Path,
    session: str | None,
    session_id: str | None,
    config_dir: Path | None = None,
) -> dict[str, str]:
    """The child's environment: the launcher's minus everything of Quartermaster's, plus its own."""
    env = {k: v for k, v in base.items() if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED}
    if api_url:
        env[ENV_API_URL] = api_url
    env[ENV_IDENTITY] = identity
    env[ENV_IDENTITY_FILE] = str(identity_file)
    env["QM_AGENT"] = agent
    if session is not None:
        env[ENV_SESSION] = session
    if session_id is not None:
        env["QM_SESSION_ID"] = session_id
    if config_dir is not None:
        # the SDK in the child must never pick up the human's saved login by accident
        env[ENV_CONFIG_DIR] = str(config_dir)
    return env


def run_launched(
    argv: list[str],
    *,
    agent: str,
    issue: Callable[[Measurement], tuple[Issued, str | None]],
    retire: Callable[[list[Issued]], None],
    api_url: str | None = None,
    session_id: str | None = None,
    refresh_seconds: float = 300,
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LaunchRecord:
    """Measure `argv`, get its tokens from `issue`, run it; returns when the child exits."""
    measurement = measure(argv, cwd=cwd)
    record = LaunchRecord(measurement=measurement)
    first, session = issue(measurement)
    record.issued.append(first)
    with tempfile.TemporaryDirectory(prefix="qm-run-") as tmp:
        os.chmod(tmp, 0o700)
        token_file = Path(tmp) / "identity.jwt"
        _write_private(token_file, first.token)
        empty_config = Path(tmp) / "config"
        empty_config.mkdir(mode=0o700)
        env = child_environment(
            os.environ if base_env is None else base_env,
            api_url=api_url,
            agent=agent,
            identity=first.token,
            identity_file=token_file,
            session=session,
            session_id=session_id,
            config_dir=empty_config,
        )
        try:
            child = subprocess.Popen(argv, env=env, cwd=cwd)
        except OSError:
            retire(record.issued)
            raise
        try:
            while True:
                try:
                    record.exit_code = child.wait(timeout=refresh_seconds)
                    break
                except subprocess.TimeoutExpired:
                    try:
                        current = measure(argv, cwd=cwd)
                    except MeasurementError:
                        continue  # the code vanished under the running agent: let its identity lapse
                    if current.sha256 != measurement.sha256:
                        continue  # the code changed under the running agent: let its identity lapse
                    try:
                        fresh, _ = issue(measurement)
                    except Exception:
                        log.warning("could not refresh the agent's identity token; retrying")
                        continue
                    record.issued.append(fresh)
                    _write_private(token_file, fresh.token)
        except KeyboardInterrupt:
            record.exit_code = child.wait()
        finally:
            # the process is gone: any later presentation of its tokens is a replay
            retire(record.issued)
    return record
