"""The real-data demo (`instructloop demo --profile hh`, issue 26 item 4), without a run: the gold
judge's hh-rlhf pairs are disjoint from the loop's (by conversation opening), the reward models'
held-out figures, a reward run on imported pairs alone, and the clear refusal without the data."""

import json

import pytest
from click.testing import CliRunner

from app import conversation
from app.models import Prompt, RunKind
from app.services import ServiceError, imports, projects, registry, runs
from instructloop.cli import main
from tests.conftest import SHARED_DATA
from worker import gold
from worker.demo import run_demo


def _pair(turns: list[str], chosen: str, rejected: str) -> str:
    """One hh-rlhf line: the dialogue `turns` (Human first), then the two last answers."""
    text = "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))
    return json.dumps({"chosen": f"{text}\n\nAssistant: {chosen}", "rejected": f"{text}\n\nAssistant: {rejected}"})


def _openings(lines: list[str]) -> set[str]:
    return {k for line in lines if (k := gold.opening_key(line)) is not None}


def test_conversations_that_open_alike_land_on_one_side():
    # 60 openings, each as a one-turn prompt and as the start of a longer conversation.
    lines = []
    for i in range(60):
        lines.append(_pair([f"How do I bake bread number {i}?"], "Knead it.", "No idea."))
        lines.append(_pair([f"How do I bake bread number {i}?", "Knead it.", "How long?"], "An hour.", "Ten days."))
    loop, judge = gold.split_hh(lines)
    assert sorted(loop + judge) == sorted(lines)
    assert loop and judge
    assert not _openings(loop) & _openings(judge)
    assert gold.split_hh(lines) == (loop, judge)  # drawn from the text alone: the same every time


def test_the_shared_hh_file_splits_into_disjoint_loop_and_gold_projects(session):
    path = SHARED_DATA / gold.HH_FILE
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data (../shared/data) is not beside this checkout")
    lines = gold.read_lines(path)
    loop, judge = gold.split_hh(lines)
    assert len(loop) + len(judge) == len(lines) == 1554
    assert 0.4 < len(judge) / len(lines) < 0.6
    assert not _openings(loop) & _openings(judge)
    # Imported as the demo imports them, the two projects share no prompt and no opening turn.
    hashes, opens = [], []
    for name, share in (("loop", loop), ("gold", judge)):
        project = projects.create_project(session, projects.ProjectSettings(name=name))
        imports.run_import(session, project, "\n".join(share).encode(), filename="hh.jsonl", fmt="hh-rlhf")
        stored = session.query(Prompt).filter(Prompt.project_id == project.id).all()
        hashes.append({p.content_hash for p in stored})
        opens.append({imports.split_key(p.messages) for p in stored})
    session.commit()
    assert hashes[0] and hashes[1] and not hashes[0] & hashes[1]
    assert not opens[0] & opens[1]


def test_held_out_figures_against_longer_wins():
    P = [{"role": "user", "content": "q"}]
    pairs = [
        gold.HeldOutPair(P, "short one", "a much longer answer"),  # chosen shorter
        gold.HeldOutPair(P, "short two", "another much longer answer"),  # chosen shorter
        gold.HeldOutPair(P, "the chosen answer is longer", "brief"),  # chosen longer
        gold.HeldOutPair(P, "same size", "equal size"),  # equal length
    ]
    rule = gold.longer_wins(pairs)
    assert rule["accuracy"] == 0.25 and rule["accuracy_chosen_shorter"] == 0.0
    assert rule["balanced_accuracy"] == 0.5 and rule["prefers_longer"] == 1.0
    # A reward model right on one chosen-shorter pair and on the chosen-longer pair, wrong on the tie.
    figures = gold.pair_figures(pairs, [1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 1.0, 0.5])
    assert figures["accuracy"] == 0.5 and figures["chosen_shorter_pairs"] == 2
    assert figures["accuracy_chosen_shorter"] == 0.5 and figures["accuracy_chosen_longer"] == 1.0
    assert figures["balanced_accuracy"] == 0.75
    assert figures["prefers_longer"] == pytest.approx(2 / 3)  # pairs 2 and 3 of the three unequal ones


def test_a_reward_run_starts_on_imported_pairs_alone(session):
    project = projects.create_project(session, projects.ProjectSettings(name="pairs only"))
    lines = [_pair([f"Question {i}?"], f"Answer {i}.", "No.") for i in range(30)]
    imports.run_import(session, project, "\n".join(lines).encode(), filename="hh.jsonl", fmt="hh-rlhf")
    base = registry.register_base(session, "smollm2-135m-instruct")
    run = runs.create_run(session, project_id=project.id, kind="reward", input_model_ids=[base.id])
    assert run.kind == RunKind.reward and run.input_model_ids == [base.id]
    # A project with prompts and no pairs or rankings is still refused.
    empty = projects.create_project(session, projects.ProjectSettings(name="prompts only"))
    imports.run_import(session, empty, "\n".join(lines).encode(), filename="hh.jsonl", fmt="hh-rlhf", feedback=False)
    with pytest.raises(ServiceError, match="no rankings or imported pairs"):
        runs.create_run(session, project_id=empty.id, kind="reward", input_model_ids=[base.id])


def test_the_demo_refuses_clearly_without_its_data_folder(settings, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(gold.DataFolderMissing, match="no-such-folder.*does not exist.*--data"):
        run_demo(settings, "hh", data=missing, start_worker=False)
    (tmp_path / "half" / "hh-rlhf").mkdir(parents=True)
    with pytest.raises(gold.DataFolderMissing, match=r"has no hh-rlhf/helpful-base/.*oasst-en-100/"):
        run_demo(settings, "hh", data=tmp_path / "half", start_worker=False)
    env = {"DATABASE_URL": settings.db_url, "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir), "SECRET_KEY": "k"}
    r = CliRunner().invoke(main, ["demo", "--profile", "hh", "--data", str(missing)], env=env)
    assert r.exit_code == 1 and "does not exist" in r.output and "--data" in r.output
    assert not settings.data_dir.exists()  # refused before any database or worker


def test_conversation_check_accepts_the_split_keys_input():
    # opening_key checks the messages as the import does; a line the import refuses gets no key
    # and stays in the loop's share, where the import reports it.
    assert gold.opening_key("{not json") is None
    assert gold.opening_key(json.dumps({"chosen": "no turns", "rejected": "none"})) is None
    assert gold.opening_key(_pair(["Hi"], "a", "b")) == imports.split_key(
        conversation.check([_user("Hi")], max_chars=100)
    )


def _user(text: str) -> conversation.Message:
    return {"role": "user", "content": text}
