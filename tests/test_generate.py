"""`generate` runs: K seeded samples per prompt with their settings, stored and turned into ranking tasks."""

import pytest
from sqlalchemy import func, select

from app.models import Completion, RunMetric, RunStatus, TaskCompletion
from tests.worker_helpers import (
    COUNTING,
    base_version,
    fast_settings,
    make_project,
    make_prompts,
    one_torch_thread,
    queue_raw,
    ranking_tasks,
    run_status,
)
from trainer import modeling
from trainer.generate import _to_sample, sample_batches
from trainer.rollout import completion_from
from trainer.tiny import make_tiny_model
from worker.snapshots import snapshot_prompts
from worker.worker import Worker

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=[p + " " + a for p, a in COUNTING])


def test_sampling_is_seeded_and_counts_tokens(tiny):
    tokenizer = modeling.load_tokenizer(str(tiny))
    model = modeling.load_causal_lm(str(tiny), device="cpu")
    prompts = [p for p, _ in COUNTING[:3]]
    kwargs = dict(k=2, temperature=1.0, top_p=0.9, max_new_tokens=6, batch_size=2)
    first = [s for _, batch in sample_batches(model, tokenizer, prompts, seed=1, **kwargs) for s in batch]
    again = [s for _, batch in sample_batches(model, tokenizer, prompts, seed=1, **kwargs) for s in batch]
    other = [s for _, batch in sample_batches(model, tokenizer, prompts, seed=2, **kwargs) for s in batch]
    assert len(first) == 3 and all(len(per_prompt) == 2 for per_prompt in first)
    assert first == again and first != other
    for sample in (s for per_prompt in first for s in per_prompt):
        assert sample.num_tokens <= 6 and (sample.ended_with_eos or sample.num_tokens == 6)
    # Stopping between batches: nothing after the first batch.
    stop = []
    batches = sample_batches(model, tokenizer, prompts, seed=1, should_stop=lambda: bool(stop), **kwargs)
    starts = []
    for start, _ in batches:
        starts.append(start)
        stop.append(True)  # a cancel arrives while the first batch is being stored
    assert starts == [0]


def test_a_stop_ends_sampling_within_a_token_and_yields_no_cut_batch(tiny):
    # Issue 28: a cancel was read only between batches, so a batch covering the whole run sampled
    # to its end (6 minutes on the CPU preset) and was published.
    tokenizer = modeling.load_tokenizer(str(tiny))
    model = modeling.load_causal_lm(str(tiny), device="cpu")
    asked = []

    def should_stop() -> bool:  # a cancel that arrives after the second new token
        asked.append(1)
        return len(asked) > 3

    kwargs = dict(k=2, temperature=1.0, top_p=1.0, max_new_tokens=200, batch_size=8)
    prompts = [p for p, _ in COUNTING[:3]]
    assert list(sample_batches(model, tokenizer, prompts, seed=1, should_stop=should_stop, **kwargs)) == []
    assert len(asked) <= 6, "asked once per new token, and sampling ended at the first yes"


def test_a_sample_ends_at_eos_and_drops_padding(tiny):
    tokenizer = modeling.load_tokenizer(str(tiny))
    words = tokenizer("one two", add_special_tokens=False).input_ids
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended = _to_sample(completion_from(words + [eos, pad, pad], [eos]), tokenizer, [eos])
    assert (ended.text, ended.ended_with_eos, ended.num_tokens) == ("one two", True, len(words) + 1)
    cut = _to_sample(completion_from(words, [eos]), tokenizer, [eos])
    assert (cut.text, cut.ended_with_eos, cut.num_tokens) == ("one two", False, len(words))
    nul = _to_sample(completion_from(tokenizer("a\x00b", add_special_tokens=False).input_ids, [eos]), tokenizer, [eos])
    assert nul.text == "ab"  # Postgres text cannot store NUL


def test_generate_run_stores_outputs_and_ranking_tasks(settings, session, tiny):
    project = make_project(session, k=3)
    prompts = make_prompts(session, project, [p for p, _ in COUNTING[:5]])
    long_prompt = make_prompts(session, project, ["story " * 600])[0]  # longer than the 512-token context
    version = base_version(session, tiny)
    config = {"max_new_tokens": 8, "batch_size": 2, "seed": 7, "temperature": 0.9, "top_p": 0.95}
    run = queue_raw(session, project, "generate", config, [version])
    session.commit()
    worker = Worker(fast_settings(settings), device="cpu")
    try:
        assert worker.run_next()
        done = run_status(worker.engine, run.id)
        assert done.status == RunStatus.succeeded, done.error
        assert done.summary["ranking_tasks"] == 5 and done.summary["completions"] == 15 and done.summary["k"] == 3
        assert done.summary["rollout_backend"] == "hf"  # auto on a CPU
        assert done.dataset_snapshot["rows"]["prompts"] == [p.id for p in prompts]
        assert len(done.dataset_snapshot["sha256"]) == 64
        assert f"ids [{long_prompt.id}]" in done.dataset_snapshot["notes"][0]
        # The hash covers the prompts used, not the one skipped.
        session.expire_all()
        assert done.dataset_snapshot["sha256"] == snapshot_prompts(session, project.id, ["train"], limit=5)[1].sha256
        assert (done.progress_step, done.progress_total) == (5, 5)

        session.expire_all()
        made = ranking_tasks(session, run.id)
        assert sorted(t.prompt_id for t in made) == [p.id for p in prompts]
        outputs = session.scalars(
            select(Completion).join(TaskCompletion).where(TaskCompletion.task_id.in_([t.id for t in made]))
        ).all()
        assert len(outputs) == 15 and {o.model_version_id for o in outputs} == {version}
        settings_stored = outputs[0].generation
        assert settings_stored["temperature"] == 0.9 and settings_stored["top_p"] == 0.95
        assert (
            settings_stored["max_new_tokens"] == 8
            and settings_stored["seed"] == 7
            and settings_stored["run_id"] == run.id
        )
        assert all(isinstance(o.generation["ended_with_eos"], bool) for o in outputs)
        steps = session.scalars(
            select(RunMetric.step).where(RunMetric.run_id == run.id, RunMetric.name == "eos_fraction")
        )
        assert list(steps) == [2, 4, 5]

        # The same prompts, model and seed again give the same outputs.
        rerun = queue_raw(session, project, "generate", {**config, "new_prompts_only": False, "limit": 5}, [version])
        # With new_prompts_only, only the too-long prompt is left: a clear failure.
        empty = queue_raw(session, project, "generate", {**config, "limit": 5}, [version])
        session.commit()
        assert worker.run_next() and worker.run_next()
        session.expire_all()

        def texts(run_id: int) -> list[str]:
            by_run = Completion.generation["run_id"].as_integer() == run_id
            return [c.text for c in session.scalars(select(Completion).where(by_run).order_by(Completion.id))]

        assert texts(rerun.id) == texts(run.id)
        failed = run_status(worker.engine, empty.id)
        assert failed.status == RunStatus.failed
        assert failed.error.startswith(
            "Every selected prompt is too long for the model's context with max_new_tokens=8"
        )
        assert session.scalar(select(func.count(Completion.id))) == 30
    finally:
        worker.engine.dispose()
