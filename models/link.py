"""Linking an existing provider account without buying anything (`qm link PROVIDER`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.request import Actor

LinkOutcome = Literal["completed", "rejected"]


def link_workflow_id(principal_id: str, provider: str) -> str:
    """One link per principal and provider at a time (a second `qm link` joins the first)."""
    return f"link-{principal_id}-{provider}"


class LinkRequest(BaseModel):
    """The workflow's input: the API's verified human (with its proof for this link) and the provider."""

    model_config = ConfigDict(extra="forbid")

    link_id: str = Field(min_length=1, max_length=200)
    provider: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")
    actor: Actor


class LinkResult(BaseModel):
    link_id: str
    provider: str
    outcome: LinkOutcome = "rejected"
    #: `linked_existing` after the human's consent; the earlier link's action when already linked
    link_action: str | None = None
    already_linked: bool = False
    error_code: str | None = None
    error_message: str | None = None


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")


class LinkView(BaseModel):
    """A link as its human sees it."""

    provider: str
    state: Literal["running", "waiting_for_human", "completed", "rejected"]
    link_action: str | None = None
    already_linked: bool = False
    #: the pending consent's approval id (the link and its URL are on the human's channel)
    approval_id: str | None = None
    error: dict[str, str] | None = None
