"""A stop (cancel, SIGTERM) during SFT and reward runs ends them within one batch, also in the middle
of a held-out pass or the reward model's bias pass (issue 27 finding 7b: a SIGTERMed worker took
minutes to stop). Batches are counted, not timed: a forward pre-hook counts the held-out batches,
and the stop is asked from inside one of them, as a signal arrives while a batch runs. The held-out
pass left undone is owed: a resume runs it first and ends equal to a run never stopped."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runconfig import RewardConfig, SFTConfig
from tests.test_reward import synthetic_rankings
from tests.test_sft import TRAIN, reverse_task
from trainer.checkpoints import Checkpoints
from trainer.data import SFTExample
from trainer.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
from trainer.reward import train_reward
from trainer.sft import train_sft
from trainer.tiny import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]

LONG_VALID = reverse_task(40, seed=1)  # 20 held-out batches of 2


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [f"{ex.prompt} {ex.completion}" for ex in TRAIN]
    return str(make_tiny_model(tmp_path_factory.mktemp("stops") / "model", texts=texts))


class StopInPass:
    """Counts the model's forward passes in eval mode (held-out or bias batches) and in train mode,
    and asks to stop during held-out batch `at` of pass `pass_number` (passes counted from 1 as
    eval-mode runs after a train-mode forward or at the start)."""

    def __init__(self, model: torch.nn.Module, pass_number: int, at: int):
        self.pass_number, self.at = pass_number, at
        self.passes, self.in_pass, self.train_batches = 0, 0, 0
        self.asked = False
        self.after_asked = 0  # forward passes begun after the stop was asked
        self.steps: list[tuple[int, dict]] = []
        model.register_forward_pre_hook(self.forward)

    def forward(self, module: torch.nn.Module, _args) -> None:
        if self.asked:
            self.after_asked += 1
        if module.training:
            self.train_batches += 1
            self.in_pass = 0
            return
        if self.in_pass == 0:
            self.passes += 1
        self.in_pass += 1
        if self.passes == self.pass_number and self.in_pass == self.at:
            self.asked = True  # a cancel arriving while this batch runs

    def should_stop(self) -> bool:
        return self.asked

    def on_metrics(self, step: int, total: int, metrics: dict) -> None:
        if metrics:
            self.steps.append((step, metrics))


def test_sft_stop_during_a_held_out_pass_ends_within_that_batch_and_a_resume_owes_it(tiny, tmp_path):
    config = SFTConfig(
        learning_rate=1e-2, epochs=1, batch_size=16, micro_batch_size=8, eval_every=2, eval_batch_size=2, save_every=0
    )  # 4 steps; held-out passes before step 1 and after steps 2 and 4, of 20 batches each
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    whole = load_causal_lm(tiny, device="cpu")
    expected = train_sft(whole, tok, TRAIN, LONG_VALID, config)

    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    model = load_causal_lm(tiny, device="cpu")
    stop = StopInPass(model, pass_number=2, at=3)  # the pass after step 2, in its third batch
    stopped = train_sft(
        model,
        tok,
        TRAIN,
        LONG_VALID,
        config,
        should_stop=stop.should_stop,
        on_metrics=stop.on_metrics,
        checkpoints=Checkpoints(folder),
    )
    assert stop.asked and stop.after_asked == 0 and stop.in_pass == 3  # 3 of the 20 batches, then nothing
    assert stop.train_batches == 2 * 2  # two steps of two micro-batches
    assert stopped["stopped_early"] == 1.0 and stopped["steps"] == 2
    assert "valid_loss" not in stopped  # the cut pass gave no figures
    assert [step for step, _ in stop.steps] == [0, 1, 2] and "valid_loss" not in stop.steps[-1][1]
    assert [p.name for p in folder.iterdir()] == ["step-2.pt"]

    torch.manual_seed(123)
    second = load_causal_lm(tiny, device="cpu")
    seen: list[tuple[int, dict]] = []
    resumed = train_sft(
        second,
        tok,
        TRAIN,
        LONG_VALID,
        config,
        checkpoints=Checkpoints(folder),
        on_metrics=lambda step, total, m: m and seen.append((step, m)),
    )
    assert seen[0][0] == 2 and set(seen[0][1]) == {"valid_loss"}  # the owed pass first, then step 3
    assert [step for step, _ in seen[1:]] == [3, 4]
    assert resumed["valid_loss"] == expected["valid_loss"] and resumed["best_step"] == expected["best_step"]
    assert all(torch.equal(a, b) for a, b in zip(second.state_dict().values(), whole.state_dict().values()))


def test_sft_stop_during_the_first_held_out_pass_trains_nothing(tiny, tmp_path):
    config = SFTConfig(learning_rate=1e-2, epochs=1, batch_size=16, micro_batch_size=8, eval_batch_size=2)
    tok = load_tokenizer(tiny)
    model = load_causal_lm(tiny, device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stop = StopInPass(model, pass_number=1, at=1)
    result = train_sft(model, tok, TRAIN, LONG_VALID, config, should_stop=stop.should_stop)
    assert stop.after_asked == 0 and stop.in_pass == 1 and stop.train_batches == 0
    assert result["steps"] == 0 and result["stopped_early"] == 1.0 and "initial_valid_loss" not in result
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_stop_at_a_step_runs_no_held_out_pass(tiny):
    config = SFTConfig(learning_rate=1e-2, epochs=1, batch_size=16, micro_batch_size=16, eval_every=1)
    tok = load_tokenizer(tiny)
    model = load_causal_lm(tiny, device="cpu")
    stop = StopInPass(model, pass_number=0, at=0)  # never asks by itself
    result = train_sft(model, tok, TRAIN, LONG_VALID, config, should_stop=lambda: stop.train_batches >= 1)
    assert result["steps"] == 1 and result["stopped_early"] == 1.0
    assert stop.passes == 1  # the pass before step 1 only: the held-out pass due at step 1 is not run


def test_reward_stop_during_a_held_out_pass_ends_within_that_batch(tiny, tmp_path):
    train, valid = synthetic_rankings(32, seed=0), synthetic_rankings(40, seed=1)
    config = RewardConfig(
        learning_rate=1e-3, epochs=1, batch_size=8, micro_batch_size=4, eval_every=2, eval_batch_size=2, save_every=0
    )  # 4 steps; held-out passes of 20 batches after steps 2 and 4
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    whole = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    expected = train_reward(whole, tok, train, valid, config)

    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    stop = StopInPass(model, pass_number=2, at=5)  # the pass after step 4 (the last), in its fifth batch
    stopped = train_reward(
        model, tok, train, valid, config, should_stop=stop.should_stop, checkpoints=Checkpoints(folder)
    )
    assert stop.asked and stop.after_asked == 0 and stop.in_pass == 5 and stop.train_batches == 4 * 2
    assert stopped["stopped_early"] == 1.0 and stopped["steps"] == 4

    torch.manual_seed(0)
    second = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    resumed = train_reward(second, tok, train, valid, config, checkpoints=Checkpoints(folder))
    assert resumed["steps"] == 4 and resumed["valid_accuracy"] == expected["valid_accuracy"]
    assert resumed["valid_loss"] == expected["valid_loss"]


def test_reward_stop_during_the_bias_pass_leaves_the_bias_and_saves(tiny, tmp_path):
    train, valid = synthetic_rankings(16, seed=0), synthetic_rankings(4, seed=1)
    demos = [SFTExample(prompt=r.prompt, completion=c) for r in synthetic_rankings(20, seed=2) for c in r.completions]
    config = RewardConfig(learning_rate=1e-3, epochs=1, batch_size=8, micro_batch_size=8, eval_batch_size=4)
    tok = load_tokenizer(tiny)  # 2 steps, one held-out pass of 1 batch at the end, then 20 bias batches
    torch.manual_seed(0)
    whole = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    expected = train_reward(whole, tok, train, valid, config, demonstrations=demos)

    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    stop = StopInPass(model, pass_number=1, at=3)  # the held-out batch and the bias pass are one eval run
    stopped = train_reward(
        model,
        tok,
        train,
        valid,
        config,
        demonstrations=demos,
        should_stop=stop.should_stop,
        checkpoints=Checkpoints(folder),
    )
    assert stop.after_asked == 0 and stop.in_pass == 3  # the held-out batch, 2 of the 20 bias batches
    assert stopped["stopped_early"] == 1.0 and stopped["steps"] == 2 and "bias_shift" not in stopped
    assert [p.name for p in folder.iterdir()] == ["step-2.pt"]

    torch.manual_seed(0)
    second = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    resumed = train_reward(second, tok, train, valid, config, demonstrations=demos, checkpoints=Checkpoints(folder))
    assert resumed["bias_shift"] == expected["bias_shift"]
    assert all(torch.equal(a, b) for a, b in zip(second.state_dict().values(), whole.state_dict().values()))


@pytest.mark.slow  # two processes (about a minute)
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_a_stop_in_one_process_during_a_held_out_pass_ends_both_within_that_batch(tiny, sharding):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(port.getsockname()[1]), "-m", "tests.ddp_stops", sharding, tiny]
    port.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    processes = json.loads(done.stdout.strip().splitlines()[-1])
    # Each process's part of the held-out set is 10 batches; both leave the pass after its third.
    assert processes == [{"steps": 2.0, "in_pass": 3, "after_asked": 0}, {"steps": 2.0, "in_pass": 3, "after_asked": 0}]
