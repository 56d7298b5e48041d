"""The workflows' side of authority proofs: deterministic verification with keys the worker installs.

`worker.build_worker` (and the Replayer in tests) calls `install` with the key file's `authority` keys
before any workflow runs. The keys live in `models.authority.VERIFIER` (memory only, never history),
one instance per process whatever the sandbox. A workflow refuses a change whose proof is missing or
wrong: in an update validator where it can (the change never enters history), else it ignores the
change and audits it. Where a new check would change the commands of an already recorded history, the
workflow asks `required()` (a `workflow.patched` marker) first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from temporalio import workflow

from models.authority import VERIFIER

PATCH = "qm-authority-proofs-v1"


class NamedKeyLike(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def key(self) -> bytes: ...


def install(keys: Iterable[NamedKeyLike]) -> None:
    """Install the verification keys (all of the key file's `authority` keys)."""
    VERIFIER.install((k.kid, k.key) for k in keys)


def add(keys: Iterable[NamedKeyLike]) -> None:
    """Also accept these keys beside the installed ones (benchmarks sharing a process with tests)."""
    VERIFIER.add((k.kid, k.key) for k in keys)


def installed() -> bool:
    return VERIFIER.installed()


def verify(
    proof: str | None, *, kind: str, target: str, change: Any, issued_near: datetime | None = None
) -> bool:
    """True iff `proof` is a valid MAC by an installed key over (kind, target, change); see
    `models.authority.ProofVerifier.verify`."""
    return VERIFIER.verify(proof, kind=kind, target=target, change=change, issued_near=issued_near)


def code_matches(kid: str, approval_id: str, code: str, digest: str) -> bool:
    return VERIFIER.code_matches(kid, approval_id, code, digest)


def required() -> bool:
    """Are proofs enforced in this run? False only when replaying a history recorded before them."""
    return workflow.patched(PATCH)


def from_own_continue_as_new() -> bool:
    """Did this run come from the workflow's own continue-as-new (so state in its input may be trusted)?

    `continued_run_id` alone is not enough: a retried run (`attempt` > 1, e.g. after a run timeout a
    client chose at start) and a cron run also carry one, with the client's original input."""
    info = workflow.info()
    return info.continued_run_id is not None and info.attempt == 1 and not info.cron_schedule
