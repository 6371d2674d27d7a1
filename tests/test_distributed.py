"""Data-parallel training through accelerate on the CPU (gloo): `accelerate launch --multi_gpu
--num_processes 2 -m trainer.sft|reward` on a machine without GPUs trains one model across two
processes with the same global batch, and ends where one process ends, within float summation-order
noise. PPO samples its answers, and each process draws its own: two processes learn as one does,
within a stated tolerance, with their weights in step."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from app.config import REPO_ROOT
from tests.test_ppo import ANSWERS, PROMPTS, sft_folder  # noqa: F401 - the tiny SFT policy fixture
from tests.test_reward import synthetic_rankings
from tests.test_sft import TRAIN, VALID
from trainer.modeling import ScalarHeadModel, load_tokenizer
from trainer.tiny import make_tiny_model

pytestmark = pytest.mark.slow  # several processes train end to end (minutes); CI runs it

ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))
TOLERANCE = 1e-4
"""The two runs add the same numbers in another order (per process, then across processes)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [f"{ex.prompt} {ex.completion}" for ex in TRAIN]
    return make_tiny_model(tmp_path_factory.mktemp("ddp") / "model", texts=texts)


def _free_port() -> str:
    """A rendezvous port of its own per launch (a process of the previous launch may still hold 29500)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _command(args: list[str], processes: int, out: Path) -> list[str]:
    """`python -m MODULE ...` for one process, `accelerate launch ... -m MODULE ...` for several."""
    if processes == 1:
        return [sys.executable, "-m", *args, "--out", str(out)]
    # --multi_gpu starts the processes through torchrun; without a GPU they make a gloo group on the CPU.
    launch = [
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        _free_port(),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    return [ACCELERATE, *launch, "-m", *args, "--out", str(out)]


def _run(args: list[str], processes: int, out: Path | None) -> dict:
    command = _command(args, processes, out) if out is not None else _command(args, processes, Path())[:-2]
    done = subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(folder: Path) -> dict:
    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def _close(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def _sets(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def sft_one(tiny, tmp_path_factory) -> tuple[list[str], dict, Path]:
    """The SFT case's arguments and its one-process run, shared by the DDP and FSDP tests (on one
    process the sharding setting changes nothing)."""
    folder = tmp_path_factory.mktemp("sft")
    train = _write(folder / "train.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in TRAIN])
    valid = _write(folder / "valid.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in VALID])
    # 64 demonstrations, batches of 12 (the last one 4: uneven parts), micro-batches of 2.
    sets = {
        "epochs": 2,
        "batch_size": 12,
        "micro_batch_size": 2,
        "learning_rate": 0.005,
        "eval_every": 4,
        "keep_best": False,
    }
    args = ["trainer.sft", "--model", str(tiny), "--train", str(train), "--valid", str(valid)]
    args += _sets(sets)
    return args, _run(args, 1, folder / "one"), folder / "one"


@pytest.fixture(scope="module")
def reward_one(tiny, tmp_path_factory) -> tuple[list[str], dict, Path]:
    """The reward case's arguments and its one-process run, shared like sft_one's."""
    folder = tmp_path_factory.mktemp("reward")
    rows = [{"prompt": r.prompt, "completions": r.completions, "order": r.order} for r in synthetic_rankings(40, 0)]
    train = _write(folder / "train.jsonl", rows[:30])
    valid = _write(folder / "valid.jsonl", rows[30:])
    sets = {"epochs": 2, "batch_size": 8, "micro_batch_size": 2, "learning_rate": 0.001, "eval_every": 2}
    args = ["trainer.reward", "--model", str(tiny), "--train", str(train), "--valid", str(valid), *_sets(sets)]
    return args, _run(args, 1, folder / "one"), folder / "one"


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_sft_on_two_processes_matches_one(sft_one, tmp_path, sharding):
    args, one, one_folder = sft_one
    two = _run([*args, *_sets({"sharding": sharding})], 2, tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1.0, 2.0)
    assert one["steps"] == two["steps"] == 12
    assert abs(one["valid_loss"] - two["valid_loss"]) < TOLERANCE, (one, two)
    assert abs(one["tokens"] - two["tokens"]) == 0
    assert _close(one_folder, tmp_path / "two") < TOLERANCE


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_reward_on_two_processes_matches_one(reward_one, tmp_path, sharding):
    args, one, one_folder = reward_one
    two = _run([*args, *_sets({"sharding": sharding})], 2, tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1.0, 2.0)
    assert one["steps"] == two["steps"]
    assert abs(one["valid_accuracy"] - two["valid_accuracy"]) < TOLERANCE
    assert abs(one["valid_loss"] - two["valid_loss"]) < TOLERANCE, (one, two)
    assert _close(one_folder, tmp_path / "two") < TOLERANCE


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_sigterm_stops_two_processes_at_a_checkpoint_and_resume_finishes_the_run(tiny, tmp_path, sharding):
    """A scheduler preempting the job (SIGTERM to the launcher): both processes stop at the same step
    with a checkpoint and no model at --out; the same command with --resume ends where an
    uninterrupted run ends (under FSDP the checkpoint holds the gathered weights and optimizer state)."""
    train = _write(tmp_path / "train.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in TRAIN])
    sets = {"epochs": 10, "batch_size": 8, "micro_batch_size": 2, "learning_rate": 0.002, "save_every": 0}
    args = ["trainer.sft", "--model", str(tiny), "--train", str(train), *_sets({**sets, "sharding": sharding})]
    whole = _run(args, 2, tmp_path / "whole")
    _stop_at(_command(args, 2, tmp_path / "cut"), 20)
    assert not (tmp_path / "cut").exists() and _checkpoints(tmp_path / "cut.checkpoints")
    resumed = _run([*args, "--resume"], 2, tmp_path / "cut")
    assert 20 <= resumed["resumed_from_step"] < resumed["steps"] == whole["steps"]
    assert _close(tmp_path / "whole", tmp_path / "cut") < TOLERANCE


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
def test_ppo_on_two_processes_learns_like_one_with_the_weights_in_step(sft_folder):  # noqa: F811
    """tests/ddp_ppo.py: 12 PPO steps of 16 episodes against the digit reward (each process samples 8).
    The samples differ (each process draws its own), so the runs are compared by what they learn:
    both raise the mean score, and their last 4 steps' mean scores are within 0.25 of each other."""
    one = _run(["tests.ddp_ppo", sft_folder], 1, None)
    two = _run(["tests.ddp_ppo", sft_folder], 2, None)
    assert (one["world_size"], two["world_size"]) == (1.0, 2.0)
    assert one["steps"] == two["steps"] == 12 and one["episodes"] == two["episodes"] == 192
    late = {n: sum(r["scores"][-4:]) / 4 for n, r in (("one", one), ("two", two))}
    for run in (one, two):
        assert sum(run["scores"][-4:]) / 4 > sum(run["scores"][:2]) / 2 + 0.15, run["scores"]
    assert abs(late["one"] - late["two"]) < 0.25, late
    first, second = two["weight_sums"]
    assert first == second, "the two processes' models drifted apart"

    # Sharded (FSDP): each process samples as under DDP, so the runs match within float noise.
    fsdp = _run(["tests.ddp_ppo", sft_folder, '{"sharding": "fsdp"}'], 2, None)
    assert fsdp["scores"] == two["scores"] and abs(fsdp["kl"] - two["kl"]) < TOLERANCE
    assert abs(fsdp["weight_sums"][0] - first) < 1e-2 and fsdp["weight_sums"][0] == fsdp["weight_sums"][1]


def _checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in a folder: step-N.pt files (one process, DDP) or step-N folders (FSDP)."""
    return [p for p in folder.glob("step-*") if not p.name.endswith(".partial")]


def _stop_at(command: list[str], step: int) -> str:
    """Runs `command`, SIGTERMs the launcher's process group once step `step`'s metrics line is out
    (as a scheduler preempting the job), and returns the output."""
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # metric lines: "step total {json}"
        lines.append(line)
        if line.split(" ", 1)[0] == str(step):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    output = "".join(lines) + proc.communicate(timeout=180)[0]
    assert proc.returncode != 0 and "Run the same command with --resume" in output, output[-3000:]
    return output


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not installed beside this Python")
def test_fsdp_ppo_with_checkpoints_and_ptx_stops_and_resumes_to_the_end_of_one_run(sft_folder, tmp_path):  # noqa: F811
    """Issue 29, finding 1: PPO sharded (FSDP) on 2 processes with checkpoints (step 0 and every
    step) and ptx. On 537a5f6 it deadlocked at the step-0 checkpoint (process 0 gathered a sharded
    weight inside a process-0-only branch). It must finish; and a run SIGTERMed at step 3 then run
    again with --resume must end with the weights of the uninterrupted run."""
    reward = tmp_path / "reward"
    ScalarHeadModel.from_causal_lm(sft_folder, device="cpu").save_pretrained(reward, load_tokenizer(sft_folder))
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    ptx = _write(tmp_path / "ptx.jsonl", [{"prompt": p, "completion": a} for p in PROMPTS for a in ANSWERS[:2]])
    sets = {
        "sharding": "fsdp",
        "total_episodes": 24,
        "rollout_batch_size": 4,
        "minibatch_size": 2,
        "max_new_tokens": 6,
        "save_every": 1,
        "ptx_coef": 0.5,
        "ptx_batch_size": 2,
        "learning_rate": 1e-3,
    }
    args = ["trainer.ppo", "--policy", sft_folder, "--reward", str(reward), "--prompts", str(prompts)]
    args += ["--ptx", str(ptx), *_sets(sets)]
    whole = _run(args, 2, tmp_path / "whole")
    assert whole["steps"] == 6 and whole["world_size"] == 2.0 and "ptx_loss" in whole
    # Finding 5: a sharded checkpoint, each process writing its own shards (no whole model gathered).
    saved = _checkpoints(tmp_path / "whole.checkpoints")
    assert [p.name for p in sorted(saved)] == ["step-5", "step-6"], saved
    shards = [p.stat().st_size for p in sorted((tmp_path / "whole.checkpoints" / "step-6").glob("*.distcp"))]
    assert len(shards) == 2 and min(shards) > 0.35 * sum(shards), shards

    _stop_at(_command(args, 2, tmp_path / "cut"), 3)
    assert not (tmp_path / "cut").exists() and _checkpoints(tmp_path / "cut.checkpoints")
    resumed = _run([*args, "--resume"], 2, tmp_path / "cut")
    assert 3 <= resumed["resumed_from_step"] < resumed["steps"] == whole["steps"]
    assert _close(tmp_path / "whole", tmp_path / "cut") < TOLERANCE


def _step_one_kls(sft_folder: str, precisions: list[str], sharding: str, launcher: str = "no") -> dict:  # noqa: F811
    """tests/ddp_precision.py under torchrun (2 processes), ACCELERATE_MIXED_PRECISION=launcher."""
    env = {**ENV, "ACCELERATE_MIXED_PRECISION": launcher}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port()]
    command += ["-m", "tests.ddp_precision", sft_folder, json.dumps(precisions), sharding]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("launcher", ["bf16", "fp16"])
def test_the_launchers_mixed_precision_does_not_override_the_runs(sft_folder, launcher):  # noqa: F811
    """Issue 29, finding 2: with ACCELERATE_MIXED_PRECISION in the environment (an `accelerate config`
    default, `accelerate launch --mixed_precision`), DDP's Accelerator autocast the policy's forward
    on top of the run's precision. The run's precision must win: with the reference equal to the
    policy, the step-1 KL is exactly 0 in fp32 and in bf16 mixed."""
    kl = _step_one_kls(sft_folder, ["fp32", "bf16"], "ddp", launcher)
    assert kl == {"fp32": 0.0, "bf16": 0.0}, kl


def test_fsdp_ppo_trains_in_fp16_and_bf16(sft_folder):  # noqa: F811
    """Issue 29, finding 4: fp16 (with ShardedGradScaler, tests/test_precision.py) and bf16 mixed train
    a PPO step under FSDP on 2 processes, the step-1 KL between equal policy and reference exactly 0."""
    kl = _step_one_kls(sft_folder, ["fp16", "bf16"], "fsdp")
    assert kl == {"fp16": 0.0, "bf16": 0.0}, kl
