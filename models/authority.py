"""Authority proofs: the one canonical form that the signers (API, worker activities) and the verifier
(workflows) share.

A proof is `qa1.<kid>.<iat>.<mac>`: HMAC-SHA256 with a server-side `authority` key over a domain
separator and the canonical JSON of {kind, target workflow id, the exact change, iat}. It is not a
secret (it lives in history); it only shows that the API or the worker asked for this very change.
Approval codes are hashed with the same keys under another domain, so history alone gives no offline
guess of a code. No I/O here; the keys come from the caller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

PROOF_VERSION = "qa1"
_PROOF_DOMAIN = b"qm-authority-proof-v1\n"
_CODE_DOMAIN = b"qm-approval-code-v1\n"


class ProofKind(StrEnum):
    """What a proof authorises. The kind is signed, so a proof for one kind never passes for another."""

    LEDGER_START = "ledger.start"
    LEDGER_RESERVE = "ledger.reserve"
    LEDGER_COMMIT = "ledger.commit"
    LEDGER_RELEASE = "ledger.release"
    LEDGER_SET_LIMIT = "ledger.set_limit"
    BOOKS_START = "books.start"
    BOOKS_RESERVE = "books.reserve"
    BOOKS_COMMIT = "books.commit"
    BOOKS_RELEASE = "books.release"
    BOOKS_SET_LIMIT = "books.set_limit"
    LIMITS_SET = "limits.set"
    LIMIT_CHANGE_REQUEST = "limits.change_request"
    SESSION_OPEN = "session.open"
    SESSION_DELEGATED = "session.delegated"
    AGENT_UNFREEZE = "agent.unfreeze"
    APPROVAL_DECISION = "approval.decision"
    HUMAN_ACTOR = "actor.human"
    RENEWAL_START = "renewal.start"
    RENEWAL_PLAN_CHANGED = "renewal.plan_changed"


@dataclass(frozen=True)
class ParsedProof:
    kid: str
    iat: int
    mac: str


def change_of(model: BaseModel, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The signed content of a model: its JSON form without the proof itself (and `exclude`)."""
    return model.model_dump(mode="json", exclude={"proof", *exclude})


def canonical(kind: str, target: str, change: Any, iat: int) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same bytes on every side for the same change."""
    doc = {"kind": kind, "target": target, "change": change, "iat": iat}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def proof_mac(key: bytes, kind: str, target: str, change: Any, iat: int) -> str:
    digest = hmac.new(key, _PROOF_DOMAIN + canonical(kind, target, change, iat), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def format_proof(kid: str, iat: int, mac: str) -> str:
    return f"{PROOF_VERSION}.{kid}.{iat}.{mac}"


def parse_proof(proof: str | None) -> ParsedProof | None:
    """The parts of a proof, or None when it is missing or malformed (never raises)."""
    if not proof or len(proof) > 200:
        return None
    parts = proof.split(".")
    if len(parts) != 4 or parts[0] != PROOF_VERSION or not parts[1] or not parts[2].isdigit():
        return None
    return ParsedProof(kid=parts[1], iat=int(parts[2]), mac=parts[3])


def code_mac(key: bytes, approval_id: str, code: str) -> str:
    """The keyed hash of a one-time approval code: one approval only, useless without the key."""
    message = _CODE_DOMAIN + f"{approval_id}\n{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class ProofVerifier:
    """The process-wide verification keys and checks (`workflows.authority` is its workflow face).

    It lives in `models` because models are passed through the workflow sandbox: every workflow of
    the process, under any sandbox configuration, sees this one instance and the keys the worker
    installed in it. The keys are in memory only, never in history.
    """

    #: a start proof is accepted this long after it was signed (the start itself is idempotent by id)
    start_max_age_seconds = 3600
    #: clock skew allowed between the signer and the Temporal server
    start_skew_seconds = 300

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}

    def install(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """Replace the keys (all of the key file's `authority` keys: rotation appends)."""
        fresh = dict(keys)
        if not fresh:
            raise ValueError("no authority keys: workflows would refuse every change")
        self._keys.clear()
        self._keys.update(fresh)

    def add(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """Also accept these keys (a benchmark's own, beside the ones installed)."""
        self._keys.update(dict(keys))

    def installed(self) -> bool:
        return bool(self._keys)

    def verify(
        self, proof: str | None, *, kind: str, target: str, change: Any, issued_near: datetime | None = None
    ) -> bool:
        """True iff `proof` is a valid MAC by an installed key over (kind, target, change). With
        `issued_near` (a workflow's start time), it must also have been signed shortly before."""
        parsed = parse_proof(proof)
        if parsed is None:
            return False
        key = self._keys.get(parsed.kid)
        if key is None:
            return False
        if issued_near is not None:
            near = int(issued_near.timestamp())
            if not near - self.start_max_age_seconds <= parsed.iat <= near + self.start_skew_seconds:
                return False
        return hmac.compare_digest(proof_mac(key, kind, target, change, parsed.iat), parsed.mac)

    def code_matches(self, kid: str, approval_id: str, code: str, digest: str) -> bool:
        """Does `code` hash to `digest` under the authority key `kid`? False for an unknown key."""
        key = self._keys.get(kid)
        if key is None:
            return False
        return hmac.compare_digest(code_mac(key, approval_id, code), digest)


#: the one instance (see ProofVerifier)
VERIFIER = ProofVerifier()
