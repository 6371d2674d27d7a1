"""The ASGI app: middleware (session cookie, body limit), error shapes, routers."""

import gc
import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from app.config import REPO_ROOT, Settings
from app.db import make_engine, make_sessionmaker
from app.deps import CsrfFailed, LoginRequired, PermissionDenied
from app.security import SESSION_COOKIE, SessionSigner, new_session
from app.services import ServiceError, imports, intake
from app.validation import InvalidValue
from app.web import (
    admin,
    admin_data,
    admin_labelers,
    admin_projects,
    admin_review,
    admin_runs,
    api,
    api_intake,
    api_projects,
    api_review,
    api_runs,
    api_tasks,
    api_written,
    auth,
    labeler,
    written,
)
from app.web.headers import SecurityHeaders, docs_router
from app.web.render import redirect, render

log = logging.getLogger(__name__)
FLASH_COOKIE = "il_flash"


def _path_wants_json(path: str) -> bool:
    return path.startswith("/api/") or path in ("/healthz", "/openapi.json")


def _wants_json(request: Request) -> bool:
    return _path_wants_json(request.url.path)


# Paths with a smaller body limit than the server's: the intake takes small prompts from outside.
SMALL_BODY_PATHS = ((re.compile(r"/api/v1/projects/[^/]+/intake/?"), intake.MAX_BODY_BYTES),)


class BodyLimit:
    """Refuses request bodies over the limit with 413: at once when Content-Length says so, else
    (a chunked body) as soon as what was read passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = next((n for pattern, n in SMALL_BODY_PATHS if pattern.fullmatch(scope["path"])), self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._refuse(scope, send, limit)
        seen, too_large, started = 0, False, False

        async def limited_receive():
            nonlocal seen, too_large
            if too_large:
                raise _TooLarge()
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                too_large = True
                raise _TooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            # The app may catch _TooLarge and answer for itself (FastAPI turns any error while it
            # reads a body into 400): that answer is dropped, the 413 below goes out instead.
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            await self._refuse(scope, send, limit)

    async def _refuse(self, scope, send, limit: int):
        message = f"Request body too large (limit {limit:,} bytes)."
        if _path_wants_json(scope["path"]):
            body, kind = json.dumps({"detail": message}).encode(), b"application/json"
        else:  # a page: a plain page saying so (this runs outside the app, so no template)
            body, kind = _PLAIN_PAGE.format(title="Too large", message=message).encode(), b"text/html; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


_PLAIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><link rel="stylesheet" href="/static/css/app.css">
</head><body><main><section class="card narrow"><h1>{title}</h1><p>{message}</p>
<p><a href="/">Go to the start page</a></p></section></main></body></html>
"""


class _TooLarge(Exception):
    pass


class BrowserSession:
    """The signed session cookie and flash messages of browser requests.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware (@app.middleware) costs a task and
    a stream per request. /api/ is passed straight through: bearer-token clients keep no cookies,
    and no API route reads request.state.session."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        request = Request(scope)  # shares scope["state"] with the request objects the app makes
        signer: SessionSigner = scope["app"].state.signer
        data = signer.loads(request.cookies.get(SESSION_COOKIE))
        request.state.session = data or new_session()
        request.state.user = None
        request.state.flash_in = scope["app"].state.signer.loads_flash(request.cookies.get(FLASH_COOKIE))
        request.state.flash_out = []

        async def send_with_cookies(message):
            if message["type"] == "http.response.start":  # the handler has run: the state is final
                cookies = self._cookies(request, data)
                if cookies:
                    message = {**message, "headers": [*message.get("headers", []), *cookies]}
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _cookies(self, request: Request, data) -> list[tuple[bytes, bytes]]:
        settings, response = self.settings, Response()  # Response only formats the Set-Cookie headers
        if request.state.session is not data:  # new browser, login or logout
            response.set_cookie(
                SESSION_COOKIE,
                request.app.state.signer.dumps(request.state.session),
                max_age=settings.session_max_age_s,
                httponly=True,
                samesite="lax",
                secure=settings.cookie_secure,
            )
        pending = request.state.flash_in + request.state.flash_out  # render() empties both
        if pending:
            response.set_cookie(
                FLASH_COOKIE,
                request.app.state.signer.dumps_flash(pending),
                httponly=True,
                samesite="lax",
                secure=settings.cookie_secure,
            )
        elif FLASH_COOKIE in request.cookies:
            response.delete_cookie(FLASH_COOKIE)
        return [h for h in response.raw_headers if h[0] == b"set-cookie"]


def healthz(request: Request):
    # A module-level function, not a closure over the app: FastAPI caches facts about endpoint
    # functions in module-level LRU caches, and a closure kept every app built in the process alive
    # (in the test suite, hundreds of apps: 3 million objects for the garbage collector to walk).
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not healthy"
        # The driver's words name the database's host and port: for the log, not for anyone asking.
        log.error("health check: database unreachable: %s", str(exc).splitlines()[0][:300])
        return JSONResponse({"status": "unavailable", "reason": "database unreachable"}, status_code=503)
    return {"status": "ok", "database": "ok"}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="instructloop", version="0.1.0", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.engine = make_engine(settings.db_url)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.signer = SessionSigner(settings.secret_key, settings.session_max_age_s)
    app.state.intake_limiter = intake.RateLimiter(settings.intake_rate_per_minute, settings.intake_burst)

    app.add_middleware(BrowserSession, settings=settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.allowed_hosts:
        hosts = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(SecurityHeaders, hsts=settings.cookie_secure)  # outermost: on every response

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired):
        if _wants_json(request):
            return JSONResponse(
                {
                    "detail": "Authentication required: send 'Authorization: Bearer <token>'. A browser login does "
                    "not sign API calls: make a token on your Account page (/account), then in /api/docs click "
                    "Authorize and paste it."
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = redirect(f"/login?next={nxt}" if nxt != "/" else "/login")
        if request.headers.get("HX-Request"):
            response.headers["HX-Redirect"] = "/login"
        return response

    @app.exception_handler(PermissionDenied)
    async def _forbidden(request: Request, exc: PermissionDenied):
        if _wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=403)
        return render(request, "error.html", {"title": "Forbidden", "message": exc.message}, status_code=403)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed):
        message = "This form has expired or was not sent by this site. Reload the page and try again."
        if _wants_json(request):
            return JSONResponse({"detail": message}, status_code=403)
        return render(request, "error.html", {"title": "Form expired", "message": message}, status_code=403)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        if _wants_json(request):
            return JSONResponse(
                {"detail": exc.message}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
            )
        return render(
            request, "error.html", {"title": "Can't do that", "message": exc.message}, status_code=exc.status_code
        )

    @app.exception_handler(InvalidValue)
    async def _invalid_value(request: Request, exc: InvalidValue):
        if _wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=422)
        return render(request, "error.html", {"title": "Can't store that", "message": exc.message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if _wants_json(request) or exc.status_code not in (404, 405):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return render(
            request,
            "error.html",
            {"title": "Not found", "message": "There is no page here."},
            status_code=exc.status_code,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        if _wants_json(request):
            return JSONResponse({"detail": "Invalid request.", "errors": errors}, status_code=422)
        what = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors[:3])
        if request.method == "POST":  # a typed form (app.web.params.BackForm) with a value it can't take
            title, message = (
                "Not a valid form",
                f"This form has values that can't be used ({what}). Go back and correct them.",
            )
        else:
            title, message = "Not a valid address", f"This page can't be shown for these values ({what})."
        return render(request, "error.html", {"title": title, "message": message}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError):
        log.error("database error: %s", exc)
        message = "The database is not reachable; try again shortly."
        if _wants_json(request):
            return JSONResponse({"detail": message}, status_code=503)
        return render(request, "error.html", {"title": "Try again shortly", "message": message}, status_code=503)

    app.add_api_route("/healthz", healthz, include_in_schema=False)

    # Starlette tries the routers in this order: the API routes under load (an application's
    # prompts, issue 18; labeling, issue 3) first, which saves the intake ~8% of its server CPU.
    app.include_router(api_intake.router)
    app.include_router(api_tasks.router)
    app.mount("/static", StaticFiles(directory=REPO_ROOT / "static"), name="static")
    for router in (auth.router, labeler.router, admin.router, api.router, docs_router):
        app.include_router(router)
    app.include_router(api_runs.router)  # runs, model registry, evaluation (issue 4)
    app.include_router(api_written.router)  # labeler-written prompts (issue 18)
    for router in (
        admin_projects.router,
        admin_labelers.router,
        admin_data.router,
        admin_runs.router,
        admin_review.router,
        written.router,
        api_projects.router,
        api_review.router,
    ):  # admin dashboard (issue 6)
        app.include_router(router)
    return app


def create_served_app(settings: Settings | None = None) -> FastAPI:
    """The app as `instructloop serve` runs it (the uvicorn factory, called in each server process).

    The ~120,000 objects made by importing and building the app live as long as the process, so they
    are moved out of the garbage collector's reach (gc.freeze). Otherwise every full collection walks
    them again: a page that reads many rows triggered such collections and took ~90 ms longer
    (bench/admin_pages.py). Not done in create_app: tests build many apps in one process, and a
    frozen app that is later dropped is never collected."""
    app = create_app(settings)
    try:  # an import a previous server process was running can't finish: undo it and say so
        imports.fail_unfinished_jobs(app.state.engine)
    except OperationalError:
        log.warning("the database is not reachable at start; unfinished imports are left as they are")
    gc.collect()
    gc.freeze()
    return app
