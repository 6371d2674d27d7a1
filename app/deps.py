"""Annotated dependencies: the database session and the signed-in user, for pages and API."""

import functools
import inspect
import ipaddress
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app import policies
from app.config import Settings
from app.db import handler_slot
from app.models import AppToken, Role, User
from app.security import CSRF_FIELD, CSRF_HEADER
from app.services import accounts, intake


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


# What a handler leaves pending is committed when it returns, in its own thread (SessionRoute), not
# when the request's dependencies end: FastAPI validates a sync endpoint's response on the threadpool
# before that, and on SQLite a write held until then would wait for a thread while the pool's threads
# wait for its writer lock. What is still open at the end (reads during that validation, a handler
# that takes the session only through a dependency) ends on threads of their own, so a request never
# needs a pool thread to let go of the lock. At most one per request in flight.
_COMMIT_THREADS = anyio.CapacityLimiter(math.inf)
REQUEST_STATE = "request_state"
"""Session.info key: the request's state, where `refuse` marks a refusal."""


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session, and the one place a request's transaction ends: what is still pending
    when the handler returns is committed before the response is sent, unless the handler refused the
    request (`refuse`: a form shown again with its error, a refused action); on a refusal or any error
    everything is rolled back, so nothing is half-written. Routers never commit or roll back (a test
    walks them). Services check before they write, and a write that may fail on a constraint runs in
    a savepoint, so a refused request has nothing of its own pending when it re-renders. Service steps
    whose reads decide their writes are `app.db.atomic`: they hold the writer lock and commit within
    the handler (see there why). Work for after the commit (removing files) is `app.db.after_commit`."""
    session = request.app.state.sessionmaker()
    session.info[REQUEST_STATE] = request.state
    try:
        yield session
    except BaseException:
        await _end(session, commit=False)
        raise
    await _end(session, commit=not is_refused(request))


REFUSED = "request_refused"


def refuse(request: Request) -> None:
    """This request's answer is a refusal: its session rolls back instead of committing."""
    setattr(request.state, REFUSED, True)


def is_refused(request: Request) -> bool:
    return getattr(request.state, REFUSED, False)


def _has_open_work(session: Session) -> bool:
    return bool(session.in_transaction() or session.new or session.dirty or session.deleted)


def _end_here(session: Session) -> None:
    """The request's transaction ends in this thread: committed, or rolled back on a refusal."""
    if _has_open_work(session):
        refused = getattr(session.info.get(REQUEST_STATE), REFUSED, False)
        session.rollback() if refused else session.commit()


async def _end(session: Session, *, commit: bool) -> None:
    if not _has_open_work(session):
        session.close()  # nothing open (the handler's thread ended it): no database call, no thread
        return

    def end() -> None:
        try:
            session.commit() if commit else session.rollback()
        finally:
            session.close()

    await anyio.to_thread.run_sync(end, limiter=_COMMIT_THREADS)


ENDS_SESSION = "ends_request_session"
"""Attribute of an endpoint wrapped by SessionRoute (include_router builds routes again)."""


def _ending_session(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the parameters through __wrapped__
    def handler(*args: Any, **kwargs: Any) -> Any:
        # The request's one session (FastAPI gives every dependency that asks the same one).
        session = next((value for value in kwargs.values() if isinstance(value, Session)), None)
        if session is None:
            return endpoint(*args, **kwargs)
        with handler_slot(session):
            result = endpoint(*args, **kwargs)
            _end_here(session)
        return result

    setattr(handler, ENDS_SESSION, True)
    return handler


class SessionRoute(APIRoute):
    """Every router's route class. A sync endpoint that takes the request session runs in one of the
    process's handler slots (`app.db.handler_slot`: a few at once on SQLite) and ends its transaction
    in its own thread before it returns (see _COMMIT_THREADS why)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint) and not getattr(endpoint, ENDS_SESSION, False):
            endpoint = _ending_session(endpoint)
        super().__init__(path, endpoint, **kwargs)


async def get_settings(request: Request) -> Settings:
    """Async: no I/O, so no hop to the threadpool (a sync dependency costs one per request)."""
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def client_ip(request: Request, settings: Settings | None = None) -> str:
    """The client's address: the one function that says it (login throttle, session records, logs).

    X-Forwarded-For is believed only from a proxy in INSTRUCTLOOP_TRUSTED_PROXIES (default none, not
    even loopback: anyone on the machine could otherwise name any address and escape the throttle).
    Of its hops the nearest one that is not itself a trusted proxy is the client, as uvicorn reads it
    (instructloop serve hands uvicorn the same list): what the client wrote in front is not believed."""
    settings = settings or request.app.state.settings
    peer = request.client.host if request.client else ""
    proxies = trusted_networks(settings.trusted_proxies)
    if not proxies or not _is_trusted(peer, proxies):
        return peer
    hops = [h.strip() for value in request.headers.getlist("x-forwarded-for") for h in value.split(",")]
    for hop in reversed(hops):
        if hop and not _is_trusted(hop, proxies):
            return hop[:64]
    return (hops[0] if hops and hops[0] else peer)[:64]  # every hop a proxy: the farthest one


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(spec: str) -> tuple[Network, ...]:
    """The networks of a comma-separated list of addresses and networks (ValueError on a bad one)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec.split(",") if item.strip())


def _is_trusted(host: str, proxies: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


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


# The role checks below are async: they only read the user that optional_user / api_user loaded on
# the threadpool, so they need no thread of their own (a sync dependency costs a threadpool hop per
# request, and under load each hop waits for the event loop and a free thread).
async def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise LoginRequired()
    return user


async def labeler_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not policies.can_label(user):
        raise PermissionDenied()
    return user


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not policies.can_admin(user):
        raise PermissionDenied("This page is for admins.")
    return user


# The API's one authentication: a bearer token (Settings page or `instructloop token`). Declared
# through HTTPBearer so that /openapi.json names the scheme on every operation that needs it and
# /api/docs has "Authorize"; auto_error is off so a missing token gets our 401 body.
bearer = HTTPBearer(auto_error=False, description="An API token from your Account page.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise LoginRequired()
    return credentials.credentials.strip()


def api_user(session: SessionDep, credentials: BearerCredentials) -> User:
    # Sync (on the threadpool): an async dependency here would run the query on the event loop, and
    # on SQLite a query that waits for the writer lock would stall every request of the process.
    raw = _bearer_token(credentials)
    user = accounts.user_for_api_token(session, raw)
    if user is None:
        if intake.app_token_for(session, raw) is not None:
            raise PermissionDenied(APP_TOKEN_ONLY)
        raise LoginRequired()
    return user


APP_TOKEN_ONLY = "This is an app token: it can only send prompts to its project (POST /api/v1/projects/{id}/intake)."


def app_token(session: Session, credentials: HTTPAuthorizationCredentials | None) -> AppToken:
    """The intake's one authentication: an app token (made by an admin for one project). Called by
    the intake handler in its own thread: as a dependency it would cost the intake, the busiest
    route, one more threadpool hop per request (bench/README.md, the intake scenario)."""
    raw = _bearer_token(credentials)
    token = intake.app_token_for(session, raw)
    if token is None:
        if accounts.user_for_api_token(session, raw) is not None:
            raise PermissionDenied(
                "The intake takes an app token (an admin makes one for the project), not a user's API token."
            )
        raise LoginRequired()
    return token


async def api_admin(user: Annotated[User, Depends(api_user)]) -> User:
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
