"""The last check before a value reaches the database: text that either database would refuse or
cut, and numbers JSON can't hold. One place for every write, whichever route or service made it.

Postgres refuses NUL in text and JSON and lone UTF-16 surrogates (they can't be encoded as UTF-8);
strings longer than their column fail there and are silently kept whole on SQLite; NaN and Infinity
are not JSON. Each of these used to surface as a 500 (issue 15). Routes validate their input with a
clear message first; this guard turns anything that slips through into a 422 naming the field, and
the transaction is rolled back, so nothing is half-written.

ORM objects are checked at flush (a session event); statements built by hand (bulk inserts) call
`check_values` themselves. Every statement's text parameters, reads included, are checked for NUL
and lone surrogates just before they are sent (an engine event): Postgres refuses them even in a
WHERE clause, so a lookup by a name with a NUL in it was a 500 too."""

import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Engine, String, Table, event, inspect
from sqlalchemy.orm import Session


class InvalidValue(ValueError):
    """Answered 422 with its message (app.main); below the services layer, so not a ServiceError."""

    status_code = 422

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def text_problem(value: str, max_length: int | None = None) -> str | None:
    """Why this text can't be stored, or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    if max_length is not None and len(value) > max_length:
        return f"is longer than {max_length} characters"
    return None


def json_problem(value: Any) -> str | None:
    """Why this JSON value can't be stored, or None (walks nested lists and dicts)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "contains NaN or Infinity (not JSON)"
        if isinstance(item, str) and (problem := text_problem(item)):
            return problem
        if isinstance(item, dict):
            for key, nested in item.items():
                if isinstance(key, str) and (problem := text_problem(key)):
                    return problem
                stack.append(nested)
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def value_problem(column_type: Any, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(column_type, JSON):
        return json_problem(value)
    if isinstance(value, str) and isinstance(column_type, String):
        return text_problem(value, column_type.length)
    if isinstance(value, float) and not math.isfinite(value):
        return "is NaN or Infinity"
    return None


def row_problem(table: Table, values: dict[str, Any]) -> str | None:
    """Why the first value of this row that its column can't store can't be, or None."""
    for name, value in values.items():
        if name in table.c and (problem := value_problem(table.c[name].type, value)):
            return f"{name} {problem}"
    return None


def check_values(table: Table, values: dict[str, Any]) -> None:
    """Raises InvalidValue for the first value of this row its column can't store."""
    if problem := row_problem(table, values):
        raise InvalidValue(f"{problem}.")


@event.listens_for(Session, "before_flush")
def _check_before_flush(session: Session, _context, _instances) -> None:
    for obj in (*session.new, *session.dirty):
        state = inspect(obj)
        for prop in state.mapper.column_attrs:
            value = state.attrs[prop.key].loaded_value
            if (problem := value_problem(prop.columns[0].type, value)) is not None:
                raise InvalidValue(f"{prop.key} {problem}.")


def _param_problem(parameters: Any, names: Sequence[str] = ()) -> str | None:
    """The first text parameter (of a row, or of each row of an executemany) that can't be sent.
    `names` name positional parameters (SQLite's)."""
    rows = parameters if isinstance(parameters, list) else [parameters]
    for row in rows:
        items = (
            row.items() if isinstance(row, dict) else itertools.zip_longest(names, row or (), fillvalue="a text value")
        )
        for name, value in items:
            if isinstance(value, str) and ("\x00" in value or not value.isascii()) and (problem := text_problem(value)):
                return f"{re.sub(r'_[0-9]+$', '', str(name))} {problem}"
    return None


def guard_parameters(engine: Engine) -> None:
    """Checks every statement's text parameters just before they are sent (see the module doc)."""

    @event.listens_for(engine, "before_cursor_execute")
    def _check_parameters(_conn, _cursor, _statement, parameters, context, _executemany) -> None:
        names = getattr(getattr(context, "compiled", None), "positiontup", None) or ()
        if problem := _param_problem(parameters, names):
            raise InvalidValue(f"{problem}.")
