"""Annotated dependencies: the database session and the signed-in user, for pages and API."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app import policies
from app.config import Settings
from app.db import write_session
from app.models import Role, User
from app.security import CSRF_FIELD, CSRF_HEADER, SessionData
from app.services import accounts


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, as the templates see it."""

    id: int
    email: str
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin


class LoginRequired(Exception):
    """Anonymous on a page: redirect to login. On /api/v1: 401 JSON."""


class PermissionDenied(Exception):
    def __init__(self, message: str = "You don't have access to this page."):
        self.message = message


class CsrfFailed(Exception):
    pass


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed before the response is sent, rolled back on
    any error so that nothing is half-written."""
    with request.app.state.sessionmaker() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_write_session(request: Request) -> Iterator[Session]:
    """Like get_session, but on SQLite the transaction takes the writer lock at its start
    (BEGIN IMMEDIATE), for requests that read then write under contention.

    Caution for hot paths: FastAPI runs a sync dependency's setup and teardown on other threadpool
    threads than the handler, so the writer lock can be held while waiting for a free thread; under
    heavy load that deadlocks until SQLite's busy timeout. The labeling API and pages therefore open
    `app.db.write_session(request.app.state.engine)` inside the handler instead."""
    with write_session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def browser_session(request: Request) -> SessionData:
    """Set by the session middleware on every request (anonymous ones too)."""
    return request.state.session


def optional_user(request: Request, session: SessionDep) -> User | None:
    data = request.state.session
    if data.user_id is None:
        return None
    user = accounts.user_for_session(session, data.user_id, data.sid)  # None once the session ended
    if not policies.is_signed_in(user):
        return None
    # Templates get a plain snapshot: error pages render after the session rolled back.
    request.state.user = Viewer(id=user.id, email=user.email, name=user.name, role=user.role)
    return user


def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise LoginRequired()
    return user


def labeler_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not policies.can_label(user):
        raise PermissionDenied()
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not policies.can_admin(user):
        raise PermissionDenied("This page is for admins.")
    return user


def api_user(request: Request, session: SessionDep) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise LoginRequired()
    user = accounts.user_for_api_token(session, token.strip())
    if user is None:
        raise LoginRequired()
    return user


def api_admin(user: Annotated[User, Depends(api_user)]) -> User:
    if not policies.can_admin(user):
        raise PermissionDenied("This endpoint is for admins.")
    return user


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]
LabelerUser = Annotated[User, Depends(labeler_user)]
AdminUser = Annotated[User, Depends(admin_user)]
ApiUser = Annotated[User, Depends(api_user)]
ApiAdmin = Annotated[User, Depends(api_admin)]


async def verify_csrf(request: Request) -> None:
    """Every state-changing browser request carries the session's CSRF token, in the
    X-CSRF-Token header (htmx) or the csrf_token form field (plain forms)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # cached on the request; the route reads it again for free
        value = form.get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    if not request.app.state.signer.csrf_ok(request.state.session.sid, token):
        raise CsrfFailed()
