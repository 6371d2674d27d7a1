"""The worker hands the trainer conversations: snapshots carry Prompt.messages (and manifests their
turns), and a generate run samples from the whole conversation, cut at whole turns to fit."""

import pytest
from sqlalchemy import select

from app.models import Completion, Demonstration, RunStatus
from app.services import tasks
from runconfig import config_from_dict
from tests.worker_helpers import (
    add_ranking,
    base_version,
    fast_settings,
    make_conversation,
    make_labeler,
    make_project,
    make_prompts,
    one_torch_thread,
    queue_raw,
    run_status,
)
from trainer import modeling
from trainer.generate import sample_batches
from trainer.tiny import make_tiny_model
from worker.snapshots import snapshot_demonstrations, snapshot_prompts, snapshot_rankings
from worker.worker import Worker

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

DIALOGUE = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And a third?"},
]


def _ran(settings, run_id: int):
    """The run as it ended after a worker took it."""
    worker = Worker(fast_settings(settings), device="cpu")
    try:
        assert worker.run_next()
        done = run_status(worker.engine, run_id)
    finally:
        worker.engine.dispose()
    assert done.status == RunStatus.succeeded, done.error
    return done


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [m["content"] for m in DIALOGUE] + ["Green.", "Count on from 1."]
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=texts)


def test_snapshots_carry_the_conversation(session):
    project = make_project(session)
    labeler = make_labeler(session)
    single = make_prompts(session, project, ["Count on from 1."])[0]
    chat = make_conversation(session, project, DIALOGUE)
    for prompt, answer in ((single, "2 3 4 5"), (chat, "Green.")):
        (task,) = tasks.create_demonstration_tasks(session, project, [prompt])
        session.add(Demonstration(task_id=task.id, prompt_id=prompt.id, user_id=labeler.id, text=answer))
    add_ranking(session, project, chat, ["Green.", "I like turtles."], [[0], [1]], labeler)
    session.commit()

    train, valid, snap = snapshot_demonstrations(session, project.id)
    # A single user turn goes as its text, which the trainer reads as that one message.
    assert [(e.prompt, e.completion) for e in train + valid] == [("Count on from 1.", "2 3 4 5"), (DIALOGUE, "Green.")]
    # A single turn stays its text in the manifest (the hash of an older snapshot still matches);
    # a conversation is its [role, content] turns, readable as they are.
    assert snap.manifest[0][4] == "Count on from 1."
    assert snap.manifest[1][4] == [[m["role"], m["content"]] for m in DIALOGUE] and snap.manifest[1][-1] == "Green."

    rankings, _, ranking_snap = snapshot_rankings(session, project.id)
    assert [r.prompt for r in rankings] == [DIALOGUE] and ranking_snap.manifest[0][4][-1] == ["user", "And a third?"]

    items, prompt_snap = snapshot_prompts(session, project.id, ["train"])
    assert [i.prompt for i in items] == ["Count on from 1.", DIALOGUE]
    assert items[1].text == chat.text and "Assistant: Red." in items[1].text
    assert prompt_snap.manifest[0][3] == "Count on from 1." and prompt_snap.manifest[1][3][0] == [
        "system",
        "Answer briefly.",
    ]


def test_generate_samples_from_the_whole_conversation_cut_at_whole_turns(settings, session, tiny):
    project = make_project(session, k=2)
    chat = make_conversation(session, project, DIALOGUE)
    tokenizer = modeling.load_tokenizer(str(tiny))
    # Longer than the 512-token context with its first turn, short enough without it.
    long_turns = [{"role": "user", "content": "Blue. " * 300}, {"role": "assistant", "content": "Red."}]
    long_chat = make_conversation(session, project, [DIALOGUE[0], *long_turns, *DIALOGUE[1:]])
    assert len(modeling.encode_prompt(tokenizer, [DIALOGUE[0], *long_turns, *DIALOGUE[1:]])) > 512
    version = base_version(session, tiny)
    run = queue_raw(session, project, "generate", {"max_new_tokens": 4, "batch_size": 2, "seed": 1}, [version])
    session.commit()
    done = _ran(settings, run.id)
    assert done.summary["ranking_tasks"] == 2 and done.dataset_snapshot["rows"]["prompts"] == [
        chat.id,
        long_chat.id,
    ]
    (note,) = done.dataset_snapshot["notes"]
    assert note.startswith(f"Model version {version}: 1 conversation(s) lost their oldest turns") and (
        f"ids [{long_chat.id}]" in note
    )
    # The stored samples are the model's answers to the conversations (the long one without its
    # first pair of turns, which leaves DIALOGUE), not to their plain renderings.
    session.expire_all()
    stored = session.scalars(select(Completion).order_by(Completion.id)).all()
    assert [c.prompt_id for c in stored] == [chat.id, chat.id, long_chat.id, long_chat.id]
    config = config_from_dict("generate", {"max_new_tokens": 4, "batch_size": 2, "seed": 1})
    model = modeling.load_causal_lm(str(tiny), device="cpu")
    kwargs = dict(k=2, temperature=config.temperature, top_p=config.top_p, max_new_tokens=4, seed=1, batch_size=2)
    ((_, expected),) = sample_batches(model, tokenizer, [DIALOGUE, DIALOGUE], **kwargs)
    assert [c.text for c in stored] == [s.text for per_prompt in expected for s in per_prompt]
    ((_, rendered),) = sample_batches(model, tokenizer, [chat.text, long_chat.text], **kwargs)
    assert [s.text for per_prompt in rendered for s in per_prompt] != [c.text for c in stored]


def test_a_ppo_run_fits_its_prompts_to_max_prompt_length(settings, session, tiny, tmp_path):
    """max_prompt_length bounds what PPO rolls out from (and so its cost on long conversations): a
    conversation over it loses its oldest whole turns, a single turn over it is left out, and the
    run's snapshot names both and keeps only the prompts it used."""
    from tests.test_worker_resume import _inputs

    project = make_project(session)
    inputs = _inputs(session, project, tiny, "ppo", tmp_path)  # COUNTING's short prompts
    chat = make_conversation(session, project, DIALOGUE)
    tokenizer = modeling.load_tokenizer(str(tiny))
    limit = len(modeling.encode_prompt(tokenizer, DIALOGUE)) - 1  # the whole dialogue is one token over
    assert len(modeling.encode_prompt(tokenizer, [DIALOGUE[0], *DIALOGUE[3:]])) <= limit
    (rambling,) = make_prompts(session, project, ["Count on " * 40])
    config = {"total_episodes": 8, "rollout_batch_size": 8, "minibatch_size": 4, "max_new_tokens": 4}
    run = queue_raw(session, project, "ppo", {**config, "max_prompt_length": limit}, inputs)
    session.commit()
    done = _ran(settings, run.id)
    snap = done.dataset_snapshot
    assert chat.id in snap["rows"]["prompts"] and rambling.id not in snap["rows"]["prompts"]
    skipped, cut = snap["notes"]
    assert skipped.startswith(f"Model version {inputs[0]}: skipped 1 prompt(s)") and f"ids [{rambling.id}]" in skipped
    assert f"max_prompt_length={limit}" in skipped and f"ids [{chat.id}]" in cut and "oldest turns" in cut
