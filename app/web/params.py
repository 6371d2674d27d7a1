"""Typed request parameters shared by every router: numbers that fit the database's columns.

Ids, offsets and counts are Postgres `integer` (and SQLite refuses Python ints past 2**63), so a
number outside these bounds can't name anything stored: it is answered 422 naming the parameter,
never sent to the database (where it was a 500)."""

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field
from starlette.datastructures import FormData

DB_INT_MAX = 2**31 - 1

IdPath = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
"""An id in the URL path."""
IdQuery = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
"""An optional id filter in the query string."""
Id = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""An id in a JSON body or a list of ids."""
Page = Annotated[int, Query(ge=1, le=100_000)]
"""A 1-based page number."""


def form_text(form: FormData, name: str, default: str = "") -> str:
    """A text field of a submitted form (the default where a file came instead of text)."""
    value = form.get(name, default)
    return value if isinstance(value, str) else default


def form_texts(form: FormData, name: str) -> list[str]:
    """Every value of a repeated text field (checkboxes, multiple selects)."""
    return [v for v in form.getlist(name) if isinstance(v, str)]


def form_id(form: FormData, name: str) -> int | None:
    """An id picked in a form, or None when the field is empty or names nothing that could exist."""
    value = form_text(form, name).strip()
    return int(value) if value.isdigit() and 1 <= int(value) <= DB_INT_MAX else None
