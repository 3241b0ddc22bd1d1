"""Async SQLAlchemy engines for SQLite (embedded) and PostgreSQL (scaled out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex


def database_url(url: str, data_dir: Path, default_name: str) -> str:
    """The configured URL, or a SQLite file under data_dir."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{(data_dir / default_name).resolve()}"


@asynccontextmanager
async def open_database(
    url: str, metadata: MetaData, schema: str = ""
) -> AsyncIterator[AsyncEngine]:
    """An engine with the tables created; disposed on exit."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # SQLite allows one writer; several pooled connections would take turns through its
        # sleeping busy handler. One connection queues them in order instead, and a busy
        # timeout covers another process sharing the file.
        kwargs.update(connect_args={"timeout": 30}, pool_size=1, max_overflow=0)
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        if schema:
            kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    try:
        async with engine.begin() as conn:
            if schema and not url.startswith("sqlite"):
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_add_new_columns, metadata)
        yield engine
    finally:
        await engine.dispose()


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
