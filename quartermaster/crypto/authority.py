"""Signing authority proofs: what the API and the worker's activities attach to every change of money
or authority they send to a workflow (the verifier is `workflows.authority`; the format is
`models.authority`). Server side only: it needs the key file's `authority` keys.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from models.approval import ApprovalDecision, ApprovalTicket
from models.authority import ProofKind, change_of, code_mac, format_proof, parse_proof, proof_mac
from models.request import Actor
from quartermaster.keys import Keyring, NamedKey

M = TypeVar("M", bound=BaseModel)


class AuthoritySigner:
    """Signs with the newest authority key; the kid in each proof tells the verifier which key."""

    def __init__(self, keys: Sequence[NamedKey]) -> None:
        if not keys:
            raise ValueError("an AuthoritySigner needs at least one authority key")
        self._key = keys[-1]

    @classmethod
    def from_keyring(cls, keyring: Keyring) -> AuthoritySigner:
        return cls(keyring.authority_keys())

    def sign(self, kind: ProofKind, target: str, change: Any, *, issued_at: datetime | None = None) -> str:
        """A proof that the holder of the authority key asked for `change` on workflow `target`."""
        iat = int(issued_at.timestamp()) if issued_at is not None else int(time.time())
        return format_proof(self._key.kid, iat, proof_mac(self._key.key, str(kind), target, change, iat))

    def signed(
        self,
        model: M,
        kind: ProofKind,
        target: str,
        *,
        issued_at: datetime | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> M:
        """`model` with its `proof` field set over its own content (but `exclude`)."""
        proof = self.sign(kind, target, change_of(model, exclude=exclude), issued_at=issued_at)
        return model.model_copy(update={"proof": proof})

    def code_ticket(self, approval_id: str, code: str) -> ApprovalTicket:
        """What the approval gate keeps of a one-time code: a keyed hash and the key's id."""
        return ApprovalTicket(code_hash=code_mac(self._key.key, approval_id, code), kid=self._key.kid)


def human_actor_change(actor: Actor, *, request_id: str, service_id: str) -> dict[str, Any]:
    """What a human actor's proof covers: who, which request, which service."""
    return {
        "principal_email": str(actor.principal_email).strip().lower(),
        "agent": actor.agent,
        "request_id": request_id,
        "service_id": service_id,
    }


def sign_human_actor(keyring: Keyring, actor: Actor, *, request_id: str, service_id: str) -> Actor:
    """The actor of a logged-in human's own request, with the API's proof. Call this only after the
    API authenticated that human (their login token): the worker then trusts the email in it."""
    human = actor.model_copy(update={"kind": "human", "session_token": None, "identity_token": None})
    change = human_actor_change(human, request_id=request_id, service_id=service_id)
    proof = AuthoritySigner.from_keyring(keyring).sign(ProofKind.HUMAN_ACTOR, request_id, change)
    return human.model_copy(update={"proof": proof})


def sign_decision(keyring: Keyring, decision: ApprovalDecision, *, caller: str) -> ApprovalDecision:
    """A human's decision as the API sends it: `caller` (the authenticated human's id) and a proof over
    everything but the code. Wrong codes are counted per caller, so nobody else can lock them out."""
    with_caller = decision.model_copy(update={"caller": caller})
    change = change_of(with_caller, exclude=frozenset({"code"}))
    proof = AuthoritySigner.from_keyring(keyring).sign(
        ProofKind.APPROVAL_DECISION, decision.approval_id, change
    )
    return with_caller.model_copy(update={"proof": proof})


def verify_proof(
    keys: Sequence[NamedKey], proof: str | None, *, kind: ProofKind, target: str, change: Any
) -> bool:
    """Check a proof outside a workflow (e.g. in an activity) against every authority key."""
    parsed = parse_proof(proof)
    if parsed is None:
        return False
    for key in keys:
        if key.kid == parsed.kid:
            expected = proof_mac(key.key, str(kind), target, change, parsed.iat)
            return hmac.compare_digest(expected, parsed.mac)
    return False
