"""What a run will do (steps, examples, episodes) and about how long it will take, for the run form.

The time is model loading plus the run's units of work (a demonstration or ranking seen once, an
episode, a sampled answer) at a pace per unit, in this order of preference:

1. the newest finished run of the same kind on the same model (the same base model, or a model
   trained from it), its pace scaled by the tokens per unit of the two runs' settings and data;
2. else such a run on a model of comparable size (within 4x the parameters), scaled by parameter
   count and tokens;
3. else, for SFT and reward runs, a first guess from the model's size and this machine's CPU cores
   (a constant measured on a quiet 2-core bf16 CPU in bf16 mixed precision): none on a GPU
   machine, for sampling kinds, for another precision or a CPU without bf16 instructions, or on a
   busy machine (nothing measured holds there);
4. else no number: "no estimate" rather than a wrong one.

A finished run's loading time and per-unit time are told apart by what the run recorded: each
progress step's metrics carry the time they were written (`RunMetric.created_at`), and the attempt
log when the work began (`work_started_at`, with the models loaded: runs.record_progress), so the
time before the work is loading (and the first held-out evaluation), the time from there to the
last step is work, and the time after the last step is saving. A run from before work_started_at
was recorded needs two steps or more (the first step's time then stands for the work's start); a
one-step run of that kind takes its loading from the first-guess constants."""

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import (
    Completion,
    Demonstration,
    ModelVersion,
    Project,
    Prompt,
    RunKind,
    RunMetric,
    RunStatus,
    Split,
    Task,
    TaskKind,
    TrainingRun,
)
from app.services import ServiceError
from app.services.runs import training_examples
from runconfig import config_from_dict


@dataclass
class Estimate:
    work: str
    """What the run will do, in words."""
    units: float
    """How much work that is, in the kind's unit (examples seen, episodes, answers sampled)."""
    seconds: float | None = None
    basis: str = ""
    """Where the time comes from, or why there is none."""
    load_seconds: float | None = None
    """Of `seconds`: loading the models (and saving), apart from the work itself."""
    warnings: list[str] = field(default_factory=list)
    """What the admin should know before queueing (e.g. no held-out data to measure the model on)."""


UNITS = {
    RunKind.sft: "demonstrations",
    RunKind.reward: "rankings",
    RunKind.ppo: "episodes",
    RunKind.generate: "answers",
    RunKind.evaluate: "answers",
}
MODELS_LOADED = {RunKind.sft: 1, RunKind.reward: 1, RunKind.generate: 1, RunKind.evaluate: 3, RunKind.ppo: 4}
"""Models a run loads (evaluate: two policies and, optionally, a reward model; PPO: policy,
reference, reward and value)."""
COMPARABLE = 4.0
"""A run on a model with at most this many times (or this fraction of) the parameters sets the pace."""
RECENT_RUNS = 30
"""Finished runs of a kind looked at for a pace, newest first."""

# First-guess constant for a CPU worker, from bench/README.md's "Training precision" figures
# (SmolLM2-135M SFT, bf16 mixed, 1.18 s per step of 4 demonstrations of about 60 tokens, 2-core
# AVX512-BF16 CPU, quiet machine): useful floating-point work per second per core while training.
# It holds for bf16 mixed precision on a CPU with bf16 instructions only (_first_guess_problem).
CPU_TRAIN_FLOPS_PER_CORE = 80e9
"""Training (forward + backward, 6 N flops per token). Sampling has no measured constant: generate,
evaluate and PPO get no first guess."""
LOAD_FIXED_S = 2.0
"""Per model loaded: opening the tokenizer and the model class."""
LOAD_BYTES_PER_S = 150e6
"""Per model loaded: reading and placing fp32 weights (4 bytes per parameter)."""
CHARS_PER_TOKEN = 4.0
"""Text length to tokens, for the first guess and for scaling between runs on different data."""

KNOWN_SIZES = {"smollm2-135m-instruct": 134_515_008}
"""Parameter counts of models named without a folder to read their config from (the embedded default)."""


@dataclass(frozen=True)
class ModelInfo:
    family: str
    """The base model the version descends from (its source): runs on one family share a pace."""
    params: float | None
    name: str


@dataclass
class Pace:
    run: TrainingRun
    model: ModelInfo
    load_s: float
    """Before the first step (loading, first evaluation) and after the last (saving)."""
    per_unit_s: float
    flops_per_unit: float
    """The reference run's work per unit (tokens x parameters), to scale its pace to other settings."""
    measured_load: bool


def estimate_run(
    session: Session,
    project_id: int | None,
    kind: str,
    config: dict[str, Any],
    input_model_ids: list[int] | None = None,
    default_model: str = "",
) -> Estimate:
    """The work of a run with these settings on this project's data now, and its time (see the
    module's header). Without input models the run would start from `default_model`; with neither,
    there is no time. ServiceError when the settings are invalid."""
    try:
        run_kind = RunKind(kind)
        parsed = config_from_dict(kind, config)
    except ValueError as exc:
        raise ServiceError(str(exc), status_code=422) from None
    estimate = _work(session, project_id, run_kind, parsed)
    estimate.warnings = _warnings(session, project_id, run_kind)
    model = _model_of(session, input_model_ids or [], default_model)
    if model is None:
        estimate.basis = "Choose the model to see about how long it takes."
        return estimate
    if not estimate.units:
        estimate.basis = "Nothing to do with these settings and this data."
        return estimate
    flops = _flops_per_unit(session, project_id, run_kind, parsed, model.params)
    pace, how = _pace(session, run_kind, model)
    if pace is not None and flops is not None:
        scale = flops / pace.flops_per_unit
        size = (model.params / pace.model.params) if model.params and pace.model.params else 1.0
        estimate.load_seconds = pace.load_s * (size if how == "scaled" else 1.0)
        estimate.seconds = estimate.load_seconds + estimate.units * pace.per_unit_s * scale
        rate = pace.per_unit_s * scale
        unit = UNITS[run_kind][:-1]
        source = (
            f"run #{pace.run.id} on the same model"
            if how == "same"
            else f"run #{pace.run.id} on {pace.model.name} ({_params(pace.model.params)} parameters, "
            f"scaled to {_params(model.params)})"
        )
        estimate.basis = (
            f"At the pace of {source}: {_short(estimate.load_seconds)} loading and saving, then "
            f"{_short(rate)} per {unit} (worker {pace.run.worker_id or 'unknown'})."
        )
        return estimate
    guess = _first_guess(run_kind, model, flops, parsed)
    if guess is None:
        estimate.basis = _why_none(run_kind, model, parsed)
        return estimate
    estimate.load_seconds, per_unit, device = guess
    estimate.seconds = estimate.load_seconds + estimate.units * per_unit
    estimate.basis = (
        f"First guess: no finished {kind} run on a comparable model yet; from the model's size "
        f"({_params(model.params)} parameters) on {device}: {_short(estimate.load_seconds)} loading, "
        f"{_short(per_unit)} per {UNITS[run_kind][:-1]}."
    )
    return estimate


def _short(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def _params(n: float | None) -> str:
    if not n:
        return "unknown"
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}K"


def _count(session: Session, stmt) -> int:
    return int(session.scalar(stmt) or 0)


def _work(session: Session, project_id: int | None, kind: RunKind, config: Any) -> Estimate:
    if kind in (RunKind.sft, RunKind.reward):
        n = training_examples(session, project_id, kind, [Split.train]) if project_id else 0
        steps = math.ceil(n / config.batch_size) * config.epochs
        seen = n * config.epochs
        if config.max_steps and config.max_steps < steps:
            steps, seen = config.max_steps, min(seen, config.max_steps * config.batch_size)
        what = UNITS[kind]
        return Estimate(
            f"{steps:,} optimizer steps: {config.epochs} epoch(s) over {n:,} {what} "
            f"({seen:,} {what} seen, batches of {config.batch_size})",
            seen,
        )
    if kind == RunKind.ppo:
        steps = config.total_episodes // config.rollout_batch_size
        episodes = steps * config.rollout_batch_size
        return Estimate(
            f"{steps:,} PPO steps of {config.rollout_batch_size} episodes ({episodes:,} episodes, up to "
            f"{episodes * config.max_new_tokens:,} sampled tokens, {config.ppo_epochs} epoch(s) each)",
            episodes,
        )
    split = Split(config.split)
    stmt = select(func.count(Prompt.id)).where(Prompt.project_id == project_id, Prompt.split == split)
    if kind == RunKind.generate and config.new_prompts_only:
        stmt = stmt.where(Prompt.id.not_in(select(Task.prompt_id).where(Task.kind == TaskKind.ranking)))
    prompts = _count(session, stmt)
    limit = config.limit if kind == RunKind.generate else config.num_prompts
    prompts = min(prompts, limit) if limit else prompts
    if kind == RunKind.generate:
        project = session.get(Project, project_id) if project_id else None
        k = config.k or (project.k if project else 4)
        answers = prompts * k
        return Estimate(
            f"{answers:,} answers: {k} per prompt for {prompts:,} {split.value} prompts "
            f"(up to {config.max_new_tokens} tokens each)",
            answers,
        )
    return Estimate(f"{2 * prompts:,} answers: both models on {prompts:,} {split.value} prompts", 2 * prompts)


def _warnings(session: Session, project_id: int | None, kind: RunKind) -> list[str]:
    if kind == RunKind.reward and project_id and not training_examples(session, project_id, kind, [Split.valid]):
        return [
            "No rankings on held-out (valid) prompts: this reward model's accuracy on pairs it did not "
            "train on cannot be measured. Generate ranking tasks with split = valid and have them ranked first."
        ]
    return []


# ---------------------------------------------------------------- models


def _model_of(session: Session, input_model_ids: list[int], default_model: str) -> ModelInfo | None:
    """The model the run's pace depends on: its first input (the policy or the model trained), or
    the default model it would start from."""
    if input_model_ids:
        version = session.get(ModelVersion, input_model_ids[0])
        return _version_info(session, version) if version is not None else None
    if default_model:
        return ModelInfo(default_model.strip(), _parameter_count(default_model.strip()), default_model.strip())
    return None


def _version_info(session: Session, version: ModelVersion) -> ModelInfo:
    root, seen = version, {version.id}
    while root.parent_ids and root.parent_ids[0] not in seen:
        parent = session.get(ModelVersion, root.parent_ids[0])
        if parent is None:
            break
        seen.add(parent.id)
        root = parent
    params = _parameter_count(version.artifact_path or version.source) or _parameter_count(
        root.artifact_path or root.source
    )
    return ModelInfo(root.source, params, root.name)


def _parameter_count(location: str) -> float | None:
    if location in KNOWN_SIZES:
        return float(KNOWN_SIZES[location])
    path = Path(location).expanduser() / "config.json"
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    return _count_from_config(str(path), stat.st_mtime)


@lru_cache(maxsize=256)
def _count_from_config(path: str, _mtime: float) -> float | None:
    """Parameters of a decoder-only transformer from its config.json (Llama-style names, GPT-2's as
    fallbacks); None when it is not one of those."""
    try:
        config = json.loads(Path(path).read_text())
        h = config.get("hidden_size", config.get("n_embd"))
        layers = config.get("num_hidden_layers", config.get("n_layer"))
        vocab = config["vocab_size"]
        heads = config.get("num_attention_heads", config.get("n_head"))
        kv_heads = config.get("num_key_value_heads") or heads
        inner = config.get("intermediate_size") or config.get("n_inner") or 4 * h
        gated = "intermediate_size" in config  # Llama-style MLPs have three matrices, GPT-2's two
        kv = h * kv_heads // heads
        per_layer = 2 * h * h + 2 * h * kv + (3 if gated else 2) * h * inner
        tied = config.get("tie_word_embeddings", True)
        return float(layers * per_layer + vocab * h * (1 if tied else 2))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


# ---------------------------------------------------------------- work per unit


def _typical_tokens(session: Session, project_id: int | None) -> tuple[float, float, float]:
    """Mean tokens (from characters) of a project's prompts, demonstrations and sampled outputs."""
    if not project_id:
        return 0.0, 0.0, 0.0

    def mean(column, *where) -> float:
        value = session.scalar(select(func.avg(func.length(column))).where(*where))
        return float(value or 0) / CHARS_PER_TOKEN

    prompt = mean(Prompt.text, Prompt.project_id == project_id)
    demo = mean(
        Demonstration.text, Demonstration.prompt_id.in_(select(Prompt.id).where(Prompt.project_id == project_id))
    )
    output = mean(Completion.text, Completion.prompt_id.in_(select(Prompt.id).where(Prompt.project_id == project_id)))
    return prompt, demo, output


def _flops_per_unit(
    session: Session, project_id: int | None, kind: RunKind, config: Any, params: float | None
) -> float | None:
    """Floating-point work of one unit (a demonstration, ranking, episode or answer): 6 N per
    trained token, 2 N per forward token. Parameters unknown: per token (N = 1), which still
    scales one model's pace between settings."""
    n = params or 1.0
    prompt, demo, output = _typical_tokens(session, project_id)
    if kind == RunKind.sft:
        tokens = min(config.max_length, max(prompt + demo, 1.0))
        return 6 * n * tokens
    if kind == RunKind.reward:
        project = session.get(Project, project_id) if project_id else None
        k = project.k if project else 4
        tokens = min(config.max_length, max(prompt + (output or demo), 1.0))
        return 6 * n * tokens * k
    if kind == RunKind.ppo:
        tokens = prompt + config.max_new_tokens
        # sampling, then reference, reward and value forwards, then ppo_epochs of policy + value training
        return n * tokens * (2 + 3 * 2 + config.ppo_epochs * 12)
    return 2 * n * (prompt + config.max_new_tokens)


# ---------------------------------------------------------------- the pace of finished runs


def _pace(session: Session, kind: RunKind, model: ModelInfo) -> tuple[Pace | None, str]:
    """The pace of the newest measurable finished run of this kind on the same model ("same"), else
    on a model of comparable size ("scaled")."""
    candidates = session.scalars(
        select(TrainingRun)
        .where(
            TrainingRun.kind == kind,
            TrainingRun.status == RunStatus.succeeded,
            TrainingRun.started_at.is_not(None),
            TrainingRun.finished_at.is_not(None),
        )
        .order_by(TrainingRun.finished_at.desc())
        .limit(RECENT_RUNS)
    ).all()
    comparable: Pace | None = None
    for run in candidates:
        version = session.get(ModelVersion, run.input_model_ids[0]) if run.input_model_ids else None
        if version is None:
            continue
        info = _version_info(session, version)
        same = info.family == model.family
        close = (
            model.params is not None
            and info.params is not None
            and 1 / COMPARABLE <= model.params / info.params <= COMPARABLE
        )
        if not same and (not close or comparable is not None):
            continue
        pace = _measure(session, run, info)
        if pace is None:
            continue
        if same:
            return pace, "same"
        comparable = pace
    return comparable, "scaled"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _attempt_start(run: TrainingRun) -> tuple[datetime, int]:
    """When the run's last attempt started, and from which step (a resumed run goes on from a checkpoint)."""
    if run.attempt_log:
        last = run.attempt_log[-1]
        try:
            started = _utc(datetime.fromisoformat(last["started_at"]))
            return started, int(last.get("from_step", 0))
        except (KeyError, TypeError, ValueError):
            pass
    assert run.started_at is not None
    return _utc(run.started_at), 0


def _work_start(run: TrainingRun) -> tuple[float, datetime] | None:
    """(the steps done, when the last attempt's work began), or None when it was not recorded."""
    last = (run.attempt_log or [{}])[-1]
    try:
        return float(last["work_from"]), _utc(datetime.fromisoformat(last["work_started_at"]))
    except (KeyError, TypeError, ValueError):
        return None


def _units_done(run: TrainingRun) -> float:
    summary, counts = run.summary or {}, (run.dataset_snapshot or {}).get("counts", {})
    config = run.config or {}
    if run.kind in (RunKind.sft, RunKind.reward):
        n = counts.get("sft_train" if run.kind == RunKind.sft else "rankings_train", 0)
        return float(min(n * config.get("epochs", 1), summary.get("steps", 0) * config.get("batch_size", 1)))
    if run.kind == RunKind.ppo:
        return float(summary.get("episodes", 0))
    if run.kind == RunKind.generate:
        return float(summary.get("completions", 0))
    return float(2 * summary.get("prompts", 0))


def _measure(session: Session, run: TrainingRun, model: ModelInfo) -> Pace | None:
    """Loading (before the first step and after the last) and seconds per unit of a finished run."""
    assert run.finished_at is not None
    started, from_step = _attempt_start(run)
    finished = _utc(run.finished_at)
    units = _units_done(run)
    steps = run.progress_total or int((run.summary or {}).get("steps", 0))
    if not units or not steps or finished <= started:
        return None
    per_step_units = units / steps
    rows = session.execute(
        select(RunMetric.step, func.min(RunMetric.created_at))
        .where(RunMetric.run_id == run.id, RunMetric.step > from_step, RunMetric.created_at >= started)
        .group_by(RunMetric.step)
        .order_by(RunMetric.step)
    ).all()
    points: list[tuple[float, datetime]] = [(int(step), _utc(at)) for step, at in rows]
    work = _work_start(run)
    if work is not None and points and points[0][0] > work[0] and points[0][1] >= work[1]:
        points.insert(0, work)  # the work's start is its first point: a one-step run is measured too
    try:
        config = config_from_dict(run.kind.value, run.config or {})
    except ValueError:
        return None
    flops = _flops_per_unit(session, run.project_id, run.kind, config, model.params)
    if flops is None:
        return None
    total_s = (finished - started).total_seconds()
    done_units = (steps - from_step) * per_step_units
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        (s1, t1), (sn, tn) = points[0], points[-1]
        per_unit = (tn - t1).total_seconds() / ((sn - s1) * per_step_units)
        before = (t1 - started).total_seconds() - (s1 - from_step) * per_step_units * per_unit
        after = (finished - tn).total_seconds()
        load = max(0.0, before) + max(0.0, after)
        measured = True
    else:  # one step: loading from the first-guess constants, the rest is work
        load = min(_load_guess(run.kind, model.params), 0.8 * total_s)
        per_unit = (total_s - load) / done_units
        measured = False
    if per_unit <= 0:
        return None
    return Pace(run, model, load, per_unit, flops, measured)


# ---------------------------------------------------------------- a first guess


def gpu_present() -> bool:
    """Whether this machine shows a GPU to the worker: NVIDIA's (or ROCm's) device files. The app
    imports no torch and workers report no device, so the app host's own devices stand for the
    worker's (`instructloop serve` runs both on one machine)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd"))


def _load_guess(kind: RunKind, params: float | None) -> float:
    per_model = LOAD_FIXED_S + (4 * params / LOAD_BYTES_PER_S if params else 0.0)
    return MODELS_LOADED[kind] * per_model


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16 or AMX); without, torch emulates it about
    10x slower (an SFT step of the CPU preset took 3.5 min instead of 1.2 s on such a CPU)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


FIRST_GUESS_MIN_PARAMS = 50e6
"""The first guess's constant was measured on SmolLM2-135M; a much smaller model's run is mostly fixed
costs (starting, tokenizing, evaluating) that it does not count: the tiny demo model's SFT run was
guessed at 2 s and took 8 s."""


def _first_guess_problem(kind: RunKind, config: Any, params: float | None = None) -> str | None:
    """Why the first guess's measured constant does not hold for this run on this machine, or None."""
    if params is not None and params < FIRST_GUESS_MIN_PARAMS:
        return f"no measured first guess for a model under {FIRST_GUESS_MIN_PARAMS / 1e6:.0f}M parameters"
    if gpu_present():
        return "no measured first guess for a GPU"
    if kind not in (RunKind.sft, RunKind.reward):
        return "no measured first guess for sampling"
    if config.precision in ("bf16", "bf16-pure") and not cpu_has_bf16():
        return "this CPU has no bf16 instructions, so bf16 is emulated (set precision to fp32)"
    if config.precision != "bf16":
        # Measured once, on a CPU without bf16 instructions (AMD EPYC, fp32): SmolLM2 SFT ran 2.1x and
        # 4.7x slower than this constant said (bench/README.md, "Run-time estimates").
        return "no measured first guess for this precision on this CPU (it was measured in bf16 mixed precision)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > _cores():
        return f"this machine is busy (load {load:.1f} on {_cores()} cores)"
    return None


def _first_guess(kind: RunKind, model: ModelInfo, flops: float | None, config: Any) -> tuple[float, float, str] | None:
    """(loading s, s per unit, the device in words) from the model's size on this machine's CPU."""
    if model.params is None or flops is None or _first_guess_problem(kind, config, model.params) is not None:
        return None
    cores = _cores()
    return (
        _load_guess(kind, model.params),
        flops / (CPU_TRAIN_FLOPS_PER_CORE * cores),
        f"this machine's {cores} CPU cores",
    )


def _why_none(kind: RunKind, model: ModelInfo, config: Any) -> str:
    if model.params is None:
        return (
            f"No estimate: no finished {kind.value} run on this model yet, and its size is unknown "
            "(no config.json to read)."
        )
    return (
        f"No estimate: no finished {kind.value} run on this model or one of comparable size yet, "
        f"and {_first_guess_problem(kind, config, model.params) or 'no first guess'}."
    )
