"""`qm run`: measure a command, attest it, start it with its identity (and session) token in ITS
environment only, keep the identity fresh while it runs, and retire every token when it exits.

The child gets `QM_IDENTITY_TOKEN` (at start), `QM_IDENTITY_TOKEN_FILE` (a 0600 file re-signed every
`refresh_seconds`, so agents that outlive one token keep an identity; the file stops being refreshed
if the measured script or binary changes on disk), `QM_AGENT`, and `QM_SESSION_TOKEN` /
`QM_SESSION_ID` when a session is given. Nothing is written to the parent's environment.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.secret import Secret
from quartermaster.identity.attestation import (
    Attestor,
    IssuedIdentity,
    Measurement,
    MeasurementError,
    measure,
)
from quartermaster.client.env import ENV_IDENTITY, ENV_IDENTITY_FILE, ENV_SESSION
from quartermaster.identity.verification import ReplayGuard

#: variables a child never inherits from the launcher: it gets its own or none
_SCRUBBED = (ENV_IDENTITY, ENV_IDENTITY_FILE, ENV_SESSION, "QM_SESSION_ID", "QM_AGENT")


@dataclass
class LaunchRecord:
    measurement: Measurement
    issued: list[IssuedIdentity] = field(default_factory=list)
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
    agent: str,
    identity: Secret,
    identity_file: Path,
    session: Secret | None,
    session_id: str | None,
    principal_email: str | None,
) -> dict[str, str]:
    """The child's environment: the launcher's, minus inherited tokens, plus the child's own."""
    env = {k: v for k, v in base.items() if k not in _SCRUBBED}
    env[ENV_IDENTITY] = identity.reveal()
    env[ENV_IDENTITY_FILE] = str(identity_file)
    env["QM_AGENT"] = agent
    if session is not None:
        env[ENV_SESSION] = session.reveal()
    if session_id is not None:
        env["QM_SESSION_ID"] = session_id
    if principal_email:
        env["QM_PRINCIPAL_EMAIL"] = principal_email
    return env


def run_attested(
    argv: list[str],
    *,
    agent: str,
    attestor: Attestor,
    replay: ReplayGuard,
    session: Secret | None = None,
    session_id: str | None = None,
    principal_email: str | None = None,
    refresh_seconds: float | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LaunchRecord:
    """Measure, attest and run `argv`; returns when the child exits (its exit code in the record)."""
    measurement = measure(argv, cwd=cwd)
    record = LaunchRecord(measurement=measurement)
    record.issued.append(attestor.issue(agent, measurement))
    refresh = refresh_seconds if refresh_seconds is not None else max(attestor.ttl_seconds / 2, 15)
    with tempfile.TemporaryDirectory(prefix="qm-run-") as tmp:
        os.chmod(tmp, 0o700)
        token_file = Path(tmp) / "identity.jwt"
        _write_private(token_file, record.issued[0].token.reveal())
        env = child_environment(
            os.environ if base_env is None else base_env,
            agent=agent,
            identity=record.issued[0].token,
            identity_file=token_file,
            session=session,
            session_id=session_id,
            principal_email=principal_email,
        )
        child = subprocess.Popen(argv, env=env, cwd=cwd)
        try:
            while True:
                try:
                    record.exit_code = child.wait(timeout=refresh)
                    break
                except subprocess.TimeoutExpired:
                    try:
                        current = measure(argv, cwd=cwd)
                    except MeasurementError:
                        continue  # the code vanished under the running agent: let its identity lapse
                    if current.sha256 != measurement.sha256:
                        continue  # the code changed under the running agent: let its identity lapse
                    record.issued.append(attestor.issue(agent, measurement))
                    _write_private(token_file, record.issued[-1].token.reveal())
        except KeyboardInterrupt:
            record.exit_code = child.wait()
        finally:
            # the process is gone: any later presentation of its tokens is a replay
            for issued in record.issued:
                replay.retire(attestor.issuer, issued.jti, int(issued.expires_at.timestamp()))
    return record
