"""Does what instructloop makes work in TRL? One optimizer step each, in TRL's own environment
(bench/.venv-trl, see bench/trl_side.py):

- RewardTrainer starting from a reward-model folder that the project's trainer saved;
- SFTTrainer on the `sft` export, DPOTrainer on the `preferences` export and RewardTrainer on the
  `rankings` export (its orders expanded to chosen/rejected pairs), each in the plain and the
  conversational format, loaded with `datasets`.

    .venv/bin/python bench/trl_interop.py

Printed per check: whether it ran, its loss, and whether TRL applied the model's chat template to
the text (it does for the conversational exports; the plain ones are trained as raw strings).
The data is a small project written into a temporary SQLite database through the project's
models, exported through app.services.exports, on a tiny model built from a config."""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import trl_side  # noqa: E402

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import Completion, Demonstration, Prompt, Ranking, Split, Task, TaskCompletion, TaskKind  # noqa: E402
from app.services import accounts, exports, projects  # noqa: E402

QUESTIONS = [
    "What is two plus two?",
    "Name a colour.",
    "Say hello.",
    "Count to three.",
    "Name a fruit.",
    "What is the sky's colour?",
    "Give a number.",
    "Say goodbye.",
]
ANSWERS = ["Four.", "Blue.", "Hello!", "One, two, three.", "An apple.", "Blue, mostly.", "Seven.", "Goodbye!"]


def seed_project(url: str) -> int:
    """A project with demonstrations and K=3 rankings on train prompts."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        labeler = accounts.create_user(session, "labeler@bench.invalid", None)
        project = projects.create_project(session, projects.ProjectSettings(name="Interop", k=3))
        prompts = [
            Prompt(project_id=project.id, text=q, split=Split.train, content_hash=f"h{i}")
            for i, q in enumerate(QUESTIONS)
        ]
        session.add_all(prompts)
        session.flush()
        for prompt, answer in zip(prompts, ANSWERS):
            demo = Task(
                project_id=project.id, prompt_id=prompt.id, kind=TaskKind.demonstration, required=1, done_count=1
            )
            outputs = [Completion(prompt_id=prompt.id, text=t, source="bench") for t in (answer, "Not sure.", "No.")]
            session.add_all([demo, *outputs])
            session.flush()
            rank = Task(project_id=project.id, prompt_id=prompt.id, kind=TaskKind.ranking, required=1, done_count=1)
            rank.outputs = [TaskCompletion(completion_id=o.id, position=i) for i, o in enumerate(outputs)]
            session.add(rank)
            session.flush()
            session.add_all(
                [
                    Demonstration(task_id=demo.id, prompt_id=prompt.id, user_id=labeler.id, text=answer),
                    Ranking(task_id=rank.id, user_id=labeler.id, order=[[o.id] for o in outputs]),
                ]
            )
        session.commit()
        project_id = project.id
    engine.dispose()
    return project_id


def write_exports(url: str, project_id: int, workdir: Path) -> dict[str, str]:
    engine = make_engine(url)
    files = {}
    with make_sessionmaker(engine)() as session:
        for fmt in ("plain", "conversational"):
            f = exports.ExportFilter(project_id, format=fmt)
            for kind in ("sft", "preferences", "rankings"):
                path = workdir / f"{kind}-{fmt}.jsonl"
                path.write_text("".join(exports.jsonl_lines(session, kind, f)))
                files[f"{kind}-{fmt}"] = str(path)
            # A reward trainer wants pairs: each ranking's orders expanded, as a user of the export does.
            pairs = []
            for line in Path(files[f"rankings-{fmt}"]).read_text().splitlines():
                row = json.loads(line)
                by_id = {c["id"]: c["messages"] if fmt == "conversational" else c["text"] for c in row["completions"]}
                for i, better in enumerate(row["order"]):
                    for worse in row["order"][i + 1 :]:
                        pairs += [
                            {"prompt": row["prompt"], "chosen": by_id[a], "rejected": by_id[b]}
                            for a in better
                            for b in worse
                        ]
            path = workdir / f"rankings-pairs-{fmt}.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
            files[f"rankings-pairs-{fmt}"] = str(path)
    engine.dispose()
    return files


def train_reward_folder(policy: str, workdir: Path) -> str:
    """A reward model trained a few steps by the project's trainer and saved as it saves them."""
    from runconfig import RewardConfig
    from trainer.data import RankingExample
    from trainer.modeling import ScalarHeadModel, load_tokenizer
    from trainer.reward import train_reward

    tokenizer = load_tokenizer(policy)
    model = ScalarHeadModel.from_causal_lm(policy, device="cpu")
    rankings = [RankingExample(q, [a, "Not sure.", "No."], [[0], [1], [2]]) for q, a in zip(QUESTIONS, ANSWERS)]
    train_reward(
        model,
        tokenizer,
        rankings,
        [],
        RewardConfig(learning_rate=1e-3, batch_size=4, micro_batch_size=4, warmup_ratio=0.0),
    )
    folder = workdir / "reward-model"
    model.save_pretrained(folder, tokenizer=tokenizer)
    return str(folder)


def main() -> None:
    from trainer.tiny import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="il-interop-"))
    url = f"sqlite:///{workdir / 'interop.db'}"
    upgrade(url)
    project_id = seed_project(url)
    files = write_exports(url, project_id, workdir)
    policy = str(make_tiny_model(workdir / "policy", texts=QUESTIONS + ANSWERS + ["Not sure.", "No."]))
    spec = {
        "policy": policy,
        "reward_model": train_reward_folder(policy, workdir),
        "exports": files,
        "template_marker": "<|assistant|>",
        "threads": 1,
        "workdir": str(workdir / "trl"),
    }
    result = trl_side.run("check", spec, workdir)
    print(f"TRL {result['trl_version']}; data and models in {workdir}\n")
    print(f"{'check':<72} {'ran':>4} {'loss':>8}  chat template applied")
    for name, r in result["checks"].items():
        if r["ok"]:
            print(f"{name:<72} {'yes':>4} {r['loss']:>8.3f}  {'yes' if r['chat_template_applied'] else 'no'}")
        else:
            print(f"{name:<72} {'NO':>4}           {r['error']}")
    sys.exit(0 if all(r["ok"] for r in result["checks"].values()) else 1)


if __name__ == "__main__":
    main()
