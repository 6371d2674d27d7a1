"""Plain writes through the API while every handler thread is taken, on SQLite and Postgres.

A write holds SQLite's writer lock (Postgres: the rows it changed) until its transaction ends. When
it ended only after FastAPI had validated the response on the threadpool, a full pool deadlocked:
the writer waited for a thread, the threads waited for the writer's lock (a 60 s stall under 10
admins, found on SQLite with 2 threads). Handlers now end their transaction in their own thread
(app.deps.SessionRoute). The server here is a real uvicorn with its threadpool cut to 2 threads,
and 8 admins pause, resume and save guidelines on one project at once."""

import threading
import time

import anyio.to_thread
import httpx
import uvicorn
from sqlalchemy import func, select

from app.models import GuidelineVersion, Project, Role
from app.services import accounts

ADMINS, ROUNDS = 8, 4


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread: the test's process keeps its own
        pass


def _serve(app) -> tuple[_Server, threading.Thread, str]:
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def test_plain_writes_on_a_full_threadpool_all_answer(app, session, make_user):
    @app.post("/_test/threadpool")
    async def cut_threadpool() -> dict:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        return {"threads": 2}

    project = Project(name="Busy", k=2, overlap=1)
    session.add(project)
    session.commit()
    tokens = [accounts.create_api_token(session, make_user(f"admin{i}@example.com", Role.admin)) for i in range(ADMINS)]
    session.commit()

    server, thread, base = _serve(app)
    answers: list[str] = []
    try:
        assert httpx.post(f"{base}/_test/threadpool", timeout=30).json() == {"threads": 2}
        start = threading.Barrier(ADMINS)

        def admin(i: int) -> None:
            url = f"{base}/api/v1/projects/{project.id}"
            with httpx.Client(headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=20) as client:
                start.wait(timeout=30)
                for round_ in range(ROUNDS):
                    for reply in (
                        client.post(f"{url}/pause"),
                        client.put(f"{url}/guidelines", json={"body_md": f"admin {i} round {round_}"}),
                        client.post(f"{url}/resume"),
                    ):
                        answers.append(f"{reply.request.method} {reply.status_code}")

        def run(i: int) -> None:
            try:
                admin(i)
            except httpx.TimeoutException as exc:  # the deadlock: no answer within 20 s
                answers.append(f"timeout {exc.request.method} {exc.request.url.path}")

        admins = [threading.Thread(target=run, args=(i,)) for i in range(ADMINS)]
        for t in admins:
            t.start()
        for t in admins:
            t.join(timeout=300)
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    assert sorted(set(answers)) == ["POST 200", "PUT 200"], sorted(set(answers))
    assert len(answers) == ADMINS * ROUNDS * 3
    saved = session.scalar(select(func.count()).where(GuidelineVersion.project_id == project.id))
    assert saved == ADMINS * ROUNDS
