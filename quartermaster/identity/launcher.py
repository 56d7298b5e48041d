"""A launcher with the attestor in this process (server-side tests and embedded deployments): the same
`run_launched` loop `qm run` uses, with tokens signed here instead of by the API."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from models.secret import Secret
from quartermaster.client.launcher import Issued, LaunchRecord, run_launched
from quartermaster.identity.attestation import Attestor, Measurement
from quartermaster.identity.verification import ReplayGuard


def run_attested(
    argv: list[str],
    *,
    agent: str,
    attestor: Attestor,
    replay: ReplayGuard,
    session: Secret | None = None,
    session_id: str | None = None,
    refresh_seconds: float | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LaunchRecord:
    """Measure, attest and run `argv`; returns when the child exits (its exit code in the record)."""

    def issue(measurement: Measurement) -> tuple[Issued, str | None]:
        got = attestor.issue(agent, measurement)
        return Issued(token=got.token.reveal(), jti=got.jti, expires_at=got.expires_at), (
            session.reveal() if session is not None else None
        )

    def retire(issued: list[Issued]) -> None:
        for i in issued:
            replay.retire(attestor.issuer, i.jti, int(i.expires_at.timestamp()))

    return run_launched(
        argv,
        agent=agent,
        issue=issue,
        retire=retire,
        session_id=session_id,
        refresh_seconds=refresh_seconds if refresh_seconds is not None else max(attestor.ttl_seconds / 2, 15),
        base_env=base_env,
        cwd=cwd,
    )
