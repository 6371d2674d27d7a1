"""Simulated labelers: a checkable preference, a tunable agreement, and work through the real queue."""

import json
import random
from itertools import combinations

import pytest
from sqlalchemy import func, select

from app.db import write_session
from app.models import Comparison, Completion, Demonstration, Project, Prompt, Ranking, TaskKind
from app.services import tasks
from app.services.queue import Output
from worker.simulate import (
    PADDED,
    SimulatedLabeler,
    demo_prompts,
    demonstration_for,
    load_demonstrations,
    noise_for_agreement,
    order_by_score,
    preference_score,
    prompt_template,
    simulate,
    without_filler,
)


def test_preference_checks_answer_length_format_and_refusal():
    p = "What is 2 plus 3? Answer in at most 5 words."
    assert preference_score(p, "5", "5") > preference_score(p, "6", "5")
    assert preference_score(p, "It is 5", "5") > preference_score(p, "The answer you want is clearly 5 here", "5")
    assert preference_score(p, "I'm sorry, I can't do math.", "5") < preference_score(p, "7", "5")
    assert preference_score(p, "", "5") < preference_score(p, "7", "5")
    q = "Is 9 greater than 3? Answer in one word: yes or no."
    assert preference_score(q, "Yes", "yes") > preference_score(q, "No", "yes")
    gsm = "Tom has 3 apples and buys 4. How many?"
    assert preference_score(gsm, "He has 7 apples.", "3 + 4 = 7\n#### 7") > preference_score(gsm, "He has 8.", "#### 7")
    lst = "Give a bulleted list of three fruits."
    assert preference_score(lst, "- a\n- b\n- c", None) > preference_score(lst, "- a\n- b", None)


def test_ties_share_a_place():
    assert order_by_score([1, 2, 3], [0.5, 1.0, 0.5]) == [[2], [1, 3]]


@pytest.mark.parametrize("target", [0.6, 0.73, 0.9])
def test_agreement_matches_the_target(target):
    noise = noise_for_agreement(target)
    rng = random.Random(1)
    a = SimulatedLabeler(user=None, noise=noise, rng=random.Random(2))
    b = SimulatedLabeler(user=None, noise=noise, rng=random.Random(3))
    agree = total = 0
    for _ in range(3000):
        prompt = "What is 1 plus 1? Answer in at most 5 words."
        outputs = [Output(i, t) for i, t in enumerate(["2", "It is 2", "3", "I can't", "two plus"])]
        rng.shuffle(outputs)
        ranks = []
        for labeler in (a, b):
            order, _ = labeler.rank(prompt, outputs, "2")
            ranks.append({cid: place for place, group in enumerate(order) for cid in group})
        for x, y in combinations(range(5), 2):
            da, db = ranks[0][x] - ranks[0][y], ranks[1][x] - ranks[1][y]
            if da and db:
                total += 1
                agree += (da > 0) == (db > 0)
    assert abs(agree / total - target) < 0.03
    with pytest.raises(ValueError, match="between 0.5"):
        noise_for_agreement(0.3)


def test_simulated_labelers_work_the_real_queue(engine, session):
    project = Project(name="sim", k=3, overlap=2)
    session.add(project)
    session.flush()
    prompts = [
        Prompt(project_id=project.id, text=t, reference=r, content_hash=str(i))
        for i, (t, r) in enumerate(demo_prompts(8))
    ]
    session.add_all(prompts)
    session.flush()
    tasks.create_demonstration_tasks(session, project, prompts)
    for prompt in prompts[:4]:
        comps = [Completion(prompt_id=prompt.id, text=t) for t in (prompt.reference, "I can't help", "maybe 1000")]
        session.add_all(comps)
        session.flush()
        tasks.create_ranking_task(session, project, prompt, [c.id for c in comps])
        tasks.create_comparison_task(session, project, prompt, comps[0].id, comps[1].id)
    session.commit()

    report = simulate(engine, project.id, labelers=3, agreement=0.9, seed=0)
    assert report.errors == []
    assert report.submitted == {"demonstration": 16, "ranking": 8, "comparison": 8}
    with write_session(engine) as s:
        assert s.scalar(select(func.count(Demonstration.id))) == 16
        assert s.scalar(select(func.count(Ranking.id))) == 8
        # each task got exactly its overlap, from different labelers
        per_task = s.execute(
            select(Ranking.task_id, func.count(func.distinct(Ranking.user_id))).group_by(Ranking.task_id)
        ).all()
        assert all(n == 2 for _, n in per_task)
        # the reference answer beats a refusal, whichever side it was shown on
        refs = {c.id for c in s.scalars(select(Completion)) if c.text == c.prompt.reference}
        wins = [
            (c.a_completion_id if c.choice.value == "a" else c.b_completion_id) in refs
            for c in s.scalars(select(Comparison))
            if c.choice.value != "tie"
        ]
        assert len(wins) == 8 and sum(wins) >= 7
    # a second pass finds nothing left to do
    assert simulate(engine, project.id, labelers=3, seed=1).submitted == {}


def test_padding_rate_makes_demonstrations_ignore_length_limits():
    labeler = SimulatedLabeler(user=None, noise=0.0, rng=random.Random(0), padding_rate=0.5)
    demos = [labeler.demonstrate("42") for _ in range(400)]
    padded = [d for d in demos if d != "42"]
    assert 150 < len(padded) < 250 and all("42." in d for d in padded)
    prompt = "What is 40 plus 2? Answer in at most 5 words."
    assert all(preference_score(prompt, d, "42") < preference_score(prompt, "42", "42") for d in padded)


def test_simulate_command(settings, session):
    from click.testing import CliRunner

    from instructloop.cli import main

    project = Project(name="cli sim", k=2, overlap=1)
    session.add(project)
    session.flush()
    prompts = [
        Prompt(project_id=project.id, text=t, reference=r, content_hash=str(i))
        for i, (t, r) in enumerate(demo_prompts(5))
    ]
    session.add_all(prompts)
    session.flush()
    tasks.create_demonstration_tasks(session, project, prompts)
    session.commit()
    env = {"DATABASE_URL": settings.db_url, "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir), "SECRET_KEY": "k"}
    r = CliRunner().invoke(main, ["simulate", "--project", "cli sim", "--labelers", "2"], env=env)
    assert r.exit_code == 0, r.output
    assert "demonstration: 5 submitted" in r.output
    r = CliRunner().invoke(main, ["simulate", "--project", "nope"], env=env)
    assert r.exit_code == 1 and "nope" in r.output
    r = CliRunner().invoke(main, ["simulate", "--project", "cli sim", "--agreement", "0.2"], env=env)
    assert r.exit_code == 2 and "between 0.5" in r.output


def test_preference_checks_the_subject():
    fruit = "Name a fruit that is yellow. Answer in one word."
    assert (
        preference_score(fruit, "Banana", None)
        > preference_score(fruit, "Plum", None)
        > preference_score(fruit, "yes", None)
    )
    sentence = "Write one sentence about the moon, in at most 10 words."
    assert (
        preference_score(sentence, "The moon is bright tonight.", None)
        > preference_score(sentence, "The sea is bright tonight.", None)
        > preference_score(sentence, "oo", None)
    )


def test_on_a_conversation_labelers_judge_by_its_last_user_turn(engine, session, tmp_path):
    """The instruction being answered is the last user turn's: an earlier "in one word" no longer holds."""
    project = Project(name="chat", k=2, overlap=1)
    session.add(project)
    session.flush()
    messages = [
        {"role": "user", "content": "Name a red fruit in one word."},
        {"role": "assistant", "content": "Cherry"},
        {"role": "user", "content": "Now give a bulleted list of three red fruits."},
    ]
    prompt = Prompt(project_id=project.id, messages=messages, content_hash="chat")
    session.add(prompt)
    session.flush()
    one_word, bullets = (
        Completion(prompt_id=prompt.id, text="Cherry"),
        Completion(prompt_id=prompt.id, text="- cherry\n- apple\n- strawberry"),
    )
    session.add_all([one_word, bullets])
    session.flush()
    tasks.create_ranking_task(session, project, prompt, [one_word.id, bullets.id])
    session.commit()
    report = simulate(engine, project.id, labelers=1, agreement=1.0, kinds=[TaskKind.ranking])
    assert report.errors == [] and report.submitted == {"ranking": 1}
    with write_session(engine) as s:
        assert s.scalar(select(Ranking.order)) == [[bullets.id], [one_word.id]]

    # Demonstrations from a conversational export are found by the conversation's plain rendering.
    path = tmp_path / "demos.jsonl"
    path.write_text(
        json.dumps({"prompt": messages, "completion": [{"role": "assistant", "content": "- a\n- b\n- c"}]}) + "\n"
    )
    assert demonstration_for(prompt, load_demonstrations(path)) == "- a\n- b\n- c"


def test_the_planted_filler_comes_out_and_prompts_name_their_template():
    padded = [t.format(answer="Plum.") for t in PADDED]
    assert [without_filler(p) for p in padded] == ["Plum."] * len(padded)
    assert without_filler("Plum, I think.") == "Plum, I think.", "only the planted phrases go"
    assert {prompt_template(p) for p, _ in demo_prompts(40, seed=3)} == {"sum", "yes/no", "sentence", "fruit"}


def _subject(prompt: str) -> str:
    """A demo prompt's topic or colour, or its wording for sums and yes/no questions."""
    p = prompt.lower()
    if "sentence about" in p:
        return p.split("sentence about ", 1)[1].split(",")[0]
    if "fruit" in p:
        return next(c for c in ("red", "blue", "green", "yellow", "purple", "orange") if f" {c}" in p)
    return p.split()[0] + " " + ("plus" if " plus " in p else "more" if " more " in p else p.split()[2])


def test_held_out_prompts_ask_what_the_training_prompts_never_do():
    seen = demo_prompts(240, seed=1, held_out=False)
    unseen = demo_prompts(160, seed=1, held_out=True)
    assert len(seen) == 240 and len(unseen) == 160
    seen_subjects = {_subject(p) for p, _ in seen}
    unseen_subjects = {_subject(p) for p, _ in unseen}
    assert not seen_subjects & unseen_subjects, "no topic, colour or wording in both"
    assert {"purple", "orange", "the desert"} <= unseen_subjects
    # Every template is held out and still recognised and judged by the same preference.
    assert {prompt_template(p) for p, _ in unseen} == {"sum", "yes/no", "sentence", "fruit"}
    for p, ref in unseen[:8]:
        assert preference_score(p, ref, ref) > preference_score(p, "Sure! " + ref + " I hope this helps you.", ref)


def test_the_cpu_demo_tests_only_on_held_out_prompts(settings):
    from dataclasses import replace

    from worker.demo import PROFILES, Demo

    demo = Demo(settings, replace(PROFILES["cpu"], prompts=100), echo=lambda _line: None, start_worker=False)
    project_id = demo._create_project()
    with demo.sessions() as s:
        rows = s.execute(select(Prompt.text, Prompt.split).where(Prompt.project_id == project_id)).all()
    test = {_subject(t) for t, split in rows if split.value == "test"}
    rest = {_subject(t) for t, split in rows if split.value != "test"}
    assert sum(split.value == "test" for _, split in rows) == 40
    assert {split.value for _, split in rows} == {"train", "valid", "test"}
    assert test and not test & rest
