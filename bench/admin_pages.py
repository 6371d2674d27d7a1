"""Admin page latency with realistic volume, on SQLite and Postgres side by side.

    .venv/bin/python bench/admin_pages.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/il_bench]
                                          [--repeat 5] [--scale 1.0]

Bulk-inserts (Core executemany, chunks of 5,000) into freshly migrated databases:
- 20 labelers, 3 projects, 60,000 prompts;
- 100,000 submissions over 90 days: 50,000 demonstrations, 40,000 rankings (K = 4; 16,000 tasks
  ranked once, 8,000 ranked by 3 labelers, so agreement has real work), 10,000 A/B comparisons;
  5,000 skips; 200 gold ranking tasks;
- 1,000 training runs (all kinds and states) with 4 metrics x 100 steps each (400,000 RunMetric
  rows) and ~600 model versions with parents (lineage).
Then every admin page is requested in-process (FastAPI TestClient, signed in as an admin) once to
warm up and `--repeat` times; the table gives the median and the slowest request per page, in ms.
The goal is < 300 ms for every page. The labelers and data pages remember their aggregates until a
row is added (app.services.stats.memo); their `?fresh=true` rows force the recomputation on every
request, i.e. the cost of the first view after new work arrives. The Postgres database named in --postgres is dropped and
re-created (schema public) first; without --postgres only SQLite is measured.
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.main import create_served_app  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import (  # noqa: E402
    Base,
    Comparison,
    Completion,
    Demonstration,
    GuidelineVersion,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    Role,
    RunMetric,
    Skip,
    Task,
    TaskCompletion,
    TrainingRun,
    User,
)
from app.services import accounts  # noqa: E402

PASSWORD = "bench password 123"
CHUNK = 5000
FLAGS = ["hallucination", "fails_to_follow", "expresses_opinion", "harmful_advice"]


def _insert(conn, model, rows):
    for i in range(0, len(rows), CHUNK):
        conn.execute(insert(model), rows[i : i + CHUNK])


def populate(url: str, scale: float, seed: int = 0) -> dict:
    """Fills a migrated database; returns ids the page list needs."""
    rnd = random.Random(seed)
    n = lambda x: max(1, int(x * scale))  # noqa: E731
    engine = make_engine(url)
    now = datetime.now(UTC)
    when = lambda: now - timedelta(seconds=rnd.uniform(0, 90 * 86400))  # noqa: E731
    with make_sessionmaker(engine)() as s:
        admin = accounts.create_user(s, "admin@example.com", PASSWORD, role=Role.admin)
        s.commit()
        admin_id = admin.id
    with engine.begin() as conn:
        _insert(
            conn,
            User,
            [
                {
                    "email": f"labeler{i}@example.com",
                    "name": f"Labeler {i}",
                    "role": "labeler",
                    "password_hash": None,
                    "is_active": i != 19,
                    "created_at": now,
                }
                for i in range(20)
            ],
        )
        labelers = [r[0] for r in conn.execute(text("SELECT id FROM users WHERE role = 'labeler' ORDER BY id"))]
        _insert(
            conn,
            Project,
            [
                {
                    "id": p,
                    "name": f"Project {p}",
                    "description": "bench",
                    "k": 4,
                    "overlap": 3,
                    "targets": {"demonstration": 30000, "ranking": 20000},
                    "created_at": now,
                    "max_demonstration_chars": 8000,
                }
                for p in (1, 2, 3)
            ],
        )
        _insert(
            conn,
            GuidelineVersion,
            [
                {"id": p * 10 + v, "project_id": p, "version": v, "body_md": f"# Rules v{v}", "created_at": now}
                for p in (1, 2, 3)
                for v in (1, 2)
            ],
        )
        n_prompts = n(60000)
        _insert(
            conn,
            Prompt,
            [
                {
                    "id": i,
                    "project_id": 1 + i % 3,
                    "text": f"Prompt number {i}: explain topic {i % 997}.",
                    "split": rnd.choices(["train", "valid", "test"], [8, 1, 1])[0],
                    "source": "bench",
                    "content_hash": f"{i:064x}",
                    "meta": {},
                    "created_at": now,
                }
                for i in range(1, n_prompts + 1)
            ],
        )
        task_id, completion_id = 0, 0
        tasks, demos, task_outputs, completions, rankings, comparisons, skips = [], [], [], [], [], [], []

        def new_task(kind, prompt, done, required, gold=None):
            nonlocal task_id
            task_id += 1
            tasks.append(
                {
                    "id": task_id,
                    "project_id": 1 + (prompt - 1) % 3,
                    "prompt_id": prompt,
                    "kind": kind,
                    "status": "closed" if done >= required else "open",
                    "required": required,
                    "done_count": done,
                    "priority": 0,
                    "gold": gold,
                    "created_at": now,
                }
            )
            return task_id

        def new_outputs(prompt, k):
            nonlocal completion_id
            ids = []
            for _ in range(k):
                completion_id += 1
                completions.append(
                    {
                        "id": completion_id,
                        "prompt_id": prompt,
                        "source": "bench",
                        "text": f"Output {completion_id}",
                        "generation": {},
                        "created_at": now,
                    }
                )
                ids.append(completion_id)
            return ids

        # 50,000 demonstrations, one per task.
        for i in range(n(50000)):
            prompt = 1 + i % n_prompts
            t = new_task("demonstration", prompt, 1, 1)
            demos.append(
                {
                    "task_id": t,
                    "prompt_id": prompt,
                    "user_id": rnd.choice(labelers),
                    "guideline_version_id": None,
                    "text": f"Demonstration {i}",
                    # a fifth reviewed so far: most accepted, some rejected
                    "review": rnd.choices(["pending", "accepted", "rejected"], [80, 16, 4])[0],
                    "time_spent_ms": int(rnd.lognormvariate(11, 0.6)),
                    "created_at": when(),
                }
            )
        # 40,000 rankings: 16,000 tasks ranked once, 8,000 ranked by three labelers.
        gold_left = n(200)
        for i in range(n(24000)):
            prompt = 1 + (i * 7) % n_prompts
            shared = i % 3 == 0
            ids = new_outputs(prompt, 4)
            best = ids[:]
            rnd.shuffle(best)
            gold = None
            if shared and gold_left:
                gold, gold_left = {"order": [[c] for c in best]}, gold_left - 1
            t = new_task("ranking", prompt, 3 if shared else 1, 3 if shared else 1, gold)
            task_outputs += [{"task_id": t, "completion_id": c, "position": p} for p, c in enumerate(ids)]
            for user in rnd.sample(labelers, 3 if shared else 1):
                order = best[:]
                if rnd.random() < 0.3:  # disagree on one adjacent pair
                    j = rnd.randrange(3)
                    order[j], order[j + 1] = order[j + 1], order[j]
                groups = [[c] for c in order]
                if rnd.random() < 0.1:
                    groups = [groups[0] + groups[1]] + groups[2:]
                ratings = {
                    str(c): {"likert": rnd.randint(1, 7), "flags": rnd.sample(FLAGS, 1) if rnd.random() < 0.05 else []}
                    for c in ids
                }
                rankings.append(
                    {
                        "task_id": t,
                        "user_id": user,
                        "order": groups,
                        "ratings": ratings,
                        "display_order": ids,
                        "none_acceptable": False,
                        "time_spent_ms": int(rnd.lognormvariate(11.5, 0.5)),
                        "created_at": when(),
                    }
                )
        # 10,000 comparisons.
        for i in range(n(10000)):
            prompt = 1 + (i * 13) % n_prompts
            a, b = new_outputs(prompt, 2)
            t = new_task("comparison", prompt, 1, 1)
            task_outputs += [
                {"task_id": t, "completion_id": a, "position": 0},
                {"task_id": t, "completion_id": b, "position": 1},
            ]
            comparisons.append(
                {
                    "task_id": t,
                    "user_id": rnd.choice(labelers),
                    "a_completion_id": a,
                    "b_completion_id": b,
                    "choice": rnd.choice(["a", "b", "tie"]),
                    "reason": "",
                    "time_spent_ms": int(rnd.lognormvariate(10.5, 0.5)),
                    "created_at": when(),
                }
            )
        for i in range(n(5000)):
            skips.append(
                {
                    "task_id": 1 + (i * 11) % len(demos),
                    "user_id": labelers[i % len(labelers)],
                    "reason": rnd.choice(["skip", "skip", "skip", "pii", "nonsense", "harmful"]),
                    "note": "",
                    "created_at": when(),
                }
            )
        skips = list({(r["task_id"], r["user_id"]): r for r in skips}.values())
        rankings = list({(r["task_id"], r["user_id"]): r for r in rankings}.values())
        # Rows without gold leave the column out (SQL NULL, as the app writes them), not JSON null.
        _insert(conn, Task, [{k: v for k, v in t.items() if k != "gold"} for t in tasks if t["gold"] is None])
        _insert(conn, Task, [t for t in tasks if t["gold"] is not None])
        _insert(conn, Completion, completions)
        _insert(conn, TaskCompletion, task_outputs)
        _insert(conn, Demonstration, demos)
        _insert(conn, Ranking, rankings)
        _insert(conn, Comparison, comparisons)
        _insert(conn, Skip, skips)

        # 1,000 runs with 4 metrics x 100 steps; succeeded sft/reward/ppo runs register model versions.
        versions = [
            {
                "id": 1,
                "name": "smollm2-135m-instruct",
                "kind": "base",
                "project_id": None,
                "source": "smollm2-135m-instruct",
                "parent_ids": [],
                "metrics": {},
                "created_at": now,
            }
        ]
        runs, metrics, by_kind = [], [], {"base": [1], "sft": [], "reward": [], "ppo": []}
        kinds = ["sft", "reward", "ppo", "generate", "evaluate"]
        for r in range(1, n(1000) + 1):
            kind = kinds[r % 5]
            status = rnd.choices(["succeeded", "failed", "cancelled", "queued", "running"], [80, 10, 5, 4, 1])[0]
            started = now - timedelta(hours=r)
            runs.append(
                {
                    "id": r,
                    "project_id": 1 + r % 3,
                    "kind": kind,
                    "status": status,
                    "config": {"seed": r},
                    "input_model_ids": [(by_kind["sft"] or [1])[-1], 1] if kind == "evaluate" else [1],
                    "data_filter": {},
                    "created_by_id": admin_id,
                    "created_at": started,
                    "started_at": None if status == "queued" else started,
                    "finished_at": started + timedelta(minutes=20) if status not in ("queued", "running") else None,
                    "progress_step": 100 if status == "succeeded" else 40,
                    "progress_total": 100,
                    "cancel_requested": False,
                    "summary": {"steps": 100},
                    "error": "RuntimeError: CUDA out of memory" if status == "failed" else None,
                }
            )
            if status != "queued":
                for step in range(1, 101):
                    for name, value in (
                        ("train_loss", 3 / step**0.3),
                        ("valid_loss", 3.2 / step**0.25),
                        ("lr", 1e-5 * (1 - step / 100)),
                        ("grad_norm", 1 + rnd.random()),
                    ):
                        metrics.append({"run_id": r, "step": step, "name": name, "value": value, "created_at": started})
            if status == "succeeded" and kind in ("sft", "reward", "ppo"):
                parents = {
                    "sft": [1],
                    "reward": by_kind["sft"][-1:] or [1],
                    "ppo": (by_kind["sft"][-1:] or [1]) + by_kind["reward"][-1:],
                }[kind]
                vid = len(versions) + 1
                versions.append(
                    {
                        "id": vid,
                        "name": f"{kind}-run{r}",
                        "kind": kind,
                        "project_id": 1 + r % 3,
                        "source": f"/data/artifacts/run-{r}",
                        "artifact_path": f"/data/artifacts/run-{r}",
                        "parent_ids": parents,
                        "run_id": r,
                        "metrics": {"valid_loss": 1.2, "accuracy": 0.7},
                        "created_at": started,
                    }
                )
                by_kind[kind].append(vid)
        _insert(conn, TrainingRun, runs)
        _insert(conn, RunMetric, metrics)
        _insert(conn, ModelVersion, versions)
        if engine.dialect.name == "postgresql":
            for table in Base.metadata.sorted_tables:
                if "id" in table.c and table.c.id.autoincrement:
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                            f"coalesce((SELECT max(id) FROM {table.name}), 1))"
                        )
                    )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()
    sizes = {
        "submissions": len(demos) + len(rankings) + len(comparisons),
        "runs": len(runs),
        "run_metrics": len(metrics),
        "model_versions": len(versions),
        "tasks": len(tasks),
    }
    shared_task = next(t["id"] for t in tasks if t["kind"] == "ranking" and t["gold"])
    return {
        "sizes": sizes,
        "task": shared_task,
        "run": next(r["id"] for r in runs if r["status"] == "succeeded"),
        "model": versions[-1]["id"],
    }


def pages(ids: dict) -> list[str]:
    return [
        "/admin",
        "/admin/projects",
        "/admin/projects/1",
        "/admin/projects/1/import",
        "/admin/projects/1/tasks",
        "/admin/projects/1/tasks?kind=ranking&shared=true",
        f"/admin/tasks/{ids['task']}",
        "/admin/projects/1/exports",
        "/admin/labelers",
        "/admin/labelers?project=1",
        "/admin/labelers?fresh=true",
        "/admin/labelers?project=1&fresh=true",
        "/admin/data",
        "/admin/data?project=1&days=90",
        "/admin/data?fresh=true",
        "/admin/runs",
        "/admin/runs?status=failed",
        "/admin/runs/new?kind=sft&project=1",
        "/admin/runs/new?kind=ppo&project=1",
        f"/admin/runs/{ids['run']}",
        f"/admin/runs/{ids['run']}/live",
        "/admin/models",
        f"/admin/models/{ids['model']}",
        "/admin/users",
        "/admin/projects/1/review",
        "/admin/projects/1/review?kind=ranking&status=all",
        "/admin/projects/1/review?kind=ranking&status=all&flagged=1",
        "/admin/projects/1/review?kind=demonstration&status=rejected&days=30",
        "/admin/projects/1/review?kind=comparison",
        "/admin/projects/1/flags",
        "/admin/projects/1/disagreements",
        "/admin/projects/1/disagreements?kind=comparison&below=101",
    ]


def measure(url: str, data_dir: Path, ids: dict, repeat: int) -> dict[str, tuple[float, float, float]]:
    settings = Settings(DATABASE_URL=url, INSTRUCTLOOP_DATA_DIR=data_dir, SECRET_KEY="bench")
    app = create_served_app(settings)  # as `instructloop serve` builds it
    out = {}
    with TestClient(app, base_url="http://testserver") as client:
        token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        r = client.post(
            "/login",
            data={"email": "admin@example.com", "password": PASSWORD, "csrf_token": token},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        for page in pages(ids):
            t0 = time.perf_counter()
            r = client.get(page)
            first = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200, (page, r.status_code, r.text[:500])
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                client.get(page)
                times.append((time.perf_counter() - t0) * 1000)
            out[page] = (statistics.median(times), max(times), first)
    app.state.engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="", help="SQLAlchemy URL of a scratch Postgres database (wiped).")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply every row count (0.1 for a quick run).")
    args = parser.parse_args()
    results, sizes = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("SQLite", f"sqlite:///{tmp}/bench.db")]
        if args.postgres:
            engine = make_engine(args.postgres)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            engine.dispose()
            targets.append(("Postgres", args.postgres))
        for name, url in targets:
            upgrade(url)
            t0 = time.perf_counter()
            ids = populate(url, args.scale)
            sizes = ids["sizes"]
            print(f"{name}: loaded {sizes} in {time.perf_counter() - t0:.0f} s", flush=True)
            results[name] = measure(url, Path(tmp) / name, ids, args.repeat)
    names = list(results)
    print(
        f"\nAdmin pages, ms (median / max of {args.repeat} requests after one warm-up / the first request), "
        f"{sizes['submissions']:,} submissions, {sizes['runs']:,} runs, {sizes['run_metrics']:,} run metrics, "
        f"{sizes['model_versions']:,} model versions:\n"
    )
    print("| page | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    worst = {n: 0.0 for n in names}
    recompute = {n: 0.0 for n in names}
    for page in results[names[0]]:
        cells = []
        for n in names:
            med, mx, first = results[n][page]
            if "fresh=true" in page:
                recompute[n] = max(recompute[n], med)
            else:
                worst[n] = max(worst[n], med)
            cells.append(f"{med:.0f} / {mx:.0f} / {first:.0f}")
        print(f"| `{page}` | " + " | ".join(cells) + " |")
    print(
        "\nslowest page as served (median): "
        + ", ".join(f"{n} {worst[n]:.0f} ms" for n in names)
        + f"; goal < 300 ms: {'met' if all(v < 300 for v in worst.values()) else 'NOT met'}"
    )
    print(
        "slowest forced recomputation (?fresh=true; what the first view after new work costs): "
        + ", ".join(f"{n} {recompute[n]:.0f} ms" for n in names)
        + f"; goal < 300 ms: {'met' if all(v < 300 for v in recompute.values()) else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
