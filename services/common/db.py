"""The services' databases: SQLite (embedded) or PostgreSQL (scaled out), behind one API.

A `Database` hands out connections for a transaction (`begin`) or a read (`connect`);
`execute` returns a fully read result. PostgreSQL runs on SQLAlchemy's asyncpg engine.
SQLite runs its statements inline on the event loop: with WAL and synchronous=NORMAL a
statement is tens of microseconds of local work, far less than the thread hand-offs an
async driver pays for each cursor, execute, fetch and close. The one slow part of WAL,
copying the log back into the database file, runs on a thread of its own. Statements run
for every job are `Prepared`: on SQLite they skip SQLAlchemy's per-call work (prepared.py).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    ExitStack,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from pathlib import Path
from typing import Any, TypeAlias, overload

from sqlalchemy import Connection, MetaData, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql import Executable

from services.common.errors import CannotStart
from services.common.locks import exclusive_lock
from services.common.prepared import Prepared
from services.common.prepared import Rows as PreparedRows

log = logging.getLogger(__name__)

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
Rows: TypeAlias = "Result[*tuple[Any, ...]]"


def database_url(url: str, data_dir: Path, default_name: str) -> str:
    """The configured URL, or a SQLite file under data_dir."""
    if url:
        return url
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CannotStart(f"cannot make the data directory {data_dir}: {error.strerror}") from None
    return f"sqlite:///{(data_dir / default_name).resolve()}"


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """A database that cannot be reached or opened (refused, no such host, database or role,
    a file that cannot be opened) as CannotStart naming it, its password hidden, and why."""
    try:
        yield
    except (OSError, DBAPIError) as error:
        why = str(error.orig) if isinstance(error, DBAPIError) else error.strerror or str(error)
        where = make_url(url).render_as_string(hide_password=True)
        raise CannotStart(f"cannot open the database {where}: {why}") from None


class DbConnection(ABC):
    """One connection, inside a transaction or a read."""

    @overload
    async def execute(self, statement: Prepared, parameters: Parameters = None) -> PreparedRows: ...

    @overload
    async def execute(self, statement: Executable, parameters: Parameters = None) -> Rows: ...

    async def execute(
        self, statement: Prepared | Executable, parameters: Parameters = None
    ) -> PreparedRows | Rows:
        """Run a statement; rows (if any) are read in full before it returns."""
        if isinstance(statement, Prepared):
            if isinstance(parameters, Sequence) and not parameters:
                return PreparedRows([])  # no rows to write, on every database alike
            return await self._prepared(statement, parameters)
        return await self._execute(statement, parameters)

    @abstractmethod
    async def _execute(self, statement: Executable, parameters: Parameters) -> Rows: ...

    async def _prepared(self, statement: Prepared, parameters: Parameters) -> PreparedRows:
        result = await self._execute(statement.statement, parameters)
        written = isinstance(result, CursorResult) and not result.returns_rows
        return PreparedRows([] if written else list(result))


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


@contextmanager
def _sole_process(url: str) -> Iterator[None]:
    """Refuse a SQLite file another process serves: SQLite's transactions here take no lock
    until they write (the driver begins them at the first write), so two processes' read,
    change and write of one row overwrite each other. Held by a lock file beside it (a lock
    on the database file itself would be dropped with SQLite's own when it is closed)."""
    path = make_url(url).database
    if not path:  # in memory: this process's alone
        yield
        return
    with ExitStack() as stack:
        with _reaching(url):  # the lock file cannot be made: its directory is missing, say
            fd = stack.enter_context(exclusive_lock(Path(f"{path}.lock")))
        if fd is None:
            raise CannotStart(
                f"another process serves the database {path}: a SQLite file takes one; for "
                "replicas, use PostgreSQL (GENMESH_DATABASE_URL)"
            )
        yield


@asynccontextmanager
async def open_database(
    url: str, metadata: MetaData, schema: str = "", *, sole: bool = False
) -> AsyncIterator[Database]:
    """The database at `url` with its tables created (and brought up to date). With `sole`,
    a SQLite file is refused while another process holds it so (see _sole_process)."""
    if url.startswith("sqlite"):
        with _sole_process(url) if sole else nullcontext():
            async with _open_sqlite(url, metadata) as db:
                yield db
    else:
        async with _open_postgres(url, metadata, schema) as db:
            yield db


@asynccontextmanager
async def _open_sqlite(url: str, metadata: MetaData) -> AsyncIterator[Database]:
    engine = create_engine(
        # Older settings name the async driver; the file is the same.
        url.replace("sqlite+aiosqlite:", "sqlite:", 1),
        # One connection, used only from the event loop's thread.
        poolclass=StaticPool,
        connect_args={"timeout": 30, "check_same_thread": False},
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    checkpointer = WalCheckpointer.for_url(engine.url.database)
    try:
        with _reaching(url):
            engine.connect().close()
        with engine.begin() as conn:
            _create(conn, metadata)
        checkpointer.start()
        with engine.connect() as conn:
            yield _SQLite(conn)
    finally:
        # Stopped first: the engine's last close checkpoints and removes the WAL, which
        # it can only do once no other connection has the file open.
        checkpointer.stop()
        engine.dispose()


@asynccontextmanager
async def _open_postgres(url: str, metadata: MetaData, schema: str) -> AsyncIterator[Database]:
    # Quoted wherever it is named: unquoted, PostgreSQL folds it to lower case, so a schema
    # with capitals was created as written and then looked for under another name.
    quoted = '"' + schema.replace('"', '""') + '"'
    async_engine = create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        **({"connect_args": {"server_settings": {"search_path": quoted}}} if schema else {}),
    )
    try:
        with _reaching(url):
            async with async_engine.connect():
                pass
        async with async_engine.begin() as aconn:
            # Replicas starting together would race: IF NOT EXISTS and create_all's checks
            # do not make concurrent DDL safe in PostgreSQL, and the loser fails at start-up.
            # Held to commit, so the next replica in line finds everything made.
            await aconn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"genmesh-ddl:{schema}"},
            )
            if schema:
                await aconn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            await aconn.run_sync(_create, metadata)
        yield _Postgres(async_engine)
    finally:
        await async_engine.dispose()


class _SQLiteConnection(DbConnection):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def _execute(self, statement: Executable, parameters: Parameters) -> Rows:
        result = self._conn.execute(statement, parameters)
        # Buffered, so the rows outlive the transaction that read them.
        return result.freeze()() if result.returns_rows else result

    async def _prepared(self, statement: Prepared, parameters: Parameters) -> PreparedRows:
        # The driver's own connection, inside the transaction SQLAlchemy began on it.
        raw = self._conn.connection.driver_connection
        rows = statement.run_sqlite(raw, self._conn.dialect, parameters)  # type: ignore[arg-type]
        return rows if rows is not None else await super()._prepared(statement, parameters)


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

    async def _execute(self, statement: Executable, parameters: Parameters) -> Rows:
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
    _upgrade(conn, metadata)


def _upgrade(conn: Connection, metadata: MetaData) -> None:
    """Bring tables from an earlier release up to date: columns and indexes added since.

    create_all makes missing tables only (with their indexes); new columns must be nullable
    (or have a server default) so old rows stay valid. A column whose info names a
    "backfill" (a function of the connection) has it fill the old rows in right after the
    column is added, and again at a later start while the index its info names "done_when"
    is missing: SQLite commits an ALTER TABLE at once, so a start that died during the
    backfill leaves the column without it. An index is missing when its table is older than
    it, whether or not its columns are new, and is looked up by name; each is made after
    the backfills, in the same transaction."""
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        indexed = {i["name"] for i in inspector.get_indexes(table.name)}
        for column in table.columns:
            added = column.name not in present
            if added:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(
                    text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")
                )
            backfill = column.info.get("backfill")
            if backfill is not None and (added or column.info["done_when"] not in indexed):
                backfill(conn)
        for index in table.indexes:
            if index.name not in indexed:
                # IF NOT EXISTS: SQLite has no advisory lock, and two processes may start at once.
                conn.execute(CreateIndex(index, if_not_exists=True))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; NORMAL sync is durable across process crashes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # SQLite would checkpoint inside whichever commit fills the log past 1,000 pages, so
    # one request in a few hundred would wait on the event loop while pages are copied
    # and the file synced. WalCheckpointer does it on its own thread instead.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    # When the log starts over, the file is cut back to this; see WalCheckpointer.
    cur.execute(f"PRAGMA journal_size_limit={WalCheckpointer.LIMIT}")
    cur.close()


class WalCheckpointer:
    """Copies a SQLite file's write-ahead log into the database from a thread of its own.

    PASSIVE checkpoints neither block the writer nor wait for readers; sqlite3 releases the
    GIL while one runs, so the event loop carries on meanwhile.

    The log starts over from its beginning only when a transaction begins with every frame
    in it copied. Under steady writes one checkpoint never catches the last frames, and the
    log grew by hundreds of MB a minute. So past LIMIT the thread checkpoints again and
    again, each pass copying what came since the last, until one transaction starts in a
    caught-up moment and the log restarts, cut back to LIMIT. The stronger RESTART mode is
    no use here: it holds the write lock, and a transaction that read first and then
    writes would fail with "database is locked" rather than wait.
    """

    INTERVAL = 0.5  # seconds between checkpoints: bounds the log to what is written in it
    LIMIT = 64 << 20  # bytes of log past which the thread chases a restart
    CHASE = 0.002  # seconds between chasing passes
    CHASE_FOR = 2.0  # seconds one chase may last before the next round tries again
    STALLED = 5  # passes in a row that copy nothing more before a chase gives up

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # completed, for tests and curiosity

    @classmethod
    def for_url(cls, database: str | None) -> WalCheckpointer:
        """One for the file `database` names; one that does nothing for an in-memory one."""
        in_memory = not database or database == ":memory:" or database.startswith("file::memory")
        return cls(None if in_memory else database)

    def start(self) -> None:
        if self._path is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="sqlite-checkpoint", args=(self._path,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread (at most one checkpoint's time)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, path: str) -> None:
        conn = sqlite3.connect(path, check_same_thread=False)
        log_file = Path(path + "-wal")
        try:
            while not self._stop.wait(self.INTERVAL):
                try:
                    done = self._checkpoint(conn)
                    give_up = time.monotonic() + self.CHASE_FOR
                    stalled = 0
                    while _size(log_file) > self.LIMIT and time.monotonic() < give_up:
                        if self._stop.wait(self.CHASE):
                            return
                        before, done = done, self._checkpoint(conn)
                        stalled = stalled + 1 if done[1] == before[1] else 0
                        if done == before or stalled == self.STALLED:
                            # Caught up with nothing written since (the next write restarts
                            # the log), or a reader holding it back for pass after pass:
                            # chasing either would only spin. One short read can stall a
                            # pass or two without ending the chase.
                            break
                except sqlite3.Error:
                    # Transient (the file busy, the disk full): the next round tries again.
                    log.warning("checkpointing %s failed", path, exc_info=True)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One PASSIVE checkpoint: the frames in the log, and how many of them are copied."""
        _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        return int(frames), int(copied)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # no log yet; anything else, the next round looks again
        return 0
