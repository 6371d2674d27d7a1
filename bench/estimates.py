"""Run-time estimates vs real times (issue 28): the run form's estimate, taken just before each run
is queued with the run's own input models, against the run's real wall time (claim to end), for
every run kind, on two models, in one fresh database:

1. the tiny demo (`instructloop demo --profile tiny`'s profile): a fresh database, so its first
   runs get first guesses (or nothing), and later runs of a kind the pace of the earlier ones;
2. then SmolLM2-135M-Instruct (the default model) on a small project: the tiny runs are not
   comparable (1000x fewer parameters), so these estimates are first guesses from the model's
   size and the CPU, or absent — the issue's done-when: within 2x of the real time, or absent;
3. the same SmolLM2 loop again on a new project: now at the pace of (1)'s runs on the same model.

    .venv/bin/python bench/estimates.py [--skip-smollm2] [--model-cache DIR]

`--model-cache` reuses a folder holding models/smollm2-135m-instruct (the converted default model)
so the first run does not convert the GGUF (about 20 s more of loading).
"""

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.models import TrainingRun  # noqa: E402
from app.services import estimates  # noqa: E402
from runconfig import PRESETS  # noqa: E402
from worker.demo import PROFILES, Demo, Profile  # noqa: E402

ROWS: list[tuple[str, str, int, float | None, float, str]] = []
"""(pass, kind, run id, estimate s, real s, basis)."""


class EstimatingDemo(Demo):
    """The demo, printing each run's estimate (the run form's, taken by the demo just before it queues
    the run, with the run's own input models and settings) beside its real time."""

    label = ""

    def _train(self, kind, project_id, inputs, config, name=""):
        result = super()._train(kind, project_id, inputs, config, name)
        name = name or kind
        with self.sessions() as session:
            run = session.get_one(TrainingRun, self.run_ids[name])
            real = (run.finished_at - run.started_at).total_seconds()
        ROWS.append((self.label, name, self.run_ids[name], self.timings[name][1], real, self.estimate_bases[name]))
        print(_row(*ROWS[-1]), flush=True)  # as it comes, in case the bench is stopped early
        return result


SMOL = Profile(
    # The CPU demo's settings (PRESETS["cpu"]) on fewer prompts, so that a pass takes minutes.
    name="smollm2-small",
    model="smollm2-135m-instruct",
    prompts=72,
    labelers=3,
    padding_rate=0.6,
    test_fraction=0.25,
    sft=PRESETS["cpu"]["sft"],
    reward=PRESETS["cpu"]["reward"],
    generate={**PRESETS["cpu"]["generate"], "limit": 24, "batch_size": 24},
    ppo={**PRESETS["cpu"]["ppo"], "total_episodes": 32},
    evaluate={**PRESETS["cpu"]["evaluate"], "num_prompts": 12, "batch_size": 12},
)


def run_pass(settings: Settings, label: str, profile: Profile) -> None:
    demo = EstimatingDemo(settings, profile, echo=lambda line: print(f"  [{label}] {line}", flush=True))
    demo.label = label
    demo.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="il-estimates-"))
    if args.model_cache and (args.model_cache / "models").is_dir():
        shutil.copytree(args.model_cache / "models", data / "models", symlinks=True)
    settings = Settings(INSTRUCTLOOP_DATA_DIR=data, DATABASE_URL=f"sqlite:///{data / 'bench.db'}")
    migrate.upgrade(settings.db_url)
    started = time.monotonic()
    try:
        run_pass(settings, "tiny", PROFILES["tiny"])
        if not args.skip_smollm2:
            run_pass(settings, "smollm2 after tiny", SMOL)
            run_pass(settings, "smollm2 again", replace(SMOL, name="smollm2-small-2"))
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    print(f"\nbench/estimates.py: {time.monotonic() - started:.0f} s in all, {estimates.os.cpu_count()} CPU cores\n")
    print("| pass | kind | run | estimate | real | estimate/real | from |")
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        print(_row(*row))


def _row(label: str, kind: str, run_id: int, estimate: float | None, real: float, basis: str) -> str:
    ratio = f"{estimate / real:.2f}" if estimate is not None and real > 0 else "–"
    shown = f"{estimate:.0f} s" if estimate is not None else "none"
    return f"| {label} | {kind} | #{run_id} | {shown} | {real:.0f} s | {ratio} | {basis} |"


if __name__ == "__main__":
    main()
