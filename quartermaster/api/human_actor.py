"""The actor of a logged-in human's own request (no session): a claim the API signs with a server-side
key, so the worker accepts it only from the API (see docs/security.md, "Authority proofs")."""

from __future__ import annotations

from models.request import Actor
from quartermaster.api.services import ApiServices

HUMAN_AGENT = "human"


def human_actor(svc: ApiServices, email: str, *, request_id: str, service_id: str) -> Actor:
    return Actor(principal_email=email, agent=HUMAN_AGENT)
