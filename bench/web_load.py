"""Load test of the labeling API over HTTP on loopback: simulated labelers ask for the next task
and submit it, against a real uvicorn server started here, on Postgres and on SQLite.

    .venv/bin/python bench/web_load.py                      # both databases, all loads
    .venv/bin/python bench/web_load.py --db sqlite --loads 1,10,50 --seconds 5
    .venv/bin/python bench/web_load.py --db postgres --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/il_bench
    .venv/bin/python bench/web_load.py --db postgres --scenarios intake --seconds 5   # the intake only

Loads: saturation with N labelers and no pause between tasks (N from --loads), and "realistic":
--realistic labelers (default 500) who pause a few seconds between tasks (about 100 requests/s).
Each simulated labeler has its own account and API token and its own keep-alive connection.
Every run is bounded in time (--seconds / --realistic-seconds) and by the tasks in the queue.

Printed per run: submissions/s, p50/p95/p99 latency of `next` and of `submit`, errors, and the
checks read back from the database afterwards:
- double assignments: a task handed to more labelers than its overlap, or one labeler handed the
  same task again after submitting it;
- lost submissions: submissions the server acknowledged that are not stored (or a task whose
  done_count disagrees with its stored rows).

The intake scenario (--scenarios intake; issue 18): N applications, each with its own app token
and keep-alive connection, send prompts to POST /api/v1/projects/{id}/intake with no pause (unique
texts from many end users, 1 in 20 with an email address, 1 in 20 a repeat of an earlier prompt).
Printed per run: prompts/s (created), p50/p95/p99 latency, the outcomes, errors, and the check read
back afterwards (lost: a created prompt the server acknowledged that is not stored). The server's
intake rate limit is lifted for the run (it would cap each token at 600 prompts a minute).

The Postgres database named in --pg-url is dropped and recreated (use a scratch one).
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import Demonstration, GuidelineVersion, Project, Prompt, Role, Task, TaskKind  # noqa: E402
from app.services import accounts, intake  # noqa: E402

# -- a tiny HTTP/1.1 keep-alive client (the load generator must cost less CPU than the server) ----


class Conn:
    def __init__(self, host: str, port: int, token: str):
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n"
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"", extra: str = "") -> tuple[int, bytes]:
        # Like any HTTP client: a keep-alive connection the server closed while we paused (uvicorn
        # closes idle ones after 5 s) is replaced, and a request that met such a close is resent.
        reused = self.writer is not None and not self.reader.at_eof()
        if not reused:
            await self.connect()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            self.writer.write(head)
            status_line = await self.reader.readline()
        except ConnectionResetError:
            if not reused:
                raise
            status_line = b""
        if not status_line and reused:
            await self.connect()
            self.writer.write(head)
            status_line = await self.reader.readline()
        if not status_line:
            self.writer = None
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            self.writer.close()
            self.writer = None
        return status, data

    async def connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acked: list[tuple[int, int]] = field(default_factory=list)  # (task, user) the server stored
    handed: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))  # task -> users
    done: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))  # user -> tasks submitted
    repeats: int = 0  # same task handed again after submit
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    empty: int = 0


async def labeler(
    conn: Conn,
    user_id: int,
    project_id: int,
    stats: Stats,
    deadline: float,
    pause: tuple[float, float] | None,
    rng: random.Random,
):
    done = stats.done[user_id]
    if pause:
        await asyncio.sleep(rng.uniform(0, pause[1]))  # spread the start over one pause
    while time.perf_counter() < deadline:
        try:
            t0 = time.perf_counter()
            status, body = await conn.request("GET", f"/api/v1/projects/{project_id}/next?kind=demonstration")
            stats.next_ms.append((time.perf_counter() - t0) * 1000)
            if status == 204:
                stats.empty += 1
                return
            if status != 200:
                stats.errors[f"next {status}"] += 1
                await asyncio.sleep(0.05)
                continue
            task_id = json.loads(body)["task_id"]
            if task_id in done:
                stats.repeats += 1
            stats.handed[task_id].add(user_id)
            payload = json.dumps(
                {"kind": "demonstration", "text": f"Answer by {user_id} to {task_id}.", "time_spent_ms": 1000}
            ).encode()
            t0 = time.perf_counter()
            status, body = await conn.request(
                "POST", f"/api/v1/tasks/{task_id}/submission", payload, f"Idempotency-Key: {user_id}-{task_id}\r\n"
            )
            stats.submit_ms.append((time.perf_counter() - t0) * 1000)
            if status in (200, 201):
                stats.acked.append((task_id, user_id))
                done.add(task_id)
            else:
                stats.errors[f"submit {status}"] += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            stats.errors[type(exc).__name__] += 1
            conn.writer = None
            await asyncio.sleep(0.05)
        if pause:  # think time, but never past the end of the run
            await asyncio.sleep(max(0.0, min(rng.uniform(*pause), deadline - time.perf_counter())))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# -- setup ------------------------------------------------------------------------------------


def fresh_database(db: str, pg_url: str, workdir: Path) -> str:
    if db == "sqlite":
        path = workdir / "bench.db"
        path.unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        url = pg_url
        name = make_url(url).database
        admin = make_engine(
            make_url(url).set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    upgrade(url)
    return url


def seed(url: str, n_users: int, n_tasks: int, overlap: int) -> tuple[int, list[tuple[int, str]]]:
    """A project with n_tasks demonstration tasks and n_users labelers with API tokens."""
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        project = Project(name="bench", overlap=overlap)
        s.add(project)
        s.flush()
        s.add(GuidelineVersion(project_id=project.id, version=1, body_md="Be helpful."))
        texts = [f"Bench prompt {i}: explain something." for i in range(n_tasks)]
        s.execute(
            insert(Prompt),
            [
                {
                    "project_id": project.id,
                    "text": t,
                    "content_hash": hashlib.sha256(t.encode()).hexdigest(),
                    "split": "train",
                    "source": "bench",
                    "meta": {},
                }
                for t in texts
            ],
        )
        prompt_ids = s.scalars(select(Prompt.id).where(Prompt.project_id == project.id).order_by(Prompt.id)).all()
        s.execute(
            insert(Task),
            [
                {
                    "project_id": project.id,
                    "prompt_id": pid,
                    "kind": TaskKind.demonstration,
                    "required": overlap,
                    "status": "open",
                    "done_count": 0,
                    "priority": 0,
                }
                for pid in prompt_ids
            ],
        )
        users = []
        for i in range(n_users):
            user = accounts.create_user(s, f"bench{i}@example.com", None, role=Role.labeler)
            users.append((user.id, accounts.create_api_token(s, user, "bench")))
        project_id = project.id
    with engine.connect() as conn:  # planner statistics, as autovacuum would gather after a bulk import
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()
    return project_id, users


def check(url: str, stats: Stats) -> dict:
    engine = make_engine(url)
    with engine.connect() as conn:
        stored = {tuple(r) for r in conn.execute(select(Demonstration.task_id, Demonstration.user_id))}
        over = conn.execute(
            text(
                "SELECT count(*) FROM tasks t WHERE (SELECT count(*) FROM demonstrations d WHERE d.task_id = t.id)"
                " > t.required"
            )
        ).scalar()
        mismatched = conn.execute(
            text(
                "SELECT count(*) FROM tasks t WHERE (SELECT count(*) FROM demonstrations d WHERE d.task_id = t.id)"
                " <> t.done_count"
            )
        ).scalar()
        required = dict(conn.execute(select(Task.id, Task.required)).all())
    engine.dispose()
    handed_over = sum(1 for tid, users in stats.handed.items() if len(users) > required[tid])
    return {
        "double": handed_over + stats.repeats + over,
        "lost": len(set(stats.acked) - stored) + mismatched,
        "stored": len(stored),
    }


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and its children (the uvicorn workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root_pid or int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, workdir: Path, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": "bench",
        "INSTRUCTLOOP_DATA_DIR": str(workdir / "data"),
        "INSTRUCTLOOP_INTAKE_RATE": "1e9",  # measure the intake, not its rate limit
        "INSTRUCTLOOP_INTAKE_BURST": "1000000",
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_served_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("uvicorn did not start")


async def drive(port: int, users, project_id: int, seconds: float, pause, stats: Stats) -> float:
    rng = random.Random(0)
    conns = [Conn("127.0.0.1", port, token) for _, token in users]
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(
        *(labeler(c, uid, project_id, stats, deadline, pause, rng) for c, (uid, _) in zip(conns, users))
    )
    elapsed = time.perf_counter() - t0
    for c in conns:
        if c.writer is not None:
            c.writer.close()
    return elapsed


def run_one(db: str, args, n: int, seconds: float, pause, workdir: Path) -> dict:
    url = fresh_database(db, args.pg_url, workdir)
    n_tasks = args.tasks if pause is None else max(args.tasks, n * 4)
    project_id, users = seed(url, n, n_tasks, args.overlap)
    proc, port = start_server(url, workdir, args.workers)
    try:
        warm = Stats()
        asyncio.run(drive(port, users[: min(n, 5)], project_id, 0.5, None, warm))  # warm up imports and pools
        stats = Stats(handed=warm.handed, done=warm.done)  # the checks cover both; the figures only this run
        cpu0 = cpu_seconds(proc.pid)
        elapsed = asyncio.run(drive(port, users, project_id, seconds, pause, stats))
        server_cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    checks = check(url, stats)
    n_req = len(stats.next_ms) + len(stats.submit_ms)
    return {
        "db": db,
        "load": f"{'realistic' if pause else 'saturation'} N={n}",
        "seconds": round(elapsed, 1),
        "submissions": len(stats.acked),
        "subs_per_s": len(stats.acked) / elapsed,
        "req_per_s": n_req / elapsed,
        "next_p50": pct(stats.next_ms, 50),
        "next_p95": pct(stats.next_ms, 95),
        "next_p99": pct(stats.next_ms, 99),
        "sub_p50": pct(stats.submit_ms, 50),
        "sub_p95": pct(stats.submit_ms, 95),
        "sub_p99": pct(stats.submit_ms, 99),
        "double": checks["double"],
        "lost": checks["lost"],
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "queue_empty": stats.empty,
        "server_cpu_ms_per_req": 1000 * server_cpu / max(1, n_req),
        "loadavg": os.getloadavg()[0],
    }


# -- the intake scenario -------------------------------------------------------------------------


@dataclass
class IntakeStats:
    ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    created: list[int] = field(default_factory=list)  # prompt ids the server acknowledged
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


async def app_client(
    conn: Conn, n: int, project_id: int, stats: IntakeStats, deadline: float, rng: random.Random, batch: int
):
    sent: list[str] = []
    i = 0

    def one() -> dict:
        nonlocal i
        i += 1
        if sent and rng.random() < 0.05:
            text_ = rng.choice(sent)  # a repeat: answered "duplicate"
        else:
            text_ = f"App {n} prompt {i}: {rng.choice(TOPICS)} about {rng.randrange(10**9)}, please."
            if rng.random() < 0.05:
                text_ += f" Reply to user{rng.randrange(10**6)}@example.com."
            sent.append(text_)
        return {"text": text_, "end_user": f"user-{rng.randrange(100_000)}"}

    while time.perf_counter() < deadline:
        body = json.dumps(one() if batch == 1 else {"prompts": [one() for _ in range(batch)]}).encode()
        try:
            t0 = time.perf_counter()
            status, data = await conn.request("POST", f"/api/v1/projects/{project_id}/intake", body)
            stats.ms.append((time.perf_counter() - t0) * 1000)
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            stats.errors[type(exc).__name__] += 1
            conn.writer = None
            await asyncio.sleep(0.05)
            continue
        if status in (200, 201):
            out = json.loads(data)
            for o in out["results"] if batch > 1 else [out]:
                stats.outcomes[o["status"]] += 1
                if o["status"] == "created":
                    stats.created.append(o["prompt_id"])
        else:
            stats.errors[f"intake {status}"] += 1


TOPICS = ["Write a poem", "Summarize the news", "Explain a proof", "Brainstorm names", "Rewrite an email"]


def seed_intake(url: str, n_apps: int) -> tuple[int, list[str]]:
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        project = Project(name="intake bench")
        s.add(project)
        s.flush()
        s.add(GuidelineVersion(project_id=project.id, version=1, body_md="Be helpful."))
        tokens = [intake.create_app_token(s, project.id, name=f"app {i}")[1] for i in range(n_apps)]
        project_id = project.id
    engine.dispose()
    return project_id, tokens


def run_intake(db: str, args, n: int, workdir: Path) -> dict:
    url = fresh_database(db, args.pg_url, workdir)
    project_id, tokens = seed_intake(url, n)
    proc, port = start_server(url, workdir, args.workers)
    try:

        async def drive_apps(seconds: float, stats: IntakeStats, count: int) -> float:
            rng = random.Random(count)
            conns = [Conn("127.0.0.1", port, t) for t in tokens[:count]]
            for c in conns:  # as apps that start apart do; see "connections" in bench/README.md
                await c.connect()
                await asyncio.sleep(args.connect_gap)
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    app_client(c, i, project_id, stats, t0 + seconds, rng, args.intake_batch)
                    for i, c in enumerate(conns)
                )
            )
            for c in conns:
                if c.writer is not None:
                    c.writer.close()
            return time.perf_counter() - t0

        asyncio.run(drive_apps(0.5, IntakeStats(), min(n, 5)))  # warm up imports and pools
        stats = IntakeStats()
        cpu0 = cpu_seconds(proc.pid)
        elapsed = asyncio.run(drive_apps(args.seconds, stats, n))
        server_cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    engine = make_engine(url)
    with engine.connect() as conn:
        stored = set(conn.execute(select(Prompt.id).where(Prompt.project_id == project_id)).scalars())
    engine.dispose()
    return {
        "db": db,
        "load": f"intake N={n}" + (f" batch={args.intake_batch}" if args.intake_batch > 1 else ""),
        "seconds": round(elapsed, 1),
        "prompts": len(stats.created),
        "prompts_per_s": len(stats.created) / elapsed,
        "req_per_s": len(stats.ms) / elapsed,
        "p50": pct(stats.ms, 50),
        "p95": pct(stats.ms, 95),
        "p99": pct(stats.ms, 99),
        "outcomes": dict(stats.outcomes),
        "lost": len(set(stats.created) - stored),
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "server_cpu_ms_per_req": 1000 * server_cpu / max(1, len(stats.ms)),
        "loadavg": os.getloadavg()[0],
    }


INTAKE_HEADER = (
    "| DB | load | s | prompts created | prompts/s | req/s | intake p50/p95/p99 ms | outcomes | lost | errors "
    "| server CPU ms/req | load avg |"
)


def intake_row(r: dict) -> str:
    return (
        f"| {r['db']} | {r['load']} | {r['seconds']} | {r['prompts']} | {r['prompts_per_s']:.0f} | {r['req_per_s']:.0f} "
        f"| {r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f} | {r['outcomes']} | {r['lost']} "
        f"| {r['errors']}{' ' + str(r['error_kinds']) if r['errors'] else ''} | {r['server_cpu_ms_per_req']:.2f} "
        f"| {r['loadavg']:.1f} |"
    )


HEADER = (
    "| DB | load | s | subs | subs/s | req/s | next p50/p95/p99 ms | submit p50/p95/p99 ms "
    "| double | lost | errors | server CPU ms/req | load avg |"
)


def row(r: dict) -> str:
    return (
        f"| {r['db']} | {r['load']} | {r['seconds']} | {r['submissions']} | {r['subs_per_s']:.1f} "
        f"| {r['req_per_s']:.0f} | {r['next_p50']:.1f} / {r['next_p95']:.1f} / {r['next_p99']:.1f} "
        f"| {r['sub_p50']:.1f} / {r['sub_p95']:.1f} / {r['sub_p99']:.1f} | {r['double']} | {r['lost']} "
        f"| {r['errors']}{' ' + str(r['error_kinds']) if r['errors'] else ''} | {r['server_cpu_ms_per_req']:.2f} | {r['loadavg']:.1f} |"
    )


def main() -> None:
    # SIGTERM (timeout, kill) unwinds like Ctrl+C, so the uvicorn server started here is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/il_bench"),
    )
    p.add_argument("--loads", default="1,10,50", help="saturation labeler counts")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each saturation run")
    p.add_argument("--realistic", type=int, default=500, help="labelers in the realistic run (0: skip it)")
    p.add_argument("--realistic-seconds", type=float, default=30.0)
    p.add_argument("--pause", default="5,15", help="realistic pause between tasks, min,max seconds")
    p.add_argument("--tasks", type=int, default=8000, help="tasks in the queue")
    p.add_argument("--overlap", type=int, default=2, help="labelers per task")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--scenarios", default="labeling,intake", help="labeling, intake or both (comma-separated)")
    p.add_argument("--intake-loads", default="10,50", help="intake: concurrent app clients")
    p.add_argument("--intake-batch", type=int, default=1, help="intake: prompts per request (the batch form)")
    p.add_argument(
        "--connect-gap",
        type=float,
        default=0.02,
        help="intake: seconds between opening the apps' connections (0: all at once, one server process "
        "accepts them all)",
    )
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    pause = tuple(float(x) for x in args.pause.split(","))
    dbs = ["postgres", "sqlite"] if args.db == "both" else [args.db]
    scenarios = {s.strip() for s in args.scenarios.split(",")}
    results = []
    print(f"cpus={os.cpu_count()} workers={args.workers} overlap={args.overlap} tasks={args.tasks}", flush=True)
    with tempfile.TemporaryDirectory(prefix="il-web-load-") as tmp:
        if "labeling" in scenarios:
            print(HEADER, flush=True)
            for db in dbs:
                runs = [(int(n), args.seconds, None) for n in args.loads.split(",") if n]
                if args.realistic:
                    runs.append((args.realistic, args.realistic_seconds, pause))
                for n, seconds, pz in runs:
                    r = run_one(db, args, n, seconds, pz, Path(tmp))
                    results.append(r)
                    print(row(r), flush=True)
        if "intake" in scenarios:
            print(INTAKE_HEADER, flush=True)
            for db in dbs:
                for n in (int(x) for x in args.intake_loads.split(",") if x):
                    r = run_intake(db, args, n, Path(tmp))
                    results.append(r)
                    print(intake_row(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
