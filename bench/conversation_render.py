"""How long the labeler's demonstration task page takes when its prompt is a conversation (issue 25).

    .venv/bin/python bench/conversation_render.py [--requests 200] [--postgres postgresql+psycopg://...]

Seeds a freshly migrated database (a SQLite file; also the Postgres one in --postgres, dropped and
recreated first) with one labeler and three projects, each with one demonstration task whose prompt
is, in turn:
- a single user turn (the page as it was before conversations);
- 10 messages: a system message, then user and assistant turns alternating, ending with the user's;
- 20 messages: a system message and 10 user turns with 9 assistant turns between them.
Turn texts are 80 to 2,000 characters, so some earlier turns are folded, and the long thread folds its
oldest turns together (templates/_conversation.html). The labeler leases each task through the work
list, then GET /label/task/{id} is requested in-process (FastAPI TestClient, the app as `instructloop
serve` builds it, session cookie and all) 20 times to warm up and --requests times measured.
Printed: median, p95 and max in ms per case. The goal: the 10-turn task under 50 ms.
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from app import conversation  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.main import create_served_app  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import GuidelineVersion, Project, Prompt, Role  # noqa: E402
from app.services import accounts, tasks  # noqa: E402

PASSWORD = "bench password 123"
WORDS = "the a runner knee shoe plan week rest doctor pain start slowly distance pace water sleep".split()
GUIDELINES = "# How to answer\n\n- Be **helpful**, honest and harmless.\n- Refuse clearly when a request is harmful.\n"


def _text(rnd: random.Random, n_chars: int) -> str:
    lines, line = [], []
    while sum(len(x) + 1 for x in lines) + sum(len(w) + 1 for w in line) < n_chars:
        line.append(rnd.choice(WORDS))
        if len(line) > rnd.randint(8, 16):
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines + ([" ".join(line)] if line else []))


def dialogue(n_messages: int, seed: int = 0) -> list[dict]:
    """A system message, then user/assistant turns alternating, ending with a user turn."""
    rnd = random.Random(seed)
    messages = [{"role": "system", "content": _text(rnd, 200)}] if n_messages > 1 else []
    while len(messages) < n_messages:
        role = "user" if (len(messages) - (n_messages > 1)) % 2 == 0 else "assistant"
        size = rnd.choice([80, 200, 400]) if role == "user" else rnd.choice([300, 700, 1200, 2000])
        messages.append({"role": role, "content": _text(rnd, size)})
    assert messages[-1]["role"] == "user"
    return conversation.check(messages, max_chars=100_000)


CASES = {"single turn (1 message)": 1, "10 messages": 10, "10 user turns (20 messages)": 20}


def seed(url: str) -> dict[str, int]:
    """Project id per case."""
    engine = make_engine(url)
    ids = {}
    with make_sessionmaker(engine)() as s:
        accounts.create_user(s, "lena@example.com", PASSWORD, role=Role.labeler)
        for i, (name, n) in enumerate(CASES.items()):
            project = Project(name=f"Conversations {n}", overlap=1, k=4)
            s.add(project)
            s.flush()
            s.add(GuidelineVersion(project_id=project.id, version=1, body_md=GUIDELINES))
            messages = dialogue(n, seed=i)
            prompt = Prompt(project_id=project.id, messages=messages, content_hash=conversation.content_hash(messages))
            s.add(prompt)
            s.flush()
            tasks.create_demonstration_tasks(s, project, [prompt])
            ids[name] = project.id
        s.commit()
    engine.dispose()
    return ids


def measure(url: str, data_dir: Path, projects: dict[str, int], n: int) -> dict[str, list[float]]:
    settings = Settings(DATABASE_URL=url, INSTRUCTLOOP_DATA_DIR=data_dir, SECRET_KEY="bench")
    app = create_served_app(settings)
    out = {}
    with TestClient(app, base_url="http://testserver") as client:
        csrf = lambda page: client.get(page).text.split('name="csrf_token" value="')[1].split('"')[0]  # noqa: E731
        r = client.post(
            "/login",
            data={"email": "lena@example.com", "password": PASSWORD, "csrf_token": csrf("/login")},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text[:500]
        for name, project_id in projects.items():
            r = client.post(
                f"/label/p/{project_id}/demonstration", data={"csrf_token": csrf("/label")}, follow_redirects=False
            )
            page = r.headers["location"]
            assert r.status_code == 303 and page.startswith("/label/task/"), (r.status_code, page)
            body = client.get(page).text
            turns = body.count('class="turn turn-')
            assert turns == (CASES[name] if CASES[name] > 1 else 0), (name, turns)
            for _ in range(20):
                client.get(page)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = client.get(page)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
            out[name] = times
    app.state.engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--postgres", default="", help="SQLAlchemy URL of a scratch Postgres database (wiped).")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("SQLite", f"sqlite:///{tmp}/bench.db")]
        if args.postgres:
            engine = make_engine(args.postgres)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            engine.dispose()
            targets.append(("Postgres", args.postgres))
        for db, url in targets:
            upgrade(url)
            results[db] = measure(url, Path(tmp) / db, seed(url), args.requests)
    print(f"\nGET /label/task/{{id}} (demonstration), ms over {args.requests} requests after 20 warm-up ones:\n")
    print("| database | prompt | median | p95 | max |")
    print("| --- | --- | ---: | ---: | ---: |")
    for db, cases in results.items():
        for name, times in cases.items():
            p95 = statistics.quantiles(times, n=20)[-1]
            print(f"| {db} | {name} | {statistics.median(times):.1f} | {p95:.1f} | {max(times):.1f} |")
    worst = max(statistics.quantiles(cases["10 messages"], n=20)[-1] for cases in results.values())
    print(f"\n10-message task, slowest p95: {worst:.1f} ms; goal < 50 ms: {'met' if worst < 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
