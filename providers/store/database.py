"""The two databases the store runs on, behind one small surface: `run(work, write=...)`.

`SqliteDatabase` (the embedded default) opens a connection for each unit of work and closes it
afterwards. That costs about half a millisecond, and it is what makes the file robust to the POSIX
lock trap (docs/decisions.md, "SQLite and POSIX advisory locks"): closing *any* descriptor of a file
drops every `fcntl` lock the process holds on it, so a long-lived WAL connection in a process where
something reads the database file with plain `open()` silently loses its shared lock, and a peer that
closes believes it is the last one, checkpoints and deletes the WAL under the survivor (acknowledged
rows lost). Between units of work this process holds no lock that could be lost. The rule still
stands: project code never opens its own database files raw; a test that needs their bytes reads
them in a child process.

`PostgresDatabase` (production) is a `psycopg_pool.ConnectionPool`. Work is written once with `?`
placeholders; the PostgreSQL transaction translates them to `%s`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from providers.private_files import private_sqlite_file

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]


class StoreUnavailableError(Exception):
    """The database cannot be reached or is busy past its timeout. Never carries a DSN or a value."""


class Tx(Protocol):
    """One transaction: statements with `?` placeholders, rows back as tuples."""

    dialect: Dialect
    #: `" FOR UPDATE"` where row locks exist (PostgreSQL); SQLite's write transaction locks the file
    for_update: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int: ...


class Database(Protocol):
    dialect: Dialect
    #: a name for messages: a file path, or "postgresql" (a DSN may hold a password)
    label: str

    def transaction(self, *, write: bool) -> Any:
        """A context manager yielding a `Tx`; commits on success, rolls back on any error."""
        ...

    def run_sync(self, work: Callable[[Tx], T], *, write: bool = False) -> T: ...

    async def run(self, work: Callable[[Tx], T], *, write: bool = False) -> T: ...

    def close(self) -> None: ...


class _Base:
    def transaction(self, *, write: bool) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_sync(self, work: Callable[[Tx], T], *, write: bool = False) -> T:
        """`work(tx)` in one transaction (write: serialised with every other writer)."""
        with self.transaction(write=write) as tx:
            return work(tx)

    async def run(self, work: Callable[[Tx], T], *, write: bool = False) -> T:
        """`run_sync` in a thread: both drivers block, the activities and the API are async."""
        return await asyncio.to_thread(self.run_sync, work, write=write)


# -- SQLite ----------------------------------------------------------------------------------------
class _SqliteTx:
    dialect: Dialect = "sqlite"
    for_update = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount


class SqliteDatabase(_Base):
    """One SQLite file in WAL mode; a fresh connection per unit of work (see the module docstring)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        # 0600 before the first connection: SQLite gives the WAL and SHM files the database's mode
        self.path = private_sqlite_file(path)
        self.label = str(path)
        self._timeout = busy_timeout_s

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[_SqliteTx]:
        try:
            # isolation_level=None: BEGIN IMMEDIATE / COMMIT are ours
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"cannot open the store at {self.label}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # IMMEDIATE takes the write lock before the first read, so read-modify-write cannot race
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailableError(f"the store at {self.label} is busy or unavailable") from exc
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing is held between units of work."""


# -- PostgreSQL ------------------------------------------------------------------------------------
class _PostgresTx:
    dialect: Dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._conn.execute(sql.replace("?", "%s"), tuple(params))
        return list(cur.fetchall()) if cur.description is not None else []

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._conn.execute(sql.replace("?", "%s"), tuple(params)).rowcount)


class PostgresDatabase(_Base):
    """A connection pool on a PostgreSQL database given by a libpq DSN (`postgresql://...`)."""

    dialect: Dialect = "postgresql"
    label = "postgresql"

    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 8, connect_timeout_s: int = 10
    ) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        self._psycopg = psycopg
        self._pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_s},
            open=False,
            name="quartermaster-store",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s + 5)
        except PoolTimeout:
            self._pool.close()
            # from None: the pool's message may name the host; the DSN's password must never travel
            raise StoreUnavailableError("cannot connect to the PostgreSQL store") from None

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[_PostgresTx]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PostgresTx(conn)
        except self._psycopg.OperationalError as exc:
            raise StoreUnavailableError("the PostgreSQL store is unavailable") from exc

    def close(self) -> None:
        self._pool.close()


def open_database(url: str | Path) -> SqliteDatabase | PostgresDatabase:
    """`postgresql://...` (or `postgres://`), `sqlite:///abs/path`, or a plain SQLite file path."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(text)
    if text.startswith("sqlite:///"):
        text = text.removeprefix("sqlite://")
    return SqliteDatabase(Path(text))
