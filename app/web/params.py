"""Typed request parameters shared by every router: numbers that fit the database's columns.

Ids, offsets and counts are Postgres `integer` (and SQLite refuses Python ints past 2**63), so a
number outside these bounds can't name anything stored: it is answered 422 naming the parameter,
never sent to the database (where it was a 500)."""

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

DB_INT_MAX = 2**31 - 1

IdPath = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
"""An id in the URL path."""
IdQuery = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
"""An optional id filter in the query string."""
Id = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""An id in a JSON body or a list of ids."""
Page = Annotated[int, Query(ge=1, le=100_000)]
"""A 1-based page number."""
