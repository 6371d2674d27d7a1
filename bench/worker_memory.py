"""The worker's resident memory during and after a PPO run (issue 28 item 8): a real `instructloop
worker` process runs one PPO run of the default model (SmolLM2-135M-Instruct as the policy, a reward
model made from it with an untrained head: memory does not depend on what the head learned) with
the CPU demo's PPO settings (runconfig.PRESETS["cpu"]["ppo"]) cut to a few steps, on a fresh SQLite
database. This script reads the worker's VmRSS and VmHWM from /proc/<pid>/status twice a second,
with the run's phase from the database, and keeps watching the idle worker after the run.

    .venv/bin/python bench/worker_memory.py [--steps 2] [--precision fp32] [--idle 20] [--set lora_r=16]
        [--preset cpu-small] [--low-memory]

Prints the peak VmRSS of each phase, the process's VmHWM, VmRSS at the end of the run and after
--idle seconds of idling, and the run's time. The worker's torch threads are the worker's own
(all cores); the default model must be converted already (it is after any run or test on it:
models/smollm2-135m-instruct under the data folder, --model-cache)."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import migrate  # noqa: E402
from app.config import Settings, default_data_dir  # noqa: E402
from app.db import make_engine, make_sessionmaker, write_session  # noqa: E402
from app.models import ModelKind, ModelVersion, TrainingRun  # noqa: E402
from app.services import registry, runs  # noqa: E402
from runconfig import PRESETS  # noqa: E402
from tests.worker_helpers import make_project, make_prompts  # noqa: E402

GIB = 2**30


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process; empty once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.startswith(("VmRSS", "VmHWM"))
    }


def make_reward_model(folder: Path, cache: Path) -> None:
    """The reward model, in a child process so this one holds no torch memory."""
    code = (
        "import sys; from trainer import modeling; "
        "src = modeling.resolve_model_source(modeling.DEFAULT_MODEL, sys.argv[2]); "
        "modeling.ScalarHeadModel.from_causal_lm(src, device='cpu').save_pretrained(sys.argv[1], "
        "modeling.load_tokenizer(src))"
    )
    subprocess.run([sys.executable, "-c", code, str(folder), str(cache)], check=True, cwd=Path(__file__).parent.parent)


def prepare(settings: Settings, config: dict) -> int:
    """A project with train prompts, the policy and reward versions, and the queued PPO run's id."""
    reward_folder = settings.data_dir / "reward-model"
    make_reward_model(reward_folder, settings.data_dir)
    with write_session(make_engine(settings.db_url)) as session:
        project = make_project(session, "Memory")
        make_prompts(session, project, [f"Write one short sentence about topic number {i}." for i in range(64)])
        policy = registry.register_base(session, "smollm2-135m-instruct", name="smollm2")
        reward = ModelVersion(
            name="rm",
            kind=ModelKind.reward,
            source=str(reward_folder),
            artifact_path=str(reward_folder),
            parent_ids=[],
            metrics={},
        )
        session.add(reward)
        session.flush()
        run = runs.create_run(
            session, project_id=project.id, kind="ppo", config=config, input_model_ids=[policy.id, reward.id]
        )
        return run.id


def watch(settings: Settings, run_id: int, idle_s: float, low_memory: bool) -> dict:
    """Starts the worker, samples its memory until the run ends and idle_s after, then stops it."""
    env = {**os.environ, "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.db_url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "instructloop", "worker", "--poll-interval", "0.5", "--device", "cpu"]
        + ["--low-memory"] * low_memory,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    sessions = make_sessionmaker(make_engine(settings.db_url))
    by_phase: dict[str, int] = {}
    started = time.monotonic()
    ended_at: float | None = None
    end_rss = 0
    idle: list[int] = []
    run = None
    try:
        while True:
            time.sleep(0.5)
            kb = status_kb(worker.pid)
            if not kb:
                raise SystemExit("the worker exited early; see its log above")
            with sessions() as session:
                run = session.get_one(TrainingRun, run_id)
                phase, status = run.phase or run.status.value, run.status
                partial = getattr(run, "progress_partial", None)  # (none before its column came)
                step = f"{run.progress_step + (partial or 0):.2f}/{run.progress_total}"
            if ended_at is None:
                kind = phase.split(" (")[0]  # "rolling out (token 3 of 24)": its phase
                by_phase[kind] = max(by_phase.get(kind, 0), kb["VmRSS"])
                if status in runs.FINAL:
                    ended_at, end_rss = time.monotonic(), kb["VmRSS"]
                    print(f"run {run_id} {status.value}; VmRSS {kb['VmRSS'] / 2**20:.2f} GiB", flush=True)
            else:
                idle.append(kb["VmRSS"])
                if time.monotonic() - ended_at >= idle_s:
                    break
            print(
                f"{time.monotonic() - started:6.1f} s {phase:38} {step:>9} VmRSS {kb['VmRSS'] / 2**20:.2f} GiB",
                flush=True,
            )
        hwm = status_kb(worker.pid)["VmHWM"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    assert run is not None
    return {
        "run": run,
        "by_phase": by_phase,
        "hwm": hwm,
        "end": end_rss,
        "idle": idle[-1] if idle else 0,
        "seconds": (ended_at or time.monotonic()) - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="PPO steps (rollout batches of the preset)")
    parser.add_argument("--precision", default="fp32", help="the run's precision (the preset's is bf16)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds to watch the idle worker after the run")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="whose PPO settings")
    parser.add_argument("--low-memory", action="store_true", help="start the worker with --low-memory")
    parser.add_argument("--set", action="append", default=[], help="another PPO setting, name=value (e.g. lora_r=16)")
    parser.add_argument("--model-cache", type=Path, default=default_data_dir(), help="holds models/smollm2-...")
    args = parser.parse_args()
    preset = PRESETS[args.preset]["ppo"]
    config = {
        **preset,
        "total_episodes": args.steps * preset["rollout_batch_size"],
        "precision": args.precision,
        "save_every": 0,
    }
    for item in args.set:
        name, _, value = item.partition("=")
        config[name] = json.loads(value) if value in ("true", "false") or value.lstrip("-").isdigit() else value
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    data = Path(tempfile.mkdtemp(prefix="il-memory-"))
    (data / "models").symlink_to((args.model_cache / "models").resolve(), target_is_directory=True)
    settings = Settings(INSTRUCTLOOP_DATA_DIR=data, DATABASE_URL=f"sqlite:///{data / 'bench.db'}")
    try:
        migrate.upgrade(settings.db_url)
        run_id = prepare(settings, config)
        result = watch(settings, run_id, args.idle, args.low_memory)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    run = result["run"]
    print(f"\nbench/worker_memory.py at {commit}: PPO run {run.status.value} in {result['seconds']:.0f} s")
    print(f"settings: preset {args.preset!r} with {config}; worker --low-memory: {args.low_memory}")
    malloc = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    print(f"malloc environment: {malloc or 'none'}")
    if run.error:
        print(f"error: {run.error}")
    print("\n| phase | peak VmRSS |\n|---|---|")
    for phase, kb in result["by_phase"].items():
        print(f"| {phase} | {kb / 2**20:.2f} GiB |")
    print(f"| VmHWM (whole run) | {result['hwm'] / 2**20:.2f} GiB |")
    print(f"| VmRSS at the end of the run | {result['end'] / 2**20:.2f} GiB |")
    print(f"| VmRSS after {args.idle:.0f} s idle | {result['idle'] / 2**20:.2f} GiB |")


if __name__ == "__main__":
    main()
