"""Login, logout, invites and the account page (API tokens)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from app.deps import CurrentUser, OptionalUser, SessionDep, SessionRoute, SettingsDep, client_ip, verify_csrf
from app.security import new_session, token_hash
from app.services import ServiceError, accounts
from app.web.params import BackForm, IdPath
from app.web.render import flash, redirect, render

router = APIRouter(route_class=SessionRoute, dependencies=[Depends(verify_csrf)], include_in_schema=False)


def _safe_next(nxt: str | None) -> str:
    # Only same-site paths: "//evil.example", "/\\evil.example" (browsers read it as "//") or
    # "https://..." would be an open redirect.
    if nxt and nxt.startswith("/") and not nxt.startswith(("//", "/\\")):
        return nxt
    return "/"


@router.get("/login")
def login_page(request: Request, user: OptionalUser, next: str | None = None):
    if user is not None:
        return redirect(_safe_next(next))
    return render(request, "auth/login.html", {"next": next or "", "email": ""})


class LoginForm(BackForm):
    email: str = ""
    password: str = ""
    next: str = ""  # where to go once signed in (a path on this site)


@router.post("/login")
def login(request: Request, session: SessionDep, settings: SettingsDep, form: Annotated[LoginForm, Form()]):
    try:
        user = accounts.authenticate(
            session,
            form.email,
            form.password,
            ip=client_ip(request),
            max_failures=settings.login_max_failures,
            max_failures_per_ip=settings.login_max_failures_per_ip,
            window_s=settings.login_window_s,
        )
    except ServiceError as exc:
        # The attempt's failure row is committed already (accounts._admit_attempt); this refusal
        # rolls back nothing else.
        return render(
            request,
            "auth/login.html",
            {"error": exc.message, "email": form.email, "next": form.next},
            status_code=exc.status_code,
        )
    _sign_in(request, session, user)
    return redirect(_safe_next(form.next))


def _sign_in(request: Request, session, user) -> None:
    """A fresh session id at every sign-in, recorded on the server so that it can be ended."""
    request.state.session = new_session(user.id)
    accounts.start_session(
        session,
        user,
        request.state.session.sid,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent", ""),
    )


@router.post("/logout")
def logout(request: Request, session: SessionDep):
    accounts.end_session(session, request.state.session.sid)
    request.state.session = new_session()
    flash(request, "You are logged out.")
    return redirect("/login")


@router.get("/invite/{token}")
def invite_page(request: Request, session: SessionDep, token: str):
    try:
        invite = accounts.open_invite(session, token)
    except ServiceError as exc:
        return render(
            request, "error.html", {"title": "Invite link", "message": exc.message}, status_code=exc.status_code
        )
    return render(request, "auth/invite.html", {"invite": invite, "token": token})


class InviteForm(BackForm):
    name: str = ""
    password: str = ""
    password2: str = ""


@router.post("/invite/{token}")
def accept_invite(request: Request, session: SessionDep, token: str, form: Annotated[InviteForm, Form()]):
    try:
        invite = accounts.open_invite(session, token)
    except ServiceError as exc:
        return render(
            request, "error.html", {"title": "Invite link", "message": exc.message}, status_code=exc.status_code
        )
    if form.password != form.password2:
        return render(
            request,
            "auth/invite.html",
            {"invite": invite, "token": token, "name": form.name, "error": "The two passwords differ."},
            status_code=400,
        )
    try:
        user = accounts.accept_invite(session, token, form.password, name=form.name)
    except ServiceError as exc:
        return render(
            request,
            "auth/invite.html",
            {"invite": invite, "token": token, "name": form.name, "error": exc.message},
            status_code=exc.status_code,
        )
    _sign_in(request, session, user)
    flash(request, "Welcome! Your account is ready.")
    return redirect("/")


def _account_page(request: Request, session, user, status_code: int = 200, **extra):
    tokens = accounts.api_tokens(session, user.id)
    sessions = accounts.open_sessions(session, user.id)
    current = token_hash(request.state.session.sid)
    return render(
        request,
        "auth/account.html",
        {"tokens": tokens, "sessions": sessions, "current_sid_hash": current, **extra},
        status_code=status_code,
    )


@router.get("/account")
def account_page(request: Request, session: SessionDep, user: CurrentUser):
    return _account_page(request, session, user)


class TokenForm(BackForm):
    name: str = ""


@router.post("/account/tokens")
def create_token(request: Request, session: SessionDep, user: CurrentUser, form: Annotated[TokenForm, Form()]):
    token = accounts.create_api_token(session, user, name=form.name.strip()[:120])
    return _account_page(request, session, user, new_token=token)


class PasswordForm(BackForm):
    current: str = ""
    password: str = ""
    password2: str = ""


@router.post("/account/password")
def change_password(request: Request, session: SessionDep, user: CurrentUser, form: Annotated[PasswordForm, Form()]):
    try:
        if form.password != form.password2:
            raise ServiceError("The two new passwords differ.")
        revoked = accounts.change_password(
            session, user, form.current, form.password, keep_sid=request.state.session.sid
        )
    except ServiceError as exc:
        return _account_page(request, session, user, password_error=exc.message, status_code=exc.status_code)
    tokens = (
        f" and {revoked} API token{'s' * (revoked != 1)} {'were' if revoked != 1 else 'was'} revoked"
        " (create new ones for your scripts)"
        if revoked
        else ""
    )
    flash(request, f"Password changed. Your other sessions are signed out{tokens}.")
    return redirect("/account")


@router.post("/account/sessions/end-others")
def end_other_sessions(request: Request, session: SessionDep, user: CurrentUser):
    ended = accounts.end_sessions(session, user.id, keep_sid=request.state.session.sid)
    flash(request, f"Signed out {ended} other session{'s' * (ended != 1)}.")
    return redirect("/account")


@router.get("/reset/{token}")
def reset_page(request: Request, session: SessionDep, token: str):
    try:
        reset = accounts.open_password_reset(session, token)
    except ServiceError as exc:
        return render(
            request, "error.html", {"title": "Reset link", "message": exc.message}, status_code=exc.status_code
        )
    return render(request, "auth/reset.html", {"email": reset.user.email, "token": token})


class ResetForm(BackForm):
    password: str = ""
    password2: str = ""


@router.post("/reset/{token}")
def reset_password(request: Request, session: SessionDep, token: str, form: Annotated[ResetForm, Form()]):
    try:
        reset = accounts.open_password_reset(session, token)
    except ServiceError as exc:
        return render(
            request, "error.html", {"title": "Reset link", "message": exc.message}, status_code=exc.status_code
        )
    email = reset.user.email
    try:
        if form.password != form.password2:
            raise ServiceError("The two passwords differ.")
        accounts.use_password_reset(session, token, form.password)
    except ServiceError as exc:
        return render(
            request,
            "auth/reset.html",
            {"email": email, "token": token, "error": exc.message},
            status_code=exc.status_code,
        )
    request.state.session = new_session()
    flash(
        request,
        "Your password is set: log in with it. Every session of this account was signed out and its API tokens revoked.",
    )
    return redirect("/login")


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(request: Request, session: SessionDep, user: CurrentUser, token_id: IdPath):
    accounts.revoke_api_token(session, user, token_id)
    flash(request, "Token revoked.")
    return redirect("/account")
