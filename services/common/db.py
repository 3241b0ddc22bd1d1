"""The services' databases: SQLite (embedded) or PostgreSQL (scaled out), behind one API.

A `Database` hands out connections for a transaction (`begin`) or a read (`connect`);
`execute` returns a fully read result. PostgreSQL runs on SQLAlchemy's asyncpg engine.
SQLite runs its statements inline on the event loop: with WAL and synchronous=NORMAL a
statement is tens of microseconds of local work, far less than the thread hand-offs an
async driver pays for each cursor, execute, fetch and close.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy import Connection, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql import Executable

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
Rows: TypeAlias = "Result[*tuple[Any, ...]]"


def database_url(url: str, data_dir: Path, default_name: str) -> str:
    """The configured URL, or a SQLite file under data_dir."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / default_name).resolve()}"


class DbConnection(ABC):
    """One connection, inside a transaction or a read."""

    @abstractmethod
    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows:
        """Run a statement; rows (if any) are read in full before it returns."""


class Database(ABC):
    """Where a service keeps its rows."""

    def __init__(self, dialect_name: str) -> None:
        self.dialect_name = dialect_name

    @abstractmethod
    def begin(self) -> AbstractAsyncContextManager[DbConnection]:
        """A connection in a transaction, committed on a clean exit, else rolled back."""

    @abstractmethod
    def connect(self) -> AbstractAsyncContextManager[DbConnection]:
        """A connection for reading."""


@asynccontextmanager
async def open_database(url: str, metadata: MetaData, schema: str = "") -> AsyncIterator[Database]:
    """The database at `url` with its tables created (and brought up to date)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            # Older settings name the async driver; the file is the same.
            url.replace("sqlite+aiosqlite:", "sqlite:", 1),
            # One connection, used only from the event loop's thread.
            poolclass=StaticPool,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        try:
            with engine.begin() as conn:
                _create(conn, metadata)
            with engine.connect() as conn:
                yield _SQLite(conn)
        finally:
            engine.dispose()
        return
    async_engine = create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        **({"connect_args": {"server_settings": {"search_path": schema}}} if schema else {}),
    )
    try:
        async with async_engine.begin() as aconn:
            if schema:
                await aconn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await aconn.run_sync(_create, metadata)
        yield _Postgres(async_engine)
    finally:
        await async_engine.dispose()


class _SQLiteConnection(DbConnection):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows:
        result = self._conn.execute(statement, parameters)
        # Buffered, so the rows outlive the transaction that read them.
        return result.freeze()() if result.returns_rows else result


class _SQLite(Database):
    """One connection, taken by one transaction or read at a time.

    A transaction that awaits something else (a rare thing here) holds the lock, so
    another never interleaves its statements with it."""

    def __init__(self, conn: Connection) -> None:
        super().__init__("sqlite")
        self._conn = conn
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[DbConnection]:
        async with self._lock:
            with self._conn.begin():
                yield _SQLiteConnection(self._conn)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[DbConnection]:
        async with self._lock:
            try:
                yield _SQLiteConnection(self._conn)
            finally:
                # An open read transaction would pin an old snapshot and hold off checkpoints.
                if self._conn.in_transaction():
                    self._conn.rollback()


class _PostgresConnection(DbConnection):
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows:
        return await self._conn.execute(statement, parameters)


class _Postgres(Database):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__("postgresql")
        self._engine = engine

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[DbConnection]:
        async with self._engine.begin() as conn:
            yield _PostgresConnection(conn)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[DbConnection]:
        async with self._engine.connect() as conn:
            yield _PostgresConnection(conn)


def _create(conn: Connection, metadata: MetaData) -> None:
    metadata.create_all(conn)
    _add_new_columns(conn, metadata)


def _add_new_columns(conn: Connection, metadata: MetaData) -> None:
    """Bring tables from an earlier release up to date: columns added since are created.

    create_all makes missing tables only; new columns must be nullable (or have a server
    default) so old rows stay valid, and their indexes are created with them."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        added = [c for c in table.columns if c.name not in present]
        quote = conn.dialect.identifier_preparer.quote
        for column in added:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(
                text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")
            )
        for index in table.indexes:
            if any(c in added for c in index.columns):
                conn.execute(CreateIndex(index))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; NORMAL sync is durable across process crashes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
