"""Identity settings, read from the environment next to `quartermaster.config.Settings`.

QM_TRUST_DOMAIN          SPIFFE trust domain of agent ids (default quartermaster.local)
QM_ATTESTOR_ISSUER       `iss` of the local attestor (default spiffe://<trust domain>/attestor)
QM_ATTESTOR_KEYS_FILE    attestor signing keys (default <data dir>/attestor-keys.json, 0600)
QM_ATTESTOR_KEYS         the same JSON document inline (wins over the file)
QM_SESSION_KEYS_FILE     session-token signing keys (default <data dir>/session-keys.json, 0600)
QM_IDENTITY_TTL_SECONDS  lifetime of an agent identity token (default 600, at most 900)
QM_TRUSTED_ATTESTORS     JSON list of external attestors (see TrustedAttestor)

The worker and the API take the attestor and session keys from the server's key file
(`quartermaster.keys`); the separate files above are read only by a local `qm run` and migrated into
the key file on a dev start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quartermaster.config import STORE_FILE

MAX_IDENTITY_TTL_SECONDS = 900
DEFAULT_TRUST_DOMAIN = "quartermaster.local"
AUDIENCE = "quartermaster"


class TrustedAttestor(BaseModel):
    """An external issuer of agent identity tokens (e.g. a CI system's OIDC tokens).

    `agents` maps the token's `sub` to an agent name; a key ending in `*` matches a prefix.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks_file: Path | None = None
    agents: dict[str, str] = Field(min_length=1)
    audience: str = AUDIENCE
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "Ed25519", "EdDSA"])
    #: each token is accepted once (RFC 7523 jti): the holder fetches a fresh token per request
    single_use: bool = True
    max_lifetime_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedAttestor:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("a trusted attestor needs exactly one of jwks_url or jwks_file")
        if "none" in (a.lower() for a in self.algorithms) or any(a.startswith("HS") for a in self.algorithms):
            raise ValueError("symmetric or unsigned algorithms are never accepted")
        return self

    def agent_for(self, subject: str) -> str | None:
        if subject in self.agents:
            return self.agents[subject]
        for pattern, agent in self.agents.items():
            if pattern.endswith("*") and subject.startswith(pattern[:-1]):
                return agent
        return None


class IdentitySettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    attestor_issuer: str | None = None
    attestor_keys_file: Path | None = None
    attestor_keys_json: str | None = None
    session_keys_file: Path | None = None
    identity_ttl_seconds: Annotated[int, Field(ge=30, le=MAX_IDENTITY_TTL_SECONDS)] = 600
    trusted_attestors: tuple[TrustedAttestor, ...] = ()

    @property
    def issuer(self) -> str:
        return self.attestor_issuer or f"spiffe://{self.trust_domain}/attestor"

    @property
    def session_issuer(self) -> str:
        return f"spiffe://{self.trust_domain}/quartermaster"

    @property
    def resolved_attestor_keys_file(self) -> Path:
        return self.attestor_keys_file or self.data_dir / "attestor-keys.json"

    @property
    def resolved_session_keys_file(self) -> Path:
        return self.session_keys_file or self.data_dir / "session-keys.json"

    #: the store (QM_DATABASE_URL, else QM_AUDIT_DB, else <data dir>/quartermaster.sqlite)
    database_url: str | None = None

    @property
    def replay_db(self) -> str:
        """Where identity token ids are recorded: the one store (`providers.store`)."""
        return self.database_url or str(self.data_dir / STORE_FILE)

    @classmethod
    def from_env(cls, data_dir: Path, env: Mapping[str, str] | None = None) -> IdentitySettings:
        e = os.environ if env is None else env
        values: dict[str, object] = {"data_dir": data_dir}
        simple = {
            "QM_TRUST_DOMAIN": "trust_domain",
            "QM_ATTESTOR_ISSUER": "attestor_issuer",
            "QM_ATTESTOR_KEYS_FILE": "attestor_keys_file",
            "QM_ATTESTOR_KEYS": "attestor_keys_json",
            "QM_SESSION_KEYS_FILE": "session_keys_file",
            "QM_IDENTITY_TTL_SECONDS": "identity_ttl_seconds",
        }
        for var, field in simple.items():
            if e.get(var):
                values[field] = e[var]
        if e.get("QM_TRUSTED_ATTESTORS"):
            values["trusted_attestors"] = tuple(json.loads(e["QM_TRUSTED_ATTESTORS"]))
        database_url = e.get("QM_DATABASE_URL") or e.get("QM_AUDIT_DB")
        if database_url:
            values["database_url"] = database_url
        return cls.model_validate(values)
