"""Review decisions under load, side by side with plain submissions, over HTTP on loopback against a
real uvicorn server (bench/web_load.py's server, client and seed), on Postgres and on SQLite.

    .venv/bin/python bench/review_load.py [--db both|postgres|sqlite] [--reviewers 10] [--seconds 10] [--via api|form]

Per database, on one server:
1. plain submit: --reviewers labelers ask for the next demonstration task and submit it, without a
   pause, for --seconds (web_load's saturation run);
2. review: as many admins (their own API tokens and keep-alive connections) accept or reject
   (with a reason) the demonstrations just submitted, each working through its own share, without
   a pause, for --seconds: POST /api/v1/reviews; with --via form, the review page's own form instead
   (POST /admin/review/demonstration/{id} as htmx sends it, signed in with a cookie and the CSRF token).
Printed: requests/s and p50/p95/p99 latency of each, errors, and a check read back from the database:
every acknowledged decision is stored (a lost decision is one the server acknowledged that is not
there). Goal: a decision stored in under 50 ms p95 at 10 reviewers.
"""

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import web_load  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.models import Demonstration, ReviewStatus, Role  # noqa: E402
from app.services import accounts  # noqa: E402

PASSWORD = "bench-reviewer-password-7d1f"


def admins(url: str, n: int) -> list[str]:
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        tokens = []
        for i in range(n):
            user = accounts.create_user(s, f"reviewer{i}@example.com", PASSWORD, role=Role.admin)
            tokens.append(accounts.create_api_token(s, user, "bench"))
    engine.dispose()
    return tokens


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def signed_in_browser(port: int, email: str) -> tuple[httpx.AsyncClient, str]:
    """A keep-alive client signed in through the login form, and its CSRF token. The session cookie is
    carried by hand: it is marked Secure, which a cookie jar would not send over plain http."""
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
    cookie = ""

    def keep(response: httpx.Response) -> None:
        nonlocal cookie
        for header in response.headers.get_list("set-cookie"):
            cookie = header.split(";", 1)[0]

    page = await client.get("/login")
    keep(page)
    token = CSRF.search(page.text).group(1)
    r = await client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": token},
        headers={"Cookie": cookie},
    )
    keep(r)
    page = await client.get("/admin", headers={"Cookie": cookie})
    client.headers["Cookie"] = cookie
    return client, CSRF.search(page.text).group(1)


async def form_reviewer(
    client: httpx.AsyncClient, csrf: str, ids: list[int], deadline: float, latencies: list, acked: dict, errors: dict
):
    rng = random.Random(len(ids))
    for sub_id in ids:
        if time.perf_counter() >= deadline:
            return
        decision = "rejected" if rng.random() < 0.2 else "accepted"
        data = {
            "decision": decision,
            "reason": "Off the guidelines." if decision == "rejected" else "",
            "csrf_token": csrf,
            "revision": "1",  # the revision the reviewer saw (the page requires it); these are never revised
        }
        t0 = time.perf_counter()
        try:
            r = await client.post(f"/admin/review/demonstration/{sub_id}", data=data, headers={"HX-Request": "true"})
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
        if r.status_code == 200 and "flash-error" not in r.text:
            acked[sub_id] = decision
        else:
            errors[f"review {r.status_code}"] = errors.get(f"review {r.status_code}", 0) + 1


async def form_review_phase(port: int, n: int, ids: list[int], seconds: float):
    browsers = [await signed_in_browser(port, f"reviewer{i}@example.com") for i in range(n)]
    shares = [ids[i::n] for i in range(n)]
    latencies: list[float] = []
    acked: dict[int, str] = {}
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(
        *(
            form_reviewer(c, csrf, share, t0 + seconds, latencies, acked, errors)
            for (c, csrf), share in zip(browsers, shares, strict=True)
        )
    )
    elapsed = time.perf_counter() - t0
    for c, _ in browsers:
        await c.aclose()
    return elapsed, latencies, acked, errors


def demonstration_ids(url: str) -> list[int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        ids = list(conn.scalars(select(Demonstration.id).order_by(Demonstration.id)))
    engine.dispose()
    return ids


async def reviewer(conn, ids: list[int], deadline: float, latencies: list[float], acked: dict, errors: dict):
    rng = random.Random(len(ids))
    for sub_id in ids:
        if time.perf_counter() >= deadline:
            return
        decision = "rejected" if rng.random() < 0.2 else "accepted"
        body = json.dumps(
            {
                "kind": "demonstration",
                "submission_id": sub_id,
                "decision": decision,
                "reason": "Off the guidelines." if decision == "rejected" else "",
            }
        ).encode()
        t0 = time.perf_counter()
        try:
            status, _ = await conn.request("POST", "/api/v1/reviews", body)
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.writer = None
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
        if status == 200:
            acked[sub_id] = decision
        else:
            errors[f"review {status}"] = errors.get(f"review {status}", 0) + 1


async def review_phase(port: int, tokens: list[str], ids: list[int], seconds: float):
    conns = [web_load.Conn("127.0.0.1", port, t) for t in tokens]
    shares = [ids[i :: len(tokens)] for i in range(len(tokens))]
    latencies: list[float] = []
    acked: dict[int, str] = {}
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(
        *(reviewer(c, share, t0 + seconds, latencies, acked, errors) for c, share in zip(conns, shares, strict=True))
    )
    elapsed = time.perf_counter() - t0
    for c in conns:
        if c.writer is not None:
            c.writer.close()
    return elapsed, latencies, acked, errors


def lost_decisions(url: str, acked: dict[int, str]) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(select(Demonstration.id, Demonstration.review).where(Demonstration.id.in_(list(acked)))).all()
        )
        reviewed = conn.scalar(select(func.count()).where(Demonstration.review != ReviewStatus.pending))
    engine.dispose()
    lost = sum(1 for sub_id, decision in acked.items() if str(stored.get(sub_id)) != decision)
    return lost + max(0, len(acked) - int(reviewed or 0))


def run(db: str, args, workdir: Path) -> list[dict]:
    url = web_load.fresh_database(db, args.pg_url, workdir)
    project_id, users = web_load.seed(url, args.reviewers, args.tasks, 1)
    tokens = admins(url, args.reviewers)
    proc, port = web_load.start_server(url, workdir, args.workers)
    try:
        warm = web_load.Stats()
        asyncio.run(web_load.drive(port, users[:2], project_id, 0.5, None, warm))
        submits = web_load.Stats(handed=warm.handed, done=warm.done)
        elapsed = asyncio.run(web_load.drive(port, users, project_id, args.seconds, None, submits))
        ids = demonstration_ids(url)
        if args.via == "form":
            r_elapsed, latencies, acked, errors = asyncio.run(
                form_review_phase(port, args.reviewers, ids, args.seconds)
            )
        else:
            r_elapsed, latencies, acked, errors = asyncio.run(review_phase(port, tokens, ids, args.seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    pct = web_load.pct
    return [
        {
            "db": db,
            "what": f"submit (N={args.reviewers} labelers)",
            "per_s": len(submits.acked) / elapsed,
            "p50": pct(submits.submit_ms, 50),
            "p95": pct(submits.submit_ms, 95),
            "p99": pct(submits.submit_ms, 99),
            "errors": sum(submits.errors.values()),
            "lost": web_load.check(url, submits)["lost"],
        },
        {
            "db": db,
            "what": f"review decision by {args.via} (N={args.reviewers} reviewers, {len(ids)} demonstrations)",
            "per_s": len(acked) / r_elapsed,
            "p50": pct(latencies, 50),
            "p95": pct(latencies, 95),
            "p99": pct(latencies, 99),
            "errors": sum(errors.values()),
            "lost": lost_decisions(url, acked),
        },
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/il_bench"),
    )
    p.add_argument("--reviewers", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tasks", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--via", choices=["api", "form"], default="api", help="the API, or the review page's form")
    args = p.parse_args()
    print(f"cpus={os.cpu_count()} workers={args.workers}", flush=True)
    print("| DB | what | per s | p50 / p95 / p99 ms | errors | lost |")
    print("| --- | --- | ---: | --- | ---: | ---: |", flush=True)
    with tempfile.TemporaryDirectory(prefix="il-review-load-") as tmp:
        for db in ["postgres", "sqlite"] if args.db == "both" else [args.db]:
            for r in run(db, args, Path(tmp)):
                print(
                    f"| {r['db']} | {r['what']} | {r['per_s']:.0f} | {r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f} "
                    f"| {r['errors']} | {r['lost']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
