"""Admin pages."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from app.deps import AdminUser, SessionDep, SessionRoute, SettingsDep, verify_csrf
from app.models import Role
from app.services import ServiceError, accounts, attention, projects
from app.web.params import Id, IdPath
from app.web.render import flash, redirect, render

router = APIRouter(
    route_class=SessionRoute, prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False
)


@router.get("")
def dashboard(request: Request, session: SessionDep, user: AdminUser):
    return render(
        request,
        "admin/dashboard.html",
        {"counts": projects.dashboard_counts(session), "attention": attention.needs_attention(session)},
    )


def _users_page(request: Request, session, status_code: int = 200, **extra):
    return render(
        request,
        "admin/users.html",
        {
            "users": accounts.list_users(session),
            "simulated": accounts.list_users(session, simulated=True),
            "invites": accounts.open_invites(session),
            "projects": projects.project_names(session),
            "roles": list(Role),
            **extra,
        },
        status_code=status_code,
    )


def _link(request: Request, settings, route: str, token: str) -> str:
    """A link to send someone: on the configured public address, so that a forged Host header
    can't put another site in front of its token. Without one, the request's address serves only
    when its host is trusted; otherwise the admin gets the bare path and is asked for the setting."""
    path = request.app.url_path_for(route, token=token)
    if settings.public_url:
        return settings.public_url.rstrip("/") + path
    if _trusted_host(request.url.hostname or "", settings.allowed_hosts):
        return str(request.url_for(route, token=token))
    flash(
        request,
        "Set INSTRUCTLOOP_PUBLIC_URL (e.g. https://label.example.com) to get whole links: without it only a "
        "loopback host or one in INSTRUCTLOOP_ALLOWED_HOSTS is trusted, so this link is the path only. "
        "Put this server's address in front of it.",
        "error",
    )
    return path


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _trusted_host(host: str, allowed_hosts: str) -> bool:
    """A loopback name (a server on this machine) or one on the allow-list the server enforces
    (Starlette's TrustedHostMiddleware patterns: a name or "*.domain"; a bare "*" trusts nothing here)."""
    host = host.lower()
    if host in LOOPBACK_HOSTS:
        return True
    for pattern in (p.strip().lower() for p in allowed_hosts.split(",")):
        if (
            pattern
            and pattern != "*"
            and (host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])))
        ):
            return True
    return False


@router.get("/users")
def users_page(request: Request, session: SessionDep, user: AdminUser):
    return _users_page(request, session)


@router.post("/users/invite")
def invite(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: AdminUser,
    email: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "labeler",
    projects_: Annotated[list[Id], Form(alias="projects")] = [],  # noqa: B006 - FastAPI copies the default
):
    try:
        token = accounts.create_invite(
            session,
            email,
            role=Role(role) if role in Role.__members__ else Role.labeler,
            created_by=user,
            ttl_s=settings.invite_ttl_s,
            project_ids=projects_,
        )
    except ServiceError as exc:
        return _users_page(request, session, error=exc.message, email=email, status_code=exc.status_code)
    link = _link(request, settings, "invite_page", token)
    return _users_page(request, session, invite_link=link, invite_email=accounts.normalize_email(email))


@router.post("/invites/{invite_id}/revoke")
def revoke_invite(request: Request, session: SessionDep, user: AdminUser, invite_id: IdPath):
    invite = accounts.revoke_invite(session, invite_id)
    flash(request, f"The invite for {invite.email} is revoked: its link no longer works.")
    return redirect("/admin/users")


@router.post("/invites/{invite_id}/resend")
def resend_invite(request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, invite_id: IdPath):
    """A new link for the same email and role; the old one stops working."""
    old = accounts.get_invite(session, invite_id)
    token = accounts.create_invite(
        session, old.email, role=old.role, created_by=user, ttl_s=settings.invite_ttl_s, project_ids=old.project_ids
    )
    link = _link(request, settings, "invite_page", token)
    return _users_page(request, session, invite_link=link, invite_email=old.email)


@router.post("/users/{user_id}/active")
def set_active(
    request: Request, session: SessionDep, user: AdminUser, user_id: IdPath, active: Annotated[bool, Form()] = False
):
    try:
        target = accounts.set_active(session, user_id, active, by=user)
    except ServiceError as exc:
        flash(request, exc.message, "error")
        return redirect("/admin/users")
    flash(request, f"{target.email} is {'enabled' if active else 'disabled'}.")
    return redirect("/admin/users")


@router.post("/users/{user_id}/end-access")
def end_access(request: Request, session: SessionDep, user: AdminUser, user_id: IdPath):
    ended, revoked = accounts.end_access(session, user_id)
    flash(request, f"Ended {ended} session{'s' * (ended != 1)} and revoked {revoked} API token{'s' * (revoked != 1)}.")
    return redirect("/admin/users")


@router.post("/users/{user_id}/reset-link")
def reset_link(request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, user_id: IdPath):
    token = accounts.create_password_reset(session, user_id, created_by=user, ttl_s=settings.reset_ttl_s)
    return _users_page(
        request,
        session,
        reset_link=_link(request, settings, "reset_page", token),
        reset_email=accounts.get_user(session, user_id).email,
    )


@router.post("/users/{user_id}/unlock")
def unlock(request: Request, session: SessionDep, user: AdminUser, user_id: IdPath):
    cleared = accounts.clear_login_failures(session, user_id)
    flash(request, f"Cleared {cleared} failed login{'s' * (cleared != 1)}.")
    return redirect("/admin/users")
