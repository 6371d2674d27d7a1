"""Typed request parameters shared by every router: numbers that fit the database's columns.

Ids, offsets and counts are Postgres `integer` (and SQLite refuses Python ints past 2**63), so a
number outside these bounds can't name anything stored: it is answered 422 naming the parameter,
never sent to the database (where it was a 500)."""

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, Field

DB_INT_MAX = 2**31 - 1

IdPath = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
"""An id in the URL path."""
IdQuery = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
"""An optional id filter in the query string."""


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


IdFilter = Annotated[int | None, BeforeValidator(_blank_is_none), Query(ge=1, le=DB_INT_MAX)]
"""An optional id chosen in a page's filter form, whose empty choice ("All") sends an empty value."""
Id = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""An id in a JSON body or a list of ids."""


def _split_commas(value: object) -> object:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # one query value, e.g. ?models=3,5
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


IdsQuery = Annotated[list[Id], BeforeValidator(_split_commas), Query()]
"""Ids separated by commas in one query value (links such as /admin/runs/new?models=3,5)."""
Page = Annotated[int, Query(ge=1, le=100_000)]
"""A 1-based page number."""


class BackForm(BaseModel):
    """A form posted from a page that asks to come back to it (`back`, a path on this site).

    Every page form is such a model, taken by a sync handler as `Annotated[XForm, Form()]`; FastAPI
    reads an empty field as absent, so defaults apply; the CSRF field is checked before
    (app.deps.verify_csrf) and ignored here."""

    back: str = ""

    def back_or(self, default: str) -> str:
        """`back` when it is a path on this site (never another host), else `default`."""
        return self.back if self.back.startswith("/") and not self.back.startswith(("//", "/\\")) else default
