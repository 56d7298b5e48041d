"""Private files: the data directory is 0700 and every SQLite store in it, with its WAL and shared
memory files, is 0600 (they hold sealed credentials, audit records and idempotency replies).

SQLite creates `-wal` and `-shm` files with the permissions of the database file, so a database
created 0600 keeps its companions 0600 whatever the process umask is.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

DIR_MODE = 0o700
FILE_MODE = 0o600
_COMPANIONS = ("-wal", "-shm", "-journal")


def private_directory(path: Path) -> Path:
    """Create `path` (and parents) if missing and make it 0700. For the data directory itself: a
    store never tightens a directory it did not create (its parent may be shared, like /tmp)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_sqlite_file(path: Path) -> Path:
    """Make `path` a 0600 SQLite file before anything opens it (created so if new, tightened if not),
    in a directory created 0700 when missing; existing WAL/SHM/journal files are tightened too."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=DIR_MODE)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    for candidate in (path, *(path.with_name(path.name + s) for s in _COMPANIONS)):
        if candidate.exists() and (candidate.stat().st_mode & 0o777) != FILE_MODE:
            os.chmod(candidate, FILE_MODE)
    return path


def connect_private_sqlite(path: Path, **connect_args: Any) -> sqlite3.Connection:
    """`sqlite3.connect(path)` on a file made private by `private_sqlite_file`."""
    conn: sqlite3.Connection = sqlite3.connect(private_sqlite_file(path), **connect_args)
    return conn
