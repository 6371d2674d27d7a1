"""Data-parallel training through accelerate on the CPU (gloo): `accelerate launch --multi_gpu
--num_processes 2 -m trainer.sft|reward` on a machine without GPUs trains one model across two
processes with the same global batch, and ends where one process ends, within float summation-order
noise."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from app.config import REPO_ROOT
from tests.test_reward import synthetic_rankings
from tests.test_sft import TRAIN, VALID
from trainer.tiny import make_tiny_model

ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))
TOLERANCE = 1e-4
"""The two runs add the same numbers in another order (per process, then across processes)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [f"{ex.prompt} {ex.completion}" for ex in TRAIN]
    return make_tiny_model(tmp_path_factory.mktemp("ddp") / "model", texts=texts)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(args: list[str], processes: int, out: Path) -> dict:
    module = args[0]
    if processes == 1:
        command = [sys.executable, "-m", module]
    else:
        command = [
            ACCELERATE,
            "launch",
            "--multi_gpu",  # through torchrun; without a GPU the processes make a gloo group on the CPU
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            module,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*command, *args[1:], "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(folder: Path) -> dict:
    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def _close(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
def test_sft_on_two_processes_matches_one(tiny, tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in TRAIN])
    valid = _write(tmp_path / "valid.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in VALID])
    # 64 demonstrations, batches of 12 (the last one 4: uneven parts), micro-batches of 2.
    args = [
        "trainer.sft",
        "--model",
        str(tiny),
        "--train",
        str(train),
        "--valid",
        str(valid),
        "--set",
        "epochs=2",
        "--set",
        "batch_size=12",
        "--set",
        "micro_batch_size=2",
        "--set",
        "learning_rate=0.005",
        "--set",
        "eval_every=4",
        "--set",
        "keep_best=false",
    ]
    one = _run(args, 1, tmp_path / "one")
    two = _run(args, 2, tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1.0, 2.0)
    assert one["steps"] == two["steps"] == 12
    assert abs(one["valid_loss"] - two["valid_loss"]) < TOLERANCE, (one, two)
    assert abs(one["tokens"] - two["tokens"]) == 0
    assert _close(tmp_path / "one", tmp_path / "two") < TOLERANCE


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
def test_reward_on_two_processes_matches_one(tiny, tmp_path):
    rows = [{"prompt": r.prompt, "completions": r.completions, "order": r.order} for r in synthetic_rankings(40, 0)]
    train = _write(tmp_path / "train.jsonl", rows[:30])
    valid = _write(tmp_path / "valid.jsonl", rows[30:])
    args = [
        "trainer.reward",
        "--model",
        str(tiny),
        "--train",
        str(train),
        "--valid",
        str(valid),
        "--set",
        "epochs=2",
        "--set",
        "batch_size=8",
        "--set",
        "micro_batch_size=2",
        "--set",
        "learning_rate=0.001",
        "--set",
        "eval_every=2",
    ]
    one = _run(args, 1, tmp_path / "one")
    two = _run(args, 2, tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1.0, 2.0)
    assert one["steps"] == two["steps"]
    assert abs(one["valid_accuracy"] - two["valid_accuracy"]) < TOLERANCE
    assert abs(one["valid_loss"] - two["valid_loss"]) < TOLERANCE, (one, two)
    assert _close(tmp_path / "one", tmp_path / "two") < TOLERANCE
