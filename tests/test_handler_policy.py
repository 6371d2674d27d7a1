"""One way into a handler, checked on the code itself (like tests/test_api_policy.py for roles):

- no `async def` endpoint depends on the request's database session: its queries would run on the
  event loop, and on SQLite one that waits for the writer lock stalls every request of the process;
- every sync endpoint that takes the session is a SessionRoute's, so its transaction ends in its own
  thread before FastAPI needs another thread for the response (tests/test_handler_threads.py);
- no router touches the transaction or queries the database itself (`session.commit()`,
  `.rollback()`, `.execute()`, ...), nor opens sessions of its own: the request's session ends in
  app.deps.get_session, and queries live in services;
- forms arrive typed (`Annotated[SomeForm, Form()]`), never read by hand with `request.form()`.

Each check is also run on a small bad example, so that a check that can no longer fail is noticed."""

import ast
import inspect
from pathlib import Path

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.deps import ENDS_SESSION, get_session
from app.main import create_app

WEB = Path(__file__).resolve().parents[1] / "app" / "web"
SESSION_METHODS = {
    "commit",
    "rollback",
    "execute",
    "get",
    "get_one",
    "query",
    "scalar",
    "scalars",
    "add",
    "add_all",
    "delete",
    "flush",
    "begin",
    "begin_nested",
    "close",
}


def _uses_session(dependant: Dependant) -> bool:
    return any(d.call is get_session or _uses_session(d) for d in dependant.dependencies)


def _api_routes(routes) -> list[APIRoute]:
    """Every endpoint, also inside included routers (FastAPI keeps those as `original_router`)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


def async_endpoints_with_session(app) -> list[str]:
    routes = _api_routes(app.routes)
    assert len(routes) > 100  # the walk reaches the routers' endpoints
    return [
        f"{sorted(route.methods)} {route.path} ({route.endpoint.__module__}.{route.endpoint.__name__})"
        for route in routes
        if inspect.iscoroutinefunction(route.endpoint) and _uses_session(route.dependant)
    ]


def sync_endpoints_without_session_route(app) -> list[str]:
    return [
        f"{sorted(route.methods)} {route.path} ({route.endpoint.__module__}.{route.endpoint.__name__})"
        for route in _api_routes(app.routes)
        if not inspect.iscoroutinefunction(route.endpoint)
        and _uses_session(route.dependant)
        and not getattr(route.endpoint, ENDS_SESSION, False)
    ]


def transaction_calls(source: str, filename: str) -> list[str]:
    """`session.<method>(...)` on the request session, `<x>.sessionmaker(...)` / `maker()` opening a
    session of its own, and `request.form()` read by hand."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, method = node.func.value, node.func.attr
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        if (name == "session" and method in SESSION_METHODS) or (name == "request" and method == "form"):
            found.append(f"{filename}:{node.lineno} {name}.{method}()")
        if method == "sessionmaker" or (isinstance(owner, ast.Attribute) and owner.attr == "sessionmaker"):
            found.append(f"{filename}:{node.lineno} opens a session of its own")
    return sorted(found, key=lambda hit: int(hit.split(":")[1].split(" ")[0]))


def test_no_async_endpoint_uses_the_request_session(tmp_path):
    app = create_app(_settings(tmp_path))
    assert async_endpoints_with_session(app) == []


def test_the_async_check_fails_on_an_async_handler_with_the_session(tmp_path):
    from app.deps import SessionDep

    app = create_app(_settings(tmp_path))

    @app.post("/bad")
    async def bad(session: SessionDep):  # the hazard: sync database calls on the event loop
        return {}

    assert [e for e in async_endpoints_with_session(app) if "/bad" in e]


def test_every_sync_endpoint_with_the_session_ends_it_in_its_own_thread(tmp_path):
    assert sync_endpoints_without_session_route(create_app(_settings(tmp_path))) == []


def test_the_route_class_check_fails_on_a_router_without_it(tmp_path):
    from fastapi import APIRouter

    from app.deps import SessionDep

    app = create_app(_settings(tmp_path))
    plain = APIRouter()  # the hazard: no route_class=SessionRoute

    @plain.post("/bad")
    def bad(session: SessionDep):
        return {}

    app.include_router(plain)
    assert [e for e in sync_endpoints_without_session_route(app) if "/bad" in e]


def test_routers_never_touch_the_transaction():
    found = [hit for path in sorted(WEB.glob("*.py")) for hit in transaction_calls(path.read_text(), path.name)]
    assert found == []


def test_the_router_scan_fails_on_a_commit_a_query_and_a_hand_read_form():
    bad = """
async def handler(request, session):
    form = await request.form()
    session.rollback()
    session.execute(select(1))
    with request.app.state.sessionmaker() as s:
        pass
    session.commit()
"""
    found = transaction_calls(bad, "bad.py")
    assert [hit.split(" ", 1)[1] for hit in found] == [
        "request.form()",
        "session.rollback()",
        "session.execute()",
        "opens a session of its own",
        "session.commit()",
    ]


def _settings(tmp_path):
    from app.config import Settings

    return Settings(DATABASE_URL=f"sqlite:///{tmp_path}/policy.db", INSTRUCTLOOP_DATA_DIR=tmp_path / "data")
