"""Typed request parameters shared by every router: numbers that fit the database's columns.

Ids, offsets and counts are Postgres `integer` (and SQLite refuses Python ints past 2**63), so a
number outside these bounds can't name anything stored: it is answered 422 naming the parameter,
never sent to the database (where it was a 500)."""

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, Field

DB_INT_MAX = 2**31 - 1

IdPath = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
"""An id in the URL path."""
IdQuery = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
"""An optional id filter in the query string."""
Id = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""An id in a JSON body or a list of ids."""
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


# Being replaced by typed forms (BackForm subclasses); removed once no router reads forms by hand.
def form_text(form, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value if isinstance(value, str) else default


def form_texts(form, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str)]


def form_id(form, name: str) -> int | None:
    value = form_text(form, name).strip()
    return int(value) if value.isdigit() and 1 <= int(value) <= DB_INT_MAX else None
