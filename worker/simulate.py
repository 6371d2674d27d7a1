"""Simulated labelers with a known, code-checkable preference (no torch here).

They take tasks through the same queue and submission services that the web pages and the
JSON API call, under their own labeler accounts, so a project can be dry-run before people
are paid to label it (AlpacaFarm did the same with simulated annotators).

The preference (`preference_score`) rewards what code can check:
- the right answer when the prompt has a checkable reference (a number, GSM8K's "#### n",
  yes/no);
- following a length or format instruction ("in at most N words", "in one word",
  "one sentence", "a bulleted list of N items");
- staying on the subject: a fruit of the asked colour, a sentence that names its topic;
- then conciseness, which breaks the remaining ties (each word costs 0.01);
- no refusal when none is needed, and not being empty.

Noise: on each task a labeler answers at random with probability `e`, else by the
preference. Two labelers then agree on a pair with probability 0.5 + 0.5 (1 - e)^2 (when
the preference is strict), so `noise_for_agreement(0.73)` gives the paper's level.

Run it: `instructloop simulate --project NAME --labelers 5 --agreement 0.73`.
"""

import json
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import conversation
from app.db import write_session
from app.models import Project, Prompt, Role, TaskKind, User
from app.services import ServiceError, accounts, queue, submissions

FRUITS = {
    "red": ("strawberry", "cherry", "apple", "raspberry"),
    "blue": ("blueberry",),
    "green": ("lime", "kiwi", "grape", "apple"),
    "yellow": ("banana", "lemon", "pineapple"),
    "purple": ("plum", "grape", "fig"),
    "orange": ("orange", "mango", "apricot", "peach"),
}
"""Fruits of each colour that the simulated labelers accept for the demo's fruit prompts."""
REFUSALS = re.compile(r"\b(i can(no|')t|i am unable|i'm unable|i won't|as an ai|i'm sorry|i am sorry)\b", re.I)
WORD = re.compile(r"[A-Za-z0-9']+")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def noise_for_agreement(agreement: float) -> float:
    """Chance of a random answer that makes two labelers agree on `agreement` of the pairs."""
    if not 0.5 <= agreement <= 1.0:
        raise ValueError(f"agreement must be between 0.5 (chance) and 1.0, not {agreement}")
    return 1.0 - math.sqrt(2.0 * agreement - 1.0)


def reference_answer(reference: str | None) -> str | None:
    """The checkable part of a reference: GSM8K's final '#### n', a lone number, or yes/no."""
    if not reference:
        return None
    if "####" in reference:
        return reference.rsplit("####", 1)[1].strip().replace(",", "")
    ref = reference.strip().rstrip(".").lower()
    if ref in ("yes", "no") or NUMBER.fullmatch(ref):
        return ref
    return None


def preference_score(prompt: str, output: str, reference: str | None = None) -> float:
    """Higher is better. Equal scores are real ties."""
    words = WORD.findall(output)
    if not words:
        return -3.0
    score = 0.0
    answer = reference_answer(reference)
    if answer is not None:
        if answer in ("yes", "no"):
            score += 2.0 if words[0].lower() == answer else 0.0
        else:
            found = [n.rstrip(".") for n in NUMBER.findall(output.replace(",", ""))]
            score += 2.0 if found and found[0] == answer else (0.5 if answer in found else 0.0)
    p = prompt.lower()
    if m := re.search(r"at most (\d+) words", p):
        limit = int(m.group(1))
        score += 1.0 if len(words) <= limit else -0.1 * (len(words) - limit)
    if "one word" in p:
        score += 1.0 if len(words) == 1 else -0.1 * (len(words) - 1)
    if "one sentence" in p:
        sentences = [s for s in re.split(r"[.!?]+", output) if s.strip()]
        score += 1.0 if len(sentences) == 1 else 0.0
    if m := re.search(r"bulleted list of (\w+)", p):
        n = _number_word(m.group(1))
        bullets = [line for line in output.splitlines() if line.strip().startswith(("-", "*", "•"))]
        score += 1.0 if n is not None and len(bullets) == n else 0.0
    if "fruit" in p and (color := next((c for c in FRUITS if re.search(rf"\b{c}\b", p)), None)):
        first = words[0].lower()
        score += 1.0 if first in FRUITS[color] else (0.5 if any(first in f for f in FRUITS.values()) else 0.0)
    if m := re.search(r"sentence about (?:the |a |an )?([a-z]+)", p):
        topic = m.group(1).rstrip("s")
        score += 1.0 if topic in output.lower() else 0.0
        score += 0.5 if len(words) >= 4 and output.rstrip().endswith(".") else 0.0
    if REFUSALS.search(output):
        score -= 2.0
    return score - 0.01 * len(words)


def _number_word(word: str) -> int | None:
    names = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    return int(word) if word.isdigit() else names.get(word)


def order_by_score(ids: list[int], scores: list[float]) -> list[list[int]]:
    """Groups of ids, best first; equal scores share a group (a tie)."""
    groups: dict[float, list[int]] = {}
    for cid, s in zip(ids, scores, strict=True):
        groups.setdefault(s, []).append(cid)
    return [groups[s] for s in sorted(groups, reverse=True)]


def likert(score: float, best: float, worst: float) -> int:
    if best == worst:
        return 4
    return 1 + round(6 * (score - worst) / (best - worst))


PADDED = [
    "Sure! {answer} Let me know if you have any other questions about this.",
    "Good question. I think the answer is {answer} but please check it yourself.",
    "Here is my answer: {answer} I hope that this is helpful to you today.",
]


FILLER = re.compile(
    r"sure!|let me know if you have any other questions about this\.?|good question\.?|i think the answer is|"
    r"but please check it yourself\.?|here is my answer:|i hope that this is helpful to you today\.?",
    re.I,
)
"""Every phrase of the planted filler (PADDED), to judge answers without it (`without_filler`)."""


def without_filler(text: str) -> str:
    """The answer with the demonstrators' planted filler phrases taken out (what is left of a padded
    answer is its answer), so a judgement can tell the gain in form from any other gain."""
    return " ".join(FILLER.sub(" ", text).split())


def prompt_template(prompt: str) -> str:
    """Which of the demo's prompt templates (demo_prompts) a prompt comes from."""
    p = prompt.lower()
    if " plus " in p or p.startswith("add "):
        return "sum"
    if "greater than" in p or "more than" in p:
        return "yes/no"
    if "sentence about" in p:
        return "sentence"
    if "fruit" in p:
        return "fruit"
    return "other"


@dataclass
class SimulatedLabeler:
    user: User
    noise: float
    rng: random.Random
    padding_rate: float = 0.0
    """Chance that a demonstration wraps the answer in chatty filler (ignoring a length limit):
    demonstrations are imperfect, which is what the later ranking stage can fix."""

    def demonstrate(self, answer: str) -> str:
        if self.rng.random() < self.padding_rate:
            return self.rng.choice(PADDED).format(answer=answer.rstrip(".") + ".")
        return answer

    def rank(self, prompt: str, outputs: list[queue.Output], reference: str | None) -> tuple[list[list[int]], dict]:
        ids = [o.id for o in outputs]
        scores = [preference_score(prompt, o.text, reference) for o in outputs]
        if self.rng.random() < self.noise:
            scores = [self.rng.random() for _ in outputs]
        best, worst = max(scores), min(scores)
        ratings = {}
        for o, s in zip(outputs, scores, strict=True):
            flags = ["fails_to_follow"] if s < 0 else []
            ratings[str(o.id)] = {"likert": likert(s, best, worst), "flags": flags}
        return order_by_score(ids, scores), ratings

    def compare(self, prompt: str, a: str, b: str, reference: str | None) -> str:
        if self.rng.random() < self.noise:
            return self.rng.choice(["a", "b"])
        sa, sb = preference_score(prompt, a, reference), preference_score(prompt, b, reference)
        return "a" if sa > sb else "b" if sb > sa else "tie"


@dataclass
class SimulationReport:
    submitted: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, kind: TaskKind) -> None:
        self.submitted[kind.value] = self.submitted.get(kind.value, 0) + 1


def ensure_labelers(session: Session, count: int, prefix: str = "sim") -> list[User]:
    """Labeler accounts `sim-1@simulated.invalid` ...; made once, reused on later runs."""
    users = []
    for i in range(1, count + 1):
        email = f"{prefix}-{i}@simulated.invalid"
        user = session.scalar(select(User).where(User.email == email))
        if user is None:
            user = accounts.create_user(session, email, None, role=Role.labeler, name=f"{prefix} {i}", simulated=True)
        users.append(user)
    return users


def load_demonstrations(path: Path) -> dict[str, str]:
    """prompt text -> demonstration, from JSONL (prompt/completion or Alpaca instruction/input/output).
    A conversational row (prompt a message list, completion [assistant]) is keyed by the plain
    rendering of its conversation, which is what Prompt.text holds."""
    demos: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                turns: list[conversation.Message] = [
                    {"role": m["role"], "content": conversation.normalize_text(m["content"])} for m in prompt
                ]
                prompt = conversation.render(turns)
            if isinstance(completion, list):
                completion = completion[-1]["content"]
            demos[prompt.strip()] = completion
        elif "instruction" in row and "output" in row:
            prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            demos[prompt.strip()] = row["output"]
    return demos


def demonstration_for(prompt: Prompt, demos: dict[str, str]) -> str | None:
    return demos.get(prompt.text.strip()) or prompt.reference


def simulate(
    engine,
    project_id: int,
    *,
    labelers: int = 3,
    agreement: float = 0.73,
    kinds: Iterable[TaskKind] = tuple(TaskKind),
    demos: dict[str, str] | None = None,
    padding_rate: float = 0.0,
    default_lease_seconds: int = 1800,
    seed: int = 0,
    max_tasks: int | None = None,
    on_submit=None,
) -> SimulationReport:
    """Simulated labelers work the project's queues in turn until they are empty (or max_tasks)."""
    demos = demos or {}
    noise = noise_for_agreement(agreement)
    with write_session(engine) as session:
        crowd = [
            SimulatedLabeler(u, noise, random.Random(seed * 1000 + i), padding_rate)
            for i, u in enumerate(ensure_labelers(session, labelers))
        ]
    report = SimulationReport()
    done = 0
    for kind in kinds:
        working = list(crowd)  # labelers whose queue of this kind is not empty yet
        turn = 0
        while working and (max_tasks is None or done < max_tasks):
            labeler = working[turn % len(working)]
            if _work_one(engine, project_id, labeler, kind, demos, default_lease_seconds, report):
                done += 1
                turn += 1
                if on_submit is not None:
                    on_submit(kind, done)
            else:
                working.remove(labeler)
    return report


def _work_one(
    engine,
    project_id: int,
    labeler: SimulatedLabeler,
    kind: TaskKind,
    demos: dict[str, str],
    default_lease_seconds: int,
    report: SimulationReport,
) -> bool:
    """Takes and answers one task; False when this labeler's queue is empty."""
    with write_session(engine) as session:
        project = session.get_one(Project, project_id)
        user = session.get_one(User, labeler.user.id)
        task = queue.next_task(session, user.id, project, kind, default_lease_seconds=default_lease_seconds)
        if task is None:
            return False
        prompt = session.get_one(Prompt, task.prompt_id)
        try:
            if kind == TaskKind.demonstration:
                text = demonstration_for(prompt, demos)
                if not text:
                    submissions.skip(session, user, task.task_id, "skip", "no demonstration available")
                    report.skipped += 1
                    return True
                submissions.submit_demonstration(
                    session,
                    user,
                    task.task_id,
                    labeler.demonstrate(text),
                    time_spent_ms=labeler.rng.randint(20_000, 120_000),
                )
            elif kind == TaskKind.ranking:
                # The preference reads the instruction being answered: the conversation's last user turn.
                order, ratings = labeler.rank(
                    conversation.last_user_turn(prompt.messages), task.outputs, prompt.reference
                )
                submissions.submit_ranking(
                    session,
                    user,
                    task.task_id,
                    order,
                    ratings,
                    none_acceptable=all(r["likert"] <= 2 for r in ratings.values()),
                    time_spent_ms=labeler.rng.randint(30_000, 240_000),
                )
            else:
                a, b = task.outputs
                choice = labeler.compare(conversation.last_user_turn(prompt.messages), a.text, b.text, prompt.reference)
                submissions.submit_comparison(
                    session, user, task.task_id, choice, time_spent_ms=labeler.rng.randint(10_000, 60_000)
                )
        except ServiceError as exc:
            report.errors.append(f"task {task.task_id}: {exc.message}")
            submissions.skip(session, user, task.task_id, "skip", exc.message[:200])
            report.skipped += 1
            return True
    report.add(kind)
    return True


# -- a demo project whose preference code can check ---------------------------------------------

_FRUITS = {
    "red": "Strawberry",
    "blue": "Blueberry",
    "green": "Lime",
    "yellow": "Banana",
    "purple": "Plum",
    "orange": "Orange",
}
_SENTENCE = "Write one sentence about {t}, in at most {w} words."
_HELD_OUT_FRUIT_ASK = "Reply with one {c} fruit, in one word."
_FRUIT_ASKS = [
    "Name a fruit that is {c}. Answer in one word.",
    "Which fruit is {c}? Answer in one word.",
    "Give one {c} fruit, in one word.",
    "Tell me a {c} fruit. Answer in one word.",
]
_TOPICS = [
    "the sea",
    "a library",
    "winter",
    "bicycles",
    "the moon",
    "bread",
    "music",
    "a garden",
    "rain",
    "mountains",
    "a market",
    "trains",
    "coffee",
    "a river",
    "the forest",
    "snow",
    "a bridge",
    "the desert",
    "a lighthouse",
    "autumn",
    "a harbor",
    "clouds",
    "a village",
    "the stars",
]


DEMO_PROMPT_KINDS = ("sum", "yes_no", "sentence", "fruit")
HELD_OUT_COLOURS = ("purple", "orange")
HELD_OUT_TOPICS = tuple(_TOPICS[i] for i in range(2, len(_TOPICS), 3))
"""Colours and topics that only held-out prompts (demo_prompts(held_out=True)) ask about: 8 of the 24
topics and 2 of the 6 colours, so the test split asks what training never showed."""


def demo_prompts(
    n: int, seed: int = 0, kinds: tuple[str, ...] = DEMO_PROMPT_KINDS, *, held_out: bool | None = None
) -> list[tuple[str, str]]:
    """n distinct (prompt, reference answer) pairs whose instructions the simulated preference checks:
    sums and yes/no comparisons (checkable answers), length limits (one word, at most N words), and
    the subject (a fruit of a colour, a sentence about a topic). Fewer if the finite kinds run out.

    held_out=False gives only the training wordings, topics and colours; held_out=True only the
    held-out ones: each template in a wording of its own ("Add 12 and 30.", "Is 7 more than 3?",
    "Write exactly one sentence about ..."), with the held-out topics and colours, so a model is
    tested on instructions it was never trained on. None (the default): every topic and colour, in
    the training wordings."""
    rng = random.Random(seed)
    colours = [c for c in _FRUITS if held_out is None or (c in HELD_OUT_COLOURS) == held_out]
    topics = [t for t in _TOPICS if held_out is None or (t in HELD_OUT_TOPICS) == held_out]
    asks = [*_FRUIT_ASKS, _HELD_OUT_FRUIT_ASK] if held_out else _FRUIT_ASKS
    fruits = [(ask.format(c=c), _FRUITS[c]) for c in colours for ask in asks]
    sentence = "Write exactly one sentence about {t}, in at most {w} words." if held_out else _SENTENCE
    sentences = [
        (sentence.format(t=t, w=w), f"There is something calm about {t}.") for t in topics for w in range(8, 16)
    ]
    rng.shuffle(fruits)
    rng.shuffle(sentences)

    def sum_prompt():
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        ask = "Add {a} and {b}." if held_out else "What is {a} plus {b}?"
        return ask.format(a=a, b=b) + " Answer in at most 5 words.", str(a + b)

    def yes_no_prompt():
        x, y = rng.sample(range(1, 100), 2)
        ask = "Is {x} more than {y}?" if held_out else "Is {x} greater than {y}?"
        return ask.format(x=x, y=y) + " Answer in one word: yes or no.", "yes" if x > y else "no"

    all_makers = {
        "sum": sum_prompt,
        "yes_no": yes_no_prompt,
        "sentence": lambda: sentences.pop() if sentences else None,
        "fruit": lambda: fruits.pop() if fruits else None,
    }
    unknown = set(kinds) - set(all_makers)
    if unknown or not kinds:
        raise ValueError(f"Unknown demo prompt kinds {sorted(unknown)}; use some of {', '.join(all_makers)}.")
    makers = [all_makers[k] for k in kinds]
    out: dict[str, str] = {}
    turn = 0
    while len(out) < n and turn < 50 * n:
        pair = makers[turn % len(makers)]()
        turn += 1
        if pair is not None:
            out.setdefault(*pair)
    return list(out.items())
