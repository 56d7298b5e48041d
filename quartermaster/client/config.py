"""The human's login, kept owner-only in the user's config directory (`qm login` writes it).

    ~/.config/quartermaster/login.json   {"api_url", "email", "token", "expires_at"}   mode 0600

    ~/.config/quartermaster/shown-approvals.json   {approval id: view_hash}       mode 0600

`qm approvals` records the `view_hash` of each approval it showed; `qm approve` sends it, so a code
decision is bound to what the human saw, like the approval page's. Nothing else is kept there: no key
material, no Temporal address."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quartermaster.client.env import config_dir

LOGIN_FILE = "login.json"
SHOWN_FILE = "shown-approvals.json"


def login_path() -> Path:
    return config_dir() / LOGIN_FILE


def load_login() -> dict[str, Any] | None:
    """The saved login, or None when there is none or it has expired."""
    path = login_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        if datetime.fromisoformat(str(data["expires_at"])) <= datetime.now(UTC):
            return None
    except (KeyError, ValueError):
        return None
    return data


def save_login(*, api_url: str, email: str, token: str, expires_at: datetime) -> Path:
    """Write the login with mode 0600 from the first byte, in a 0700 directory."""
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(
            {"api_url": api_url, "email": email, "token": token, "expires_at": expires_at.isoformat()}, fh
        )
    os.replace(tmp, path)
    return path


def forget_login() -> None:
    login_path().unlink(missing_ok=True)


def _write_private(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def save_shown(hashes: dict[str, str]) -> None:
    """The view hashes of the approvals just shown (replacing the previous listing's)."""
    _write_private(config_dir() / SHOWN_FILE, hashes)


def shown_hash(approval_id: str) -> str | None:
    """The view hash `qm approvals` showed for `approval_id`, if it did."""
    try:
        data = json.loads((config_dir() / SHOWN_FILE).read_text())
    except (OSError, ValueError):
        return None
    value = data.get(approval_id) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
