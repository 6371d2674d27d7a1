"""Rendering pages and fragments, flash messages, and the one-route-two-shapes htmx rule."""

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from app.config import REPO_ROOT
from app.deps import refuse
from app.markdown import render_markdown
from app.models import OUTPUT_FLAGS

templates = Jinja2Templates(directory=str(REPO_ROOT / "templates"))
templates.env.filters["markdown"] = render_markdown


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 07 min: how long a run has taken or may still take."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


templates.env.filters["duration"] = duration


def when(value) -> Markup:
    """A stored (UTC) time as <time>: the page shows it in UTC, and static/js/app.js rewrites it in
    the viewer's own time zone (a page without JavaScript keeps the UTC text)."""
    if value is None:
        return Markup("")
    return Markup('<time datetime="{}" data-local>{} UTC</time>').format(
        value.isoformat(), value.strftime("%Y-%m-%d %H:%M")
    )


templates.env.filters["when"] = when
templates.env.globals["OUTPUT_FLAGS"] = OUTPUT_FLAGS


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def flash(request: Request, message: str, kind: str = "info") -> None:
    """Shown once on the next page rendered for this browser."""
    request.state.flash_out.append([kind, message])


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """The page or fragment `name`; an error status (a form shown again with its message) refuses the
    request, so its session rolls back (app.deps.get_session)."""
    if status_code >= 400:
        refuse(request)
    ctx = {
        "user": getattr(request.state, "user", None),
        "csrf_token": request.app.state.signer.csrf_token(request.state.session.sid),
        "flashes": request.state.flash_in + request.state.flash_out,
        "htmx": is_htmx(request),
    }
    request.state.flash_in = []
    request.state.flash_out = []
    ctx.update(context or {})
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def redirect(url: str) -> RedirectResponse:
    """After a POST: 303 so the browser GETs the next page; htmx follows it too."""
    return RedirectResponse(url, status_code=303)


def refused(request: Request, exc: Exception, back: str) -> RedirectResponse:
    """A refused action of a form (a deletion something depends on): its reason as an error message on
    the page `back`. A 404 is raised on (the error page says what does not exist)."""
    if getattr(exc, "status_code", 400) == 404:
        raise exc
    refuse(request)
    flash(request, getattr(exc, "message", str(exc)), "error")
    return redirect(back)
