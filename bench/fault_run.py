"""The fault run: acknowledged writes survive a killed web process, a Postgres restart and a SIGTERM.

    .venv/bin/python bench/fault_run.py                         # SQLite file, then Postgres
    .venv/bin/python bench/fault_run.py --db sqlite --writes 100
    .venv/bin/python bench/fault_run.py --db postgres --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/il_fault

Per database: a fresh one (a SQLite file in a temporary folder; the Postgres database in --pg-url is
dropped and recreated: use a scratch one) with a project of demonstration and ranking tasks, then
`instructloop serve --workers 2` (the app only, no worker) on 127.0.0.1, and bounded writers over
HTTP that record every write the server acknowledged:
- labelers (their own API tokens) take the next task and submit a demonstration or a ranking, with
  an Idempotency-Key, retrying the same request while the server is away;
- a reviewer (an admin's API token) accepts or rejects pending demonstrations, sending the revision
  it read;
- an application sends prompts to the intake API (its app token), each with its own end user.
While they write, the faults come one after another: kill -9 of one uvicorn worker process (its
supervisor starts another), kill -9 of the whole server (then started again), a restart of
Postgres (`pg_ctlcluster --skip-systemctl-redirect <version> main restart`; Postgres pass only)
and a SIGTERM of the server (then started again). Then the database is read back:
- lost: an acknowledged write that is not stored (a demonstration or ranking of that task by that
  labeler, the decision on that submission, the intake prompt under the id the answer gave), plus
  tasks whose done_count disagrees with their stored submissions;
- duplicated: a write stored more than once (two submissions of one task by one labeler, two
  prompts of one intake text).
Every loop is bounded in count (--writes per writer) and in time (--seconds per phase, a retry
budget per request); all traffic goes to 127.0.0.1. Printed: one table row per database.
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import web_load  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.models import Demonstration, Prompt, Ranking, Role, Task, TaskKind  # noqa: E402
from app.services import accounts, intake, tasks  # noqa: E402
from tests.labeling import make_outputs, make_project, make_prompts  # noqa: E402

HOST = "127.0.0.1"
RETRY_PAUSE = 0.25
PG_RESTART = "pg_ctlcluster --skip-systemctl-redirect {version} main restart"
TOKEN = re.compile(r"\[(fr-[a-z]+-\d+-\d+)\]")


@dataclass
class Seeded:
    project_id: int
    labelers: list[tuple[int, str]]  # (user id, API token)
    admin_token: str
    app_token: str


def seed(url: str, n_labelers: int, n_demo: int, n_rank: int) -> Seeded:
    """A project (2 labelers per task) of n_demo demonstration tasks and n_rank ranking tasks of 4 outputs."""
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        project = make_project(s, "Fault run", overlap=2)
        prompts = make_prompts(s, project, [f"Fault-run prompt {i}: explain a thing." for i in range(n_demo)])
        tasks.create_demonstration_tasks(s, project, prompts)
        ranked = make_prompts(s, project, [f"Fault-run ranking prompt {i}: rank these." for i in range(n_rank)])
        for prompt in ranked:
            outputs = make_outputs(s, prompt, [f"Answer {c} to prompt {prompt.id}" for c in "ABCD"])
            tasks.create_ranking_task(s, project, prompt, [o.id for o in outputs])
        labelers = []
        for i in range(n_labelers):
            user = accounts.create_user(s, f"fault{i}@example.com", None, role=Role.labeler)
            labelers.append((user.id, accounts.create_api_token(s, user, "fault run")))
        admin = accounts.create_user(s, "fault-admin@example.com", None, role=Role.admin)
        admin_token = accounts.create_api_token(s, admin, "fault run")
        _, app_token = intake.create_app_token(s, project.id, name="fault run", create_tasks=True)
        seeded = Seeded(project.id, labelers, admin_token, app_token)
    engine.dispose()
    return seeded


# -- the server ---------------------------------------------------------------------------------


class Server:
    """`instructloop serve` in its own process group (so that kill -9 of the server takes its workers too)."""

    def __init__(self, url: str, workdir: Path, port: int, workers: int):
        self.port, self.workers, self.log = port, workers, workdir / "server.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "SECRET_KEY": "fault-run",
            "INSTRUCTLOOP_DATA_DIR": str(workdir / "data"),
            "INSTRUCTLOOP_ADMIN_PASSWORD": "fault run admin password 1",
            "INSTRUCTLOOP_INTAKE_RATE": "1e9",  # the writers are bounded; the rate limit is not under test
            "INSTRUCTLOOP_INTAKE_BURST": "1000000",
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 120) -> None:
        command = [sys.executable, "-m", "instructloop", "serve", "--host", HOST, "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--no-migrate"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{HOST}:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {self.log}")
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer in {timeout:.0f} s: see {self.log}")

    def workers_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the server started by multiprocessing)."""
        assert self.proc is not None
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == self.proc.pid and b"spawn_main" in cmdline:
                found.append(int(entry))
        return sorted(found)

    def kill_group(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the server (as systemd or docker stop sends it); waits for it to exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            return -9


# -- the writers --------------------------------------------------------------------------------


@dataclass
class Ledger:
    demonstrations: dict[tuple[int, int], int] = field(default_factory=dict)  # (task, labeler) -> submission id
    rankings: dict[tuple[int, int], int] = field(default_factory=dict)
    decisions: dict[int, str] = field(default_factory=dict)  # demonstration id -> the decision acknowledged
    prompts: dict[str, int] = field(default_factory=dict)  # intake token -> the prompt id acknowledged
    sent_prompts: set[str] = field(default_factory=set)
    unacknowledged: Counter = field(default_factory=Counter)  # writes given up (retry budget spent)
    answers: Counter = field(default_factory=Counter)  # non-2xx answers and transport errors seen
    faults: list[str] = field(default_factory=list)

    def acknowledged(self) -> int:
        return len(self.demonstrations) + len(self.rankings) + len(self.decisions) + len(self.prompts)


async def send(
    client: httpx.AsyncClient, ledger: Ledger, method: str, path: str, budget: float, **kwargs
) -> httpx.Response | None:
    """The request, sent again (the same request: same body, same Idempotency-Key) while the server
    is away (a transport error or a 5xx), for at most `budget` seconds; None when it never answered."""
    deadline = time.monotonic() + budget
    while True:
        try:
            r = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            ledger.answers[type(exc).__name__] += 1
        else:
            if r.status_code < 500:
                return r
            ledger.answers[f"{method} {r.status_code}"] += 1
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(RETRY_PAUSE)


def client_for(port: int, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        limits=httpx.Limits(max_connections=1),
    )


async def labeler(port: int, user_id: int, token: str, kind: str, s: Seeded, ledger: Ledger, args, stop: dict):
    ledger_of = ledger.demonstrations if kind == "demonstration" else ledger.rankings
    async with client_for(port, token) as client:
        for _ in range(args.writes):
            if time.monotonic() >= stop["at"]:
                return
            r = await send(client, ledger, "GET", f"/api/v1/projects/{s.project_id}/next?kind={kind}", args.budget)
            if r is None or r.status_code == 204:
                if r is not None:
                    return  # nothing left of this kind
                continue
            if r.status_code != 200:
                ledger.answers[f"next {r.status_code}"] += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            task = r.json()
            if kind == "demonstration":
                body = {"kind": kind, "text": f"Answer by {user_id} to task {task['task_id']}.", "time_spent_ms": 900}
            else:
                ids = [o["id"] for o in task["outputs"]]
                random.Random(task["task_id"] * 7 + user_id).shuffle(ids)
                body = {
                    "kind": kind,
                    "order": [[i] for i in ids],
                    "ratings": {str(i): {"likert": 7 - n, "flags": []} for n, i in enumerate(ids)},
                    "time_spent_ms": 1500,
                }
            key = f"fault-{user_id}-{task['task_id']}"
            path = f"/api/v1/tasks/{task['task_id']}/submission"
            r = await send(client, ledger, "POST", path, args.budget, json=body, headers={"Idempotency-Key": key})
            if r is not None and r.status_code in (200, 201):
                ledger_of[(task["task_id"], user_id)] = r.json()["id"]
            else:
                ledger.unacknowledged[kind] += 1
                if r is not None:
                    ledger.answers[f"submit {r.status_code}"] += 1


async def reviewer(port: int, s: Seeded, ledger: Ledger, args, stop: dict, rng: random.Random):
    async with client_for(port, s.admin_token) as client:
        decided = 0
        while decided < args.writes and time.monotonic() < stop["at"]:
            path = f"/api/v1/projects/{s.project_id}/review?kind=demonstration&status=pending"
            r = await send(client, ledger, "GET", path, args.budget)
            items = r.json()["items"] if r is not None and r.status_code == 200 else []
            if not items:
                await asyncio.sleep(0.5)
                continue
            for item in items[:10]:
                decision = "rejected" if rng.random() < 0.2 else "accepted"
                body = {
                    "kind": "demonstration",
                    "submission_id": item["submission_id"],
                    "decision": decision,
                    "reason": "Off the guidelines." if decision == "rejected" else "",
                    "revision": item["revision"],
                }
                r = await send(client, ledger, "POST", "/api/v1/reviews", args.budget, json=body)
                decided += 1
                if r is not None and r.status_code == 200:
                    ledger.decisions[item["submission_id"]] = decision
                else:
                    ledger.unacknowledged["decision"] += 1
                    if r is not None:
                        ledger.answers[f"review {r.status_code}"] += 1


async def application(port: int, db: str, writer: int, s: Seeded, ledger: Ledger, args, stop: dict):
    async with client_for(port, s.app_token) as client:
        for i in range(args.writes):
            if time.monotonic() >= stop["at"]:
                return
            token = f"fr-{db}-{writer}-{i}"
            ledger.sent_prompts.add(token)
            body = {"text": f"[{token}] How should I plan a week of meals?", "end_user": f"eu-{token}"}
            path = f"/api/v1/projects/{s.project_id}/intake"
            r = await send(client, ledger, "POST", path, args.budget, json=body)
            if r is not None and r.status_code in (200, 201) and r.json()["status"] in ("created", "duplicate"):
                ledger.prompts[token] = r.json()["prompt_id"]
            else:
                ledger.unacknowledged["intake"] += 1
                if r is not None:
                    ledger.answers[f"intake {r.status_code}"] += 1


async def faults(server: Server, db: str, ledger: Ledger, args) -> None:
    """The faults one after another, --seconds of writing between them."""

    def note(what: str) -> None:
        what = f"{what} ({ledger.acknowledged()} writes acknowledged so far)"
        ledger.faults.append(what)
        print(f"  {time.strftime('%H:%M:%S')} {db}: {what}", flush=True)

    await asyncio.sleep(args.seconds)
    pids = server.workers_pids()
    if pids:
        os.kill(pids[0], signal.SIGKILL)
        note(f"kill -9 of uvicorn worker {pids[0]} (of {len(pids)})")
    else:
        note("no uvicorn worker process found to kill")
    await asyncio.sleep(args.seconds)
    await asyncio.to_thread(server.kill_group)
    note("kill -9 of the whole server")
    await asyncio.to_thread(server.start)
    note("server started again")
    await asyncio.sleep(args.seconds)
    if db == "postgres":
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        done = await asyncio.to_thread(
            subprocess.run, PG_RESTART.format(version=version).split(), capture_output=True, text=True, timeout=120
        )
        note(f"Postgres restarted (exit {done.returncode})")
        await asyncio.sleep(args.seconds)
    code = await asyncio.to_thread(server.terminate)
    note(f"SIGTERM: the server exited with {code}")
    await asyncio.to_thread(server.start)
    note("server started again")
    await asyncio.sleep(args.seconds)


async def drive(port: int, db: str, server: Server, s: Seeded, args) -> Ledger:
    ledger = Ledger()
    rng = random.Random(0)
    stop = {"at": time.monotonic() + args.seconds * 6 + 600}  # a hard cap; the last stretch is set below
    writers = [
        asyncio.create_task(
            labeler(port, uid, token, "demonstration" if n % 2 == 0 else "ranking", s, ledger, args, stop)
        )
        for n, (uid, token) in enumerate(s.labelers)
    ]
    writers.append(asyncio.create_task(reviewer(port, s, ledger, args, stop, rng)))
    writers += [asyncio.create_task(application(port, db, n, s, ledger, args, stop)) for n in range(args.apps)]
    await faults(server, db, ledger, args)  # the writers write meanwhile
    stop["at"] = min(stop["at"], time.monotonic() + args.seconds)  # a last stretch without faults
    await asyncio.gather(*writers)
    return ledger


# -- the check ----------------------------------------------------------------------------------


def check(url: str, ledger: Ledger) -> dict:
    engine = make_engine(url)
    with engine.connect() as conn:
        demos = Counter((t, u) for t, u in conn.execute(select(Demonstration.task_id, Demonstration.user_id)))
        ranks = Counter((t, u) for t, u in conn.execute(select(Ranking.task_id, Ranking.user_id)))
        reviews = {sid: review for sid, review in conn.execute(select(Demonstration.id, Demonstration.review))}
        intake_rows = conn.execute(select(Prompt.id, Prompt.text).where(Prompt.source == "intake")).all()
        stored_demos = {
            tid: n
            for tid, n in conn.execute(select(Demonstration.task_id, func.count()).group_by(Demonstration.task_id))
        }
        stored_ranks = {
            tid: n for tid, n in conn.execute(select(Ranking.task_id, func.count()).group_by(Ranking.task_id))
        }
        task_rows = conn.execute(select(Task.id, Task.kind, Task.done_count)).all()
    engine.dispose()
    prompt_ids: dict[str, list[int]] = {}
    for pid, text in intake_rows:
        if (m := TOKEN.search(text)) is not None:
            prompt_ids.setdefault(m.group(1), []).append(pid)
    lost = {
        "demonstration": sum(1 for key in ledger.demonstrations if demos[key] == 0),
        "ranking": sum(1 for key in ledger.rankings if ranks[key] == 0),
        "decision": sum(1 for sid, d in ledger.decisions.items() if str(reviews.get(sid, "")) != d),
        "intake": sum(1 for token, pid in ledger.prompts.items() if pid not in prompt_ids.get(token, [])),
        "done_count": sum(
            1
            for tid, kind, done in task_rows
            if done != (stored_demos if kind == TaskKind.demonstration else stored_ranks).get(tid, 0)
        ),
    }
    duplicated = {
        "demonstration": sum(n - 1 for n in demos.values() if n > 1),
        "ranking": sum(n - 1 for n in ranks.values() if n > 1),
        "intake": sum(len(ids) - 1 for ids in prompt_ids.values() if len(ids) > 1),
    }
    return {"lost": lost, "duplicated": duplicated}


def run_one(db: str, args, workdir: Path) -> dict:
    url = web_load.fresh_database(db, args.pg_url, workdir)
    s = seed(url, args.labelers, args.demo_tasks, args.ranking_tasks)
    server = Server(url, workdir, web_load.free_port(), args.workers)
    server.start()
    print(f"{db}: serving on {HOST}:{server.port}; writing", flush=True)
    try:
        ledger = asyncio.run(drive(server.port, db, server, s, args))
    finally:
        server.terminate()
    found = check(url, ledger)
    log = server.log.read_text(errors="replace")
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        (args.logs / f"{db}-server.log").write_text(log)
    return {
        "db": db,
        "acknowledged": ledger.acknowledged(),
        "by_kind": {
            "demonstrations": len(ledger.demonstrations),
            "rankings": len(ledger.rankings),
            "decisions": len(ledger.decisions),
            "intake prompts": len(ledger.prompts),
        },
        "lost": sum(found["lost"].values()),
        "duplicated": sum(found["duplicated"].values()),
        "detail": found,
        "unacknowledged": dict(ledger.unacknowledged),
        "answers": dict(ledger.answers),
        "faults": ledger.faults,
        "server_starts": server.starts,
        "server_tracebacks": log.count("Traceback (most recent call last)"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("FAULT_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/il_fault"),
        help="scratch Postgres database (dropped and recreated)",
    )
    parser.add_argument("--labelers", type=int, default=6, help="half write demonstrations, half rankings")
    parser.add_argument("--apps", type=int, default=2, help="intake writers")
    parser.add_argument("--writes", type=int, default=1500, help="writes per writer at most")
    parser.add_argument("--seconds", type=float, default=8.0, help="writing between two faults")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds one request is retried at most")
    parser.add_argument("--demo-tasks", type=int, default=2500)
    parser.add_argument("--ranking-tasks", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--logs", type=Path, help="keep each server log here (<db>-server.log)")
    args = parser.parse_args()
    results = []
    for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        with tempfile.TemporaryDirectory(prefix=f"il-fault-{db}-") as tmp:
            results.append(run_one(db, args, Path(tmp)))
        print(json.dumps(results[-1], indent=1), flush=True)
    print("\n| DB | acknowledged writes | demonstrations | rankings | decisions | intake prompts | lost | duplicated |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        k = r["by_kind"]
        print(
            f"| {r['db']} | {r['acknowledged']} | {k['demonstrations']} | {k['rankings']} | {k['decisions']} "
            f"| {k['intake prompts']} | {r['lost']} | {r['duplicated']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    sys.exit(1 if any(r["lost"] or r["duplicated"] for r in results) else 0)


if __name__ == "__main__":
    main()
