"""Runtime attestation: measure the process about to start and sign a short-lived agent identity token.

The attestor (`qm run`) measures what will run (resolved executable, the script when an interpreter
runs one, the SHA-256 of that script or of the binary, argv), as whom (uid), where (host) and when,
and signs a JWT whose subject is the agent's SPIFFE id `spiffe://<trust domain>/agent/<name>`. The
token goes only into the child's environment. Verification lives in `quartermaster.identity.verification`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from models.secret import Secret
from quartermaster.identity.keys import SigningKeys
from quartermaster.identity.settings import AUDIENCE, MAX_IDENTITY_TTL_SECONDS, IdentitySettings

if TYPE_CHECKING:
    from quartermaster.keys import Keyring

IDENTITY_TYP = "qm-agent+jwt"
AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_INTERPRETERS = re.compile(
    r"^(python[0-9.]*|pypy[0-9.]*|node|nodejs|deno|bun|ruby|perl|php|bash|sh|zsh|dash)$"
)
#: interpreter options that consume the next argument
_OPTIONS_WITH_VALUE = frozenset({"-X", "-W", "-Q", "-r", "--require", "-I", "-e"})


class MeasurementError(Exception):
    """The command cannot be measured (not found, not readable). Message names no file content."""


class Measurement(BaseModel):
    """What was measured before the agent process started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executable: str
    script: str | None = None
    sha256: str
    sha256_of: Literal["script", "binary", "inline"]
    argv: list[str]
    uid: int
    host: str
    cwd: str
    measured_at: datetime


def spiffe_id(trust_domain: str, agent: str) -> str:
    return f"spiffe://{trust_domain}/agent/{agent}"


def agent_from_spiffe_id(trust_domain: str, subject: str) -> str | None:
    prefix = f"spiffe://{trust_domain}/agent/"
    if not subject.startswith(prefix):
        return None
    name = subject[len(prefix) :]
    return name if AGENT_NAME.match(name) else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _shebang_interpreter(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(2) == b"#!"
    except OSError:
        return False


def _script_argument(args: list[str]) -> tuple[str | None, str | None]:
    """(script path, inline code) from an interpreter's arguments."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("-c", "-e", "--eval") and i + 1 < len(args):
            return None, args[i + 1]
        if arg == "-m":
            return None, None  # a module: the interpreter binary is what we can vouch for
        if arg in _OPTIONS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg, None
    return None, None


def measure(argv: list[str], *, cwd: Path | None = None, now: datetime | None = None) -> Measurement:
    """Measure the command `argv` as it would be started from `cwd` (default: the current directory)."""
    if not argv:
        raise MeasurementError("no command to run")
    base = cwd or Path.cwd()
    found = shutil.which(argv[0]) if os.sep not in argv[0] else str(base / argv[0])
    if not found or not Path(found).is_file():
        raise MeasurementError(f"command not found: {argv[0]}")
    executable = Path(found).resolve()
    script: Path | None = None
    inline: str | None = None
    if _INTERPRETERS.match(executable.name):
        script_arg, inline = _script_argument(argv[1:])
        if script_arg is not None:
            candidate = (base / script_arg).resolve()
            if not candidate.is_file():
                raise MeasurementError(f"script not found: {script_arg}")
            script = candidate
    elif _shebang_interpreter(executable):
        script = executable  # `./agent.py` with a shebang: the script is the thing to vouch for
    try:
        of: Literal["script", "binary", "inline"]
        if script is not None:
            sha, of = sha256_file(script), "script"
        elif inline is not None:
            sha, of = hashlib.sha256(inline.encode()).hexdigest(), "inline"
        else:
            sha, of = sha256_file(executable), "binary"
    except OSError as exc:
        raise MeasurementError(f"cannot read {type(exc).__name__}") from exc
    return Measurement(
        executable=str(executable),
        script=str(script) if script is not None else None,
        sha256=sha,
        sha256_of=of,
        argv=list(argv),
        uid=os.getuid(),
        host=socket.gethostname(),
        cwd=str(base.resolve()),
        measured_at=now or datetime.now(UTC),
    )


def _key_file_near(settings: IdentitySettings) -> Keyring | None:
    """The server key file of this data dir, if this process can read one (dev: `qm run` beside the
    worker). Gone once `qm run` asks the API to attest."""
    from quartermaster.keys import Keyring

    inline = os.environ.get("QM_KEYS")
    if inline:
        return Keyring.from_json(inline)
    path = Path(os.environ.get("QM_KEYS_FILE") or settings.data_dir / "keys.json")
    return Keyring.from_json(path.read_text()) if path.is_file() else None


class IssuedIdentity(BaseModel):
    token: Secret
    subject: str
    jti: str
    expires_at: datetime


class Attestor:
    """Signs agent identity tokens for measured processes (`qm run` is the local attestor)."""

    def __init__(self, *, keys: SigningKeys, issuer: str, trust_domain: str, ttl_seconds: int = 600) -> None:
        if not 30 <= ttl_seconds <= MAX_IDENTITY_TTL_SECONDS:
            raise ValueError(f"identity tokens live between 30 and {MAX_IDENTITY_TTL_SECONDS} seconds")
        self.keys = keys
        self.issuer = issuer
        self.trust_domain = trust_domain
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_settings(
        cls, settings: IdentitySettings, *, create: bool = True, keyring: Keyring | None = None
    ) -> Attestor:
        """The local attestor: keys from QM_ATTESTOR_KEYS, else the server key file's `attestor`
        section (`keyring`, or the key file in the data dir), else the old separate file (created in
        dev) for a `qm run` that has no server key file."""
        keyring = keyring or _key_file_near(settings)
        if settings.attestor_keys_json:
            keys = SigningKeys.from_json(settings.attestor_keys_json)
        elif keyring is not None and keyring.attestor is not None:
            keys = keyring.signing_keys("attestor")
        else:
            keys = SigningKeys.load_or_create(
                settings.resolved_attestor_keys_file, prefix="att", create=create
            )
        return cls(
            keys=keys,
            issuer=settings.issuer,
            trust_domain=settings.trust_domain,
            ttl_seconds=settings.identity_ttl_seconds,
        )

    def issue(
        self,
        agent: str,
        measurement: Measurement,
        *,
        now: datetime | None = None,
        ttl_seconds: int | None = None,
        session_id: str | None = None,
    ) -> IssuedIdentity:
        """A signed identity token for `agent`, carrying `measurement` as the `qm_measurement` claim."""
        if not AGENT_NAME.match(agent):
            raise ValueError("agent names are lower-case letters, digits, '.', '_' and '-'")
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 1 <= ttl <= MAX_IDENTITY_TTL_SECONDS:
            raise ValueError(f"ttl must be at most {MAX_IDENTITY_TTL_SECONDS} seconds")
        issued = now or datetime.now(UTC)
        iat = int(issued.timestamp())
        subject = spiffe_id(self.trust_domain, agent)
        jti = secrets.token_urlsafe(18)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": AUDIENCE,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl,
            "jti": jti,
            "agent": agent,
            "qm_measurement": measurement.model_dump(mode="json"),
        }
        if session_id is not None:
            # bound to one session: the same agent name under another principal's session is refused
            claims["qm_sid"] = session_id
        token = self.keys.sign(claims, typ=IDENTITY_TYP)
        return IssuedIdentity(
            token=Secret(token),
            subject=subject,
            jti=jti,
            expires_at=datetime.fromtimestamp(iat + ttl, UTC),
        )
