"""Prepared statements read and write what SQLAlchemy would, on SQLite's driver and on
PostgreSQL: type conversions, IN lists, column defaults, errors and rollbacks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Double,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    cast,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError

from services.common.db import open_database
from services.common.prepared import Prepared
from tests.conftest import Database

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("flag", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("size", Double, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("count", Integer, nullable=False, default=7),
)
_INSERT = Prepared(insert(things))
_READ = Prepared(
    select(things.c.id, things.c.flag, things.c.at, things.c.size, things.c.body, things.c.count)
    .where(things.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(things.c.id)
)
_RAISE = Prepared(
    update(things).where(things.c.id.in_(bindparam("ids", expanding=True))).values(flag=True)
)
_SIZE = Prepared(update(things).where(things.c.id == bindparam("_id")).values(size=bindparam("s")))
WHEN = datetime(2026, 11, 25, 12, 30, 15, 123456, tzinfo=UTC)


def _row(id_: str, **more: object) -> dict[str, object]:
    return {"id": id_, "flag": False, "at": WHEN, "size": 1.5, "body": b"\x00\xff", **more}


async def test_prepared_statements_round_trip(database: Database) -> None:
    async with open_database(database.url, metadata, database.schema) as db:
        async with db.begin() as conn:
            await conn.execute(_INSERT, [_row("a", count=1), _row("b", count=2)])
            # No count: the column's default, which SQLAlchemy fills in.
            await conn.execute(_INSERT, _row("c"))
            await conn.execute(_RAISE, {"ids": ["a", "c"]})
            await conn.execute(_SIZE, [{"_id": "b", "s": 2}, {"_id": "c", "s": 0.25}])
        async with db.connect() as conn:
            rows = (await conn.execute(_READ, {"ids": ["c", "a", "b", "zz"]})).all()
            assert (await conn.execute(_READ, {"ids": []})).all() == []
        assert [(r.id, r.flag, r.size, r.body, r.count) for r in rows] == [
            ("a", True, 1.5, b"\x00\xff", 1),
            ("b", False, 2.0, b"\x00\xff", 2),
            ("c", True, 0.25, b"\x00\xff", 7),
        ]
        assert all(isinstance(r.flag, bool) for r in rows)
        # SQLite keeps no offset; the moment is the same.
        assert {r.at.replace(tzinfo=UTC) for r in rows} == {WHEN}


async def test_prepared_writes_values_as_sqlalchemy_does(database: Database) -> None:
    # Stored alike, so that queries comparing or ordering them see no difference.
    async with open_database(database.url, metadata, database.schema) as db:
        async with db.begin() as conn:
            await conn.execute(_INSERT, _row("prepared", flag=True, count=3))
            await conn.execute(insert(things), _row("plain", flag=True, count=3))
        async with db.connect() as conn:
            stored = await conn.execute(
                select(cast(things.c.at, String), cast(things.c.flag, String)).order_by(things.c.id)
            )
            plain, prepared = stored.all()
        assert tuple(plain) == tuple(prepared)


async def test_prepared_errors_are_sqlalchemys_and_roll_back(database: Database) -> None:
    async with open_database(database.url, metadata, database.schema) as db:
        async with db.begin() as conn:
            await conn.execute(_INSERT, _row("a"))
        with pytest.raises(IntegrityError):
            async with db.begin() as conn:
                await conn.execute(_INSERT, _row("b"))
                await conn.execute(_INSERT, [_row("c"), _row("a")])
        async with db.connect() as conn:
            rows = (await conn.execute(_READ, {"ids": ["a", "b", "c"]})).all()
        assert [r.id for r in rows] == ["a"]


notes = Table(
    "notes",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("doc", JSON, nullable=True),
)


async def test_prepared_shapes_sqlalchemy_runs_itself(database: Database) -> None:
    # Each of these takes SQLAlchemy's path on SQLite; the answers must not tell.
    async with open_database(database.url, metadata, database.schema) as db:
        async with db.begin() as conn:
            # JSON stores None as the text 'null': the type's conversion runs for None too.
            await conn.execute(Prepared(insert(notes)), {"id": "p", "doc": None})
            await conn.execute(insert(notes), {"id": "s", "doc": None})
            # A row short of the first row's names is refused before anything is written.
            with pytest.raises(StatementError, match="id"):
                await conn.execute(_INSERT, [_row("a", count=1), {"flag": True}])
            # Nothing to write is nothing written, also where a default would be filled in.
            assert (await conn.execute(_INSERT, [])).all() == []
        async with db.connect() as conn:
            stored = await conn.execute(select(notes.c.id, cast(notes.c.doc, String)))
            assert sorted(tuple(r) for r in stored) == [("p", "null"), ("s", "null")]
            counted = await conn.execute(Prepared(text("SELECT count(*) AS n FROM things")))
            assert [r.n for r in counted] == [0]
            # Two columns of one name, and a name no attribute can have.
            pairs = Prepared(
                select(notes.c.id, things.c.id, notes.c.id.label("_id")).join_from(
                    notes, things, notes.c.id == things.c.id, isouter=True
                )
            )
            assert sorted(tuple(r) for r in await conn.execute(pairs)) == [
                ("p", None, "p"),
                ("s", None, "s"),
            ]
