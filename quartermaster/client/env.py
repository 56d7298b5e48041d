"""What `qm run` injects into an agent's process, and where a human's login is kept.

Caller side: an agent's environment holds the API's URL and its own tokens, nothing else (no Temporal
address, no key file, no key material). A human's login token lives in the user's config directory.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_API_URL = "QM_API_URL"
ENV_SESSION = "QM_SESSION_TOKEN"
ENV_IDENTITY = "QM_IDENTITY_TOKEN"
ENV_IDENTITY_FILE = "QM_IDENTITY_TOKEN_FILE"
ENV_HUMAN_TOKEN = "QM_HUMAN_TOKEN"  # noqa: S105 - a variable name
ENV_CONFIG_DIR = "QM_CONFIG_DIR"
DEFAULT_API_URL = "http://127.0.0.1:8700"


def identity_token_from_env() -> str | None:
    """The freshest identity token `qm run` provides: the refreshed file, else the variable."""
    path = os.environ.get(ENV_IDENTITY_FILE)
    if path:
        try:
            text = Path(path).read_text().strip()
            if text:
                return text
        except OSError:
            pass
    return os.environ.get(ENV_IDENTITY) or None


def config_dir() -> Path:
    """The user's Quartermaster config directory: $QM_CONFIG_DIR, else $XDG_CONFIG_HOME/quartermaster."""
    if os.environ.get(ENV_CONFIG_DIR):
        return Path(os.environ[ENV_CONFIG_DIR])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "quartermaster"
