"""Statements a service runs for every job, compiled once and run on SQLite's driver itself.

Through SQLAlchemy a small statement costs several times what sqlite3 takes to run it:
each call builds an execution context, processes parameters and wraps the cursor in a
result. A `Prepared` statement is compiled once per parameter shape into its SQL, its
parameters' order and their type conversions, and then handed to sqlite3 directly. Other
databases run it through SQLAlchemy like any statement. Errors are SQLAlchemy's either way
(an IntegrityError stays an IntegrityError).
"""

from __future__ import annotations

import keyword
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import SelectBase

_Convert = Callable[[Any], Any] | None


class Prepared:
    """A statement run often; build one at import time and pass it to `DbConnection.execute`."""

    __slots__ = ("_shapes", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # Parameter names given -> the compiled form, or None where SQLAlchemy must run it
        # (a column default to fill in, say).
        self._shapes: dict[tuple[str, ...], _Shape | None] = {}

    def run_sqlite(
        self,
        conn: sqlite3.Connection,
        dialect: Dialect,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    ) -> Rows | None:
        """Run on `conn`; None when this shape of parameters needs SQLAlchemy instead."""
        if isinstance(parameters, Sequence):
            many, rows = True, parameters
        else:
            many, rows = False, [parameters or {}]
        keys = tuple(rows[0]) if rows else ()
        try:
            shape = self._shapes[keys]
        except KeyError:
            shape = self._shapes[keys] = _Shape.compile(self.statement, dialect, keys)
        if shape is None or (many and shape.expanding):
            return None  # (an IN list per row is not a shape this runs either)
        try:
            if many:
                # A row without one of the first row's names fails here, before anything
                # is written, and SQLAlchemy then says which.
                args = [shape.args(row) for row in rows]
            else:
                sql, one = (
                    shape.expand(rows[0]) if shape.expanding else (shape.sql, shape.args(rows[0]))
                )
        except KeyError:
            return None
        try:
            if many:
                conn.executemany(shape.sql, args)
                return Rows([])
            cursor = conn.execute(sql, one)
        except sqlite3.Error as error:
            raise DBAPIError.instance(shape.sql, parameters, error, sqlite3.Error) from error
        if shape.row is None:
            return Rows([])
        return Rows([shape.row(r) for r in cursor.fetchall()])


@dataclass(frozen=True)
class _Shape:
    sql: str
    # One per placeholder: the parameter's name, its constant value when the caller does not
    # give it (a literal compiled into the statement), and its conversion for the driver.
    names: tuple[str, ...]
    constants: Mapping[str, Any]
    converts: tuple[_Convert, ...]
    # Names bound to a list (IN): their placeholder is written out per call.
    expanding: frozenset[str]
    row: Callable[[tuple[Any, ...]], Any] | None

    @classmethod
    def compile(
        cls, statement: Executable, dialect: Dialect, keys: tuple[str, ...]
    ) -> _Shape | None:
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch or compiled.effective_returning:
            return None  # defaults computed in Python, or rows returned by a write
        names = tuple(compiled.positiontup or ())
        binds = compiled.binds
        constants: dict[str, Any] = {}
        for name in names:
            if name not in keys:
                if binds[name].callable is not None or binds[name].value is None:
                    return None  # a value SQLAlchemy would compute or demand
                constants[name] = binds[name].value
        expanding = frozenset(n for n in names if binds[n].expanding)
        if compiled.string.count("__[POSTCOMPILE_") != len(expanding):
            return None  # a value rendered into the SQL at each call (literal_execute)
        if isinstance(statement, SelectBase):
            row = _row_maker(statement, dialect)
            if row is None:
                return None
        elif isinstance(statement, UpdateBase):
            row = None
        else:
            return None  # text() and the like: whether it returns rows is SQLAlchemy's to say
        return cls(
            sql=compiled.string,
            names=names,
            constants=constants,
            converts=tuple(_bind_convert(binds[n].type, dialect) for n in names),
            expanding=expanding,
            row=row,
        )

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, convert in zip(self.names, self.converts, strict=True):
            value = params[name] if name in params else self.constants[name]
            # Called for None too, as SQLAlchemy does: a type may store None as something else.
            values.append(value if convert is None else convert(value))
        return values

    def expand(self, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """args(), with each IN list's placeholder written out for its items."""
        sql = self.sql
        values: list[Any] = []
        for name, convert in zip(self.names, self.converts, strict=True):
            value = params[name] if name in params else self.constants[name]
            items = list(value) if name in self.expanding else [value]
            if name in self.expanding:
                # SQLite takes an empty list, "IN ()", as matching nothing.
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * len(items)), 1)
            values.extend(i if convert is None else convert(i) for i in items)
        return sql, values


def _bind_convert(type_: Any, dialect: Dialect) -> _Convert:
    convert: _Convert = type_.dialect_impl(dialect).bind_processor(dialect)
    return convert


def _row_maker(statement: SelectBase, dialect: Dialect) -> Callable[[tuple[Any, ...]], Any] | None:
    """Rows with the columns as attributes; None where the names cannot be attributes (two
    columns of one name, a leading underscore), which SQLAlchemy's rows then carry."""
    columns = list(statement.selected_columns)
    names = [c.key or "" for c in columns]
    if len(set(names)) < len(names) or not all(
        n.isidentifier() and not n.startswith("_") and not keyword.iskeyword(n) for n in names
    ):
        return None
    row_type = namedtuple("Row", names)  # type: ignore[misc]
    converts = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
    if not any(converts):
        return row_type._make

    def make(raw: tuple[Any, ...]) -> Any:
        return row_type._make(v if f is None else f(v) for f, v in zip(converts, raw, strict=True))

    return make


class Rows:
    """What a Prepared query read: rows with their columns as attributes."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None
