"""Login, logout, invites and the account page (API tokens)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from app.deps import CurrentUser, OptionalUser, SessionDep, SettingsDep, verify_csrf
from app.models import ApiToken
from app.security import new_session
from app.services import ServiceError, accounts
from app.web.render import flash, redirect, render

router = APIRouter(dependencies=[Depends(verify_csrf)], include_in_schema=False)


def _safe_next(nxt: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would be an open redirect.
    if nxt and nxt.startswith("/") and not nxt.startswith("//"):
        return nxt
    return "/"


@router.get("/login")
def login_page(request: Request, user: OptionalUser, next: str | None = None):
    if user is not None:
        return redirect(_safe_next(next))
    return render(request, "auth/login.html", {"next": next or "", "email": ""})


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
):
    try:
        user = accounts.authenticate(
            session, email, password, ip=request.client.host if request.client else "",
            max_failures=settings.login_max_failures,
            max_failures_per_ip=settings.login_max_failures_per_ip, window_s=settings.login_window_s,
        )
    except ServiceError as exc:
        # The failure row must be stored even though we answer with an error.
        session.commit()
        return render(request, "auth/login.html", {"error": exc.message, "email": email, "next": next},
                      status_code=exc.status_code)
    request.state.session = new_session(user.id)  # a fresh session id at every login
    return redirect(_safe_next(next))


@router.post("/logout")
def logout(request: Request):
    request.state.session = new_session()
    flash(request, "You are logged out.")
    return redirect("/login")


@router.get("/invite/{token}")
def invite_page(request: Request, session: SessionDep, token: str):
    try:
        invite = accounts.open_invite(session, token)
    except ServiceError as exc:
        return render(request, "error.html", {"title": "Invite link", "message": exc.message},
                      status_code=exc.status_code)
    return render(request, "auth/invite.html", {"invite": invite, "token": token})


@router.post("/invite/{token}")
def accept_invite(
    request: Request,
    session: SessionDep,
    token: str,
    password: Annotated[str, Form()] = "",
    password2: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
):
    try:
        invite = accounts.open_invite(session, token)
    except ServiceError as exc:
        return render(request, "error.html", {"title": "Invite link", "message": exc.message},
                      status_code=exc.status_code)
    if password != password2:
        return render(request, "auth/invite.html", {"invite": invite, "token": token, "name": name,
                                                    "error": "The two passwords differ."}, status_code=400)
    try:
        user = accounts.accept_invite(session, token, password, name=name)
    except ServiceError as exc:
        session.rollback()
        return render(request, "auth/invite.html", {"invite": invite, "token": token, "name": name,
                                                    "error": exc.message}, status_code=exc.status_code)
    request.state.session = new_session(user.id)
    flash(request, "Welcome! Your account is ready.")
    return redirect("/")


@router.get("/account")
def account_page(request: Request, session: SessionDep, user: CurrentUser):
    tokens = session.query(ApiToken).filter_by(user_id=user.id).order_by(ApiToken.id.desc()).all()
    return render(request, "auth/account.html", {"tokens": tokens})


@router.post("/account/tokens")
def create_token(request: Request, session: SessionDep, user: CurrentUser, name: Annotated[str, Form()] = ""):
    token = accounts.create_api_token(session, user, name=name.strip()[:120])
    tokens = session.query(ApiToken).filter_by(user_id=user.id).order_by(ApiToken.id.desc()).all()
    return render(request, "auth/account.html", {"tokens": tokens, "new_token": token})


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(request: Request, session: SessionDep, user: CurrentUser, token_id: int):
    accounts.revoke_api_token(session, user, token_id)
    flash(request, "Token revoked.")
    return redirect("/account")
