"""Run settings: one pydantic model per run kind, shared by the web app (forms, API, validation
before a run is queued) and the trainer (which reads them back from the run row). Neither torch
nor the app is imported here, so both sides may import this module without a package cycle.

Defaults follow the InstructGPT paper (Ouyang et al. 2022, appendix C), scaled for small models.
Each field's docstring is its documentation (`use_attribute_docstrings`): the run forms and
`GET /api/v1/run-configs` show it.

Pydantic checks the settings itself: each field's bounds (`Field(ge=..., le=...)`) and choices
(`Literal`), and each model's `rules` across fields (a `model_validator`). `config_from_dict(kind,
values)` is the one way in from JSON (API, dashboard, database): it words pydantic's errors for
people and lists every problem at once.

`DataFilter` is a run's data selection (TrainingRun.data_filter, kept as JSON); `data_filter_from_dict`
checks the one a person asks for."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

SplitName = Literal["train", "valid", "test"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16", "bf16-pure"]  # see trainer/precision.py
ShardingName = Literal["ddp", "fsdp"]  # see trainer/distributed.py
SPLITS: tuple[str, ...] = get_args(SplitName)
SourceName = Literal["labelers", "imported"]
"""Whose data a run takes (DataFilter.sources): labelers' submissions, imported feedback."""
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)
SHARDINGS: tuple[str, ...] = get_args(ShardingName)
INT_MAX = 2**31 - 1  # every integer setting fits the database's integer


@dataclass(frozen=True)
class Words:
    """How `config_from_dict` words an out-of-range setting (Annotated metadata, which pydantic
    ignores). `zero`: what 0 means, for a setting that is 0 or positive ("0 (all epochs) or
    positive"); `range`: the allowed values in words, said instead of the bound that was broken;
    `name`: the setting as the message names it."""

    zero: str = ""
    range: str = ""
    name: str = ""


@dataclass(frozen=True)
class Rule:
    """A rule across settings: `problem(config)` says what is wrong, or None. `config_from_dict`
    checks it even while other settings are invalid, unless one of its `fields` is among them."""

    fields: tuple[str, ...]
    problem: Callable[[Any], str | None]


# Reused field types (the bounds keep a run possible to finish and its integers in the database's).
BatchSize = Annotated[int, Field(ge=1, le=65536)]
LoraRank = Annotated[int, Field(ge=0, le=4096)]
Seed = Annotated[int, Field(ge=-INT_MAX, le=INT_MAX)]
LearningRate = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxNewTokens = Annotated[int, Field(ge=1, le=4096), Words(range="between 1 and 4096")]
MaxLength = Annotated[int, Field(ge=8, le=32768), Words(range="between 8 and 32768 tokens")]
SaveEvery = Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="only when stopped")]
RolloutBackend = Annotated[
    Literal["auto", "hf", "vllm"],
    Words(range="auto, hf or vllm (vllm needs `make install-vllm` in the worker's environment)"),
]  # see trainer/rollout.py
MaxSteps = Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="all epochs")]


Precision = Annotated[
    PrecisionName,
    Field(
        description="Training precision: auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU), "
        "fp32, bf16 or fp16 (mixed: fp32 master weights under autocast), or bf16-pure (half the memory, but small "
        "updates round away: only for a model that does not fit otherwise)."
    ),
]


Sharding = Annotated[
    ShardingName,
    Field(
        description="How several processes (instructloop worker --processes N, accelerate launch) share the "
        "training: ddp (each holds the whole model and optimizer; fastest when they fit one GPU) or fsdp (weights, "
        "gradients and optimizer state split across the processes: for full fine-tunes that do not fit one GPU; "
        "not with LoRA, whose adapters are small). One process ignores it."
    ),
]


def _divides(part: str, whole: str, why: str = "") -> Rule:
    def problem(config: Any) -> str | None:
        p, w = getattr(config, part), getattr(config, whole)
        return f"{part} ({p}) must divide {whole} ({w}){why}." if w % p else None

    return Rule((part, whole), problem)


def _no_fsdp_with_lora(*ranks: str) -> Rule:
    def problem(config: Any) -> str | None:
        if config.sharding == "fsdp" and any(getattr(config, rank) for rank in ranks):
            return "sharding=fsdp splits fully fine-tuned models; LoRA adapters are small: use ddp with lora_r."
        return None

    return Rule(("sharding", *ranks), problem)


class RunConfig(BaseModel):
    """Strict JSON types: an int is accepted where a float is wanted, a bool never as a number."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True, validate_assignment=True
    )
    rules: ClassVar[tuple[Rule, ...]] = ()
    """Rules across settings (each setting alone is checked by its field's type and bounds)."""

    def problems(self, skip: Collection[str] = ()) -> list[str]:
        """What the rules find, leaving out the rules about a setting in `skip`."""
        return [
            problem
            for rule in self.rules
            if not set(rule.fields) & set(skip) and (problem := rule.problem(self)) is not None
        ]

    def __setattr__(self, name: str, value: Any) -> None:
        """An assignment the rules refuse is undone: pydantic keeps it otherwise (pydantic#7105)."""
        before = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            if name in type(self).model_fields:
                self.__dict__[name] = before
            raise

    @model_validator(mode="after")
    def _follows_the_rules(self) -> Self:
        problems = self.problems()
        if problems:
            raise ValueError(" ".join(problems))
        return self


class SFTConfig(RunConfig):
    """`sft`: supervised fine-tuning on the accepted demonstrations, loss on the response tokens
    only (InstructGPT appendix C.1: cosine decay, batch 32; 16 epochs there, fewer here because
    small models on small data overfit sooner). Input model: the base (or an earlier SFT) model."""

    learning_rate: LearningRate = 2e-5
    """Peak AdamW learning rate (paper: 9.65e-6 at 1.3B; small models take a larger one)."""
    epochs: Annotated[int, Field(ge=1, le=1000)] = 3
    """Passes over the training demonstrations."""
    batch_size: BatchSize = 32
    """Demonstrations per optimizer step (paper: 32)."""
    micro_batch_size: BatchSize = 8
    """Demonstrations per forward pass; batch_size / micro_batch_size gradients are accumulated."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    """Share of the steps with a linear warmup before the cosine decay."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    """The cosine schedule ends at learning_rate * min_lr_ratio."""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay."""
    max_grad_norm: Positive = 1.0
    """Gradients are clipped to this global norm."""
    max_length: MaxLength = 1024
    """Longest prompt + response in tokens; longer responses are cut (they then have no EOS)."""
    max_prompt_length: Annotated[int, Field(ge=1, le=INT_MAX)] = 512
    """Longest prompt in tokens; longer prompts keep their end (the part next to the answer)."""
    eval_every: Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="once per epoch")] = 0
    """Optimizer steps between held-out evaluations; 0 evaluates once per epoch."""
    eval_batch_size: BatchSize = 16
    """Demonstrations per forward pass when computing the held-out loss."""
    keep_best: bool = True
    """Return the weights with the lowest held-out loss seen (not the last ones) when there is a valid split."""
    max_steps: MaxSteps = 0
    """Stop after this many optimizer steps (0: run all epochs); the schedule spans the shorter of the two."""
    lora_r: Annotated[LoraRank, Words(zero="full fine-tuning")] = 0
    """Train LoRA adapters of this rank instead of all weights (0 = full fine-tuning)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    save_every: SaveEvery = 100
    """Optimizer steps between checkpoints (0: only when stopped). A run whose worker was stopped or
    vanished is queued again and goes on from its newest checkpoint."""
    precision: Precision = "auto"
    sharding: Sharding = "ddp"
    seed: Seed = 0
    """Seeds shuffling (and the worker seeds model init): the same data and seed give the same metrics on the CPU."""

    rules = (
        Rule(
            ("max_prompt_length", "max_length"),
            lambda c: (
                f"max_prompt_length must be below max_length ({c.max_length}), got {c.max_prompt_length}."
                if c.max_prompt_length >= c.max_length
                else None
            ),
        ),
        _divides("micro_batch_size", "batch_size", ": gradients of whole micro-batches are accumulated"),
        _no_fsdp_with_lora("lora_r"),
    )


class RewardConfig(RunConfig):
    """`reward`: a reward model (the input model + a scalar head read at the last real token) trained
    on the labelers' rankings with InstructGPT's K-way loss: all C(K,2) pairs of one ranking form one
    batch element, each completion runs through the model once, ties are dropped (appendix C.2: one
    epoch, cosine decay to 10% of the peak, 64 rankings per batch). Input model: SFT (or base)."""

    learning_rate: LearningRate = 1e-5
    """Peak AdamW learning rate (paper: 9e-6 at 6B)."""
    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    """Passes over the rankings (paper: one; more overfits)."""
    batch_size: BatchSize = 32
    """Rankings per optimizer step, each bringing all its pairs (paper: 64)."""
    micro_batch_size: BatchSize = 4
    """Rankings per forward pass (K sequences each); batch_size / micro_batch_size are accumulated."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Share of the steps with a linear warmup before the cosine decay."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """The cosine schedule ends at learning_rate * min_lr_ratio (paper: 10%)."""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay."""
    max_grad_norm: Positive = 1.0
    """Gradients are clipped to this global norm."""
    max_length: MaxLength = 512
    """Longest prompt + completion in tokens; longer ones keep the prompt's end and the completion's start."""
    eval_every: Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="at the end of each epoch")] = 0
    """Optimizer steps between held-out evaluations; 0 evaluates at the end of each epoch."""
    eval_batch_size: BatchSize = 8
    """Rankings per forward pass when computing held-out accuracy."""
    normalize_bias: bool = True
    """After training, shift the head's bias so the demonstrations' mean score is 0 (as in the paper)."""
    max_steps: MaxSteps = 0
    """Stop after this many optimizer steps (0: run all epochs); the schedule spans the shorter of the two."""
    lora_r: Annotated[LoraRank, Words(zero="full fine-tuning")] = 0
    """Train LoRA adapters of this rank on the backbone (the head is always trained; 0 = full fine-tuning)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    save_every: SaveEvery = 100
    """Optimizer steps between checkpoints (0: only when stopped). A run whose worker was stopped or
    vanished is queued again and goes on from its newest checkpoint."""
    precision: Precision = "auto"
    sharding: Sharding = "ddp"
    seed: Seed = 0
    """Seeds shuffling: the same data and seed give the same metrics on the CPU."""

    rules = (
        _divides("micro_batch_size", "batch_size", ": gradients of whole micro-batches are accumulated"),
        _no_fsdp_with_lora("lora_r"),
    )


K_MIN, K_MAX = 2, 9
"""Outputs per prompt a labeler ranks (InstructGPT: K = 4 to 9): projects, ranking tasks and runs."""


def _project_k_or_two_to_nine(k: int) -> int:
    if k != 0 and not K_MIN <= k <= K_MAX:
        raise ValueError(f"k must be 0 (the project's K) or between {K_MIN} and {K_MAX}, got {k}.")
    return k


MaxPromptLength = Annotated[
    int, Field(ge=0, le=INT_MAX), Words(zero="what the model's context leaves beside max_new_tokens")
]
"""Longest prompt in tokens: a conversation over it loses its oldest whole turns; one whose system
message and last user turn alone are over it is skipped, and the run's notes name it."""


class GenerateConfig(RunConfig):
    """`generate`: sample K outputs per prompt from one model version and create ranking tasks."""

    k: Annotated[int, AfterValidator(_project_k_or_two_to_nine)] = 0
    """Outputs per prompt; 0 uses the project's K (2..9)."""
    temperature: Positive = 1.0
    """Sampling temperature (the paper samples the outputs to rank at temperature 1)."""
    top_p: TopP = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    max_new_tokens: MaxNewTokens = 128
    """Longest output in tokens; outputs cut here are stored with ended_with_eos = false."""
    max_prompt_length: MaxPromptLength = 0
    """Longest prompt in tokens (0: the model's context less max_new_tokens); see MaxPromptLength."""
    split: SplitName = "train"
    """Prompts of this split (train, valid or test) get outputs."""
    limit: Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="all prompts")] = 64
    """Most prompts per run; 0 means every prompt of the split."""
    new_prompts_only: bool = True
    """Skip prompts that already have a ranking task, so repeated runs reach new prompts."""
    batch_size: BatchSize = 8
    """Prompts per generate call (each brings K sequences)."""
    rollout_backend: RolloutBackend = "auto"
    """What samples the answers: hf (transformers' generate), vllm (a vLLM engine in the worker), or
    auto (vLLM on a GPU when it is installed, else hf). The run's summary says which ran."""
    priority: Seed = 0
    """Priority of the ranking tasks created (higher is handed out first)."""
    seed: Seed = 0
    """Seeds the sampler: the same model, prompts and seed give the same outputs on the CPU."""


class EvaluateConfig(RunConfig):
    """`evaluate`: two model versions answer the same held-out prompts; labelers compare them
    side by side (A/B order randomized per prompt and stored), and an optional reward model
    gives an automatic win rate. Input models: [candidate, baseline] or [candidate, baseline, reward]."""

    split: Annotated[Literal["valid", "test"], Words(range="a held-out split (valid or test)")] = "test"
    """Held-out prompts to answer (test or valid; train is refused: it measures memorization)."""
    num_prompts: Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="all")] = 64
    """Prompts to compare; 0 means every prompt of the split."""
    temperature: Positive = 0.7
    """Sampling temperature for both models (the same for both, so only the weights differ)."""
    top_p: TopP = 0.95
    """Nucleus sampling for both models."""
    max_new_tokens: MaxNewTokens = 128
    """Longest answer in tokens."""
    max_prompt_length: MaxPromptLength = 0
    """Longest prompt in tokens (0: the model's context less max_new_tokens); see MaxPromptLength."""
    batch_size: BatchSize = 8
    """Prompts per generate call."""
    rollout_backend: RolloutBackend = "auto"
    """What samples the answers: hf (transformers' generate), vllm (a vLLM engine in the worker), or
    auto (vLLM on a GPU when it is installed, else hf). The run's summary says which ran."""
    priority: Seed = 0
    """Priority of the comparison tasks created."""
    seed: Seed = 0
    """Seeds sampling and the A/B order."""


class PPOConfig(RunConfig):
    """`ppo`: optimize the policy (from an SFT model) against a frozen reward model, with a per-token
    KL penalty to the frozen SFT reference (InstructGPT's "PPO" and, with ptx_coef > 0, "PPO-ptx").
    Input models: [policy (SFT), reward]; the value model starts from the reward model.
    Defaults follow TRL's PPOv2 trainer and the paper, scaled for small models."""

    learning_rate: LearningRate = 1e-5
    """AdamW learning rate for the policy and the value model (constant after the warmup; no weight decay)."""
    warmup_steps: Annotated[int, Field(ge=0, le=INT_MAX), Words(zero="no warmup")] = 10
    """PPO steps of linear learning-rate warmup: step s of them trains at learning_rate * s / warmup_steps,
    the first at a tenth of it with the default (InstructGPT: 10 iterations, from a tenth)."""
    kl_coef: Annotated[
        float, Field(ge=0, le=1), Words(name="kl_coef (beta)", range="between 0 and 1 (paper: 0.02)")
    ] = 0.05
    """beta: per-token KL penalty coefficient against the reference (SFT) model (paper: 0.02)."""
    gamma: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Discount factor over response tokens (1: no discount, as in the paper)."""
    lam: Annotated[float, Field(ge=0, le=1)] = 0.95
    """GAE lambda (bias/variance trade-off of the advantage estimate)."""
    cliprange: Annotated[float, Field(gt=0, lt=1), Words(range="in (0, 1) (usual: 0.2)")] = 0.2
    """PPO clip range of the policy ratio: updates are clipped to [1 - c, 1 + c]."""
    cliprange_value: Annotated[float, Field(gt=0, le=100)] = 0.2
    """Clip range of the value prediction around the rollout's value."""
    vf_coef: NonNegative = 0.1
    """Weight of the value loss in the total loss."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (mean kept) before GAE; advantages are always whitened."""
    ppo_epochs: Annotated[int, Field(ge=1, le=100)] = 4
    """Passes of PPO optimization over each rollout batch."""
    rollout_batch_size: BatchSize = 16
    """Prompts sampled (one response each) per PPO step; one episode = one prompt and its response."""
    minibatch_size: BatchSize = 4
    """Episodes per gradient step; must divide rollout_batch_size."""
    forward_batch_size: BatchSize = 16
    """Sequences per no-grad forward (generation, reference, reward, value) in a rollout."""
    rollout_backend: RolloutBackend = "auto"
    """What samples the rollouts: hf (transformers' generate on the policy), vllm (a vLLM engine in
    each process, given the new weights after every update), or auto (vLLM on a GPU when it is
    installed, else hf). Log-probs always come from the policy itself. The metrics say which ran."""
    temperature: Positive = 1.0
    """Sampling temperature of the rollouts; log-probs are computed at the same temperature."""
    top_p: TopP = 1.0
    """Nucleus sampling of the rollouts (1 keeps the whole distribution, which PPO assumes)."""
    max_new_tokens: MaxNewTokens = 64
    """Longest response in tokens; a response cut here has no EOS and gets missing_eos_penalty."""
    max_prompt_length: MaxPromptLength = 0
    """Longest prompt in tokens (0: the model's context less max_new_tokens): a shorter limit bounds
    the rollouts' and updates' cost on long conversations; see MaxPromptLength."""
    missing_eos_penalty: NonNegative = 1.0
    """Subtracted from the reward-model score of a response that produced no EOS (0 disables)."""
    ptx_coef: NonNegative = 0.0
    """gamma of PPO-ptx: weight of the SFT loss on demonstrations mixed into each step (0 = plain PPO)."""
    ptx_batch_size: BatchSize = 4
    """Demonstrations per gradient step for the ptx term."""
    total_episodes: Annotated[int, Field(ge=1, le=INT_MAX)] = 1024
    """Episodes (prompt + sampled response) in the whole run; steps = total_episodes // rollout_batch_size."""
    kl_limit: Positive = 20.0
    """The run stops as diverged when the mean per-response KL to the reference (nats) passes this."""
    max_grad_norm: Positive = 1.0
    """The policy's and the value model's gradients are each clipped to this global norm."""
    lora_r: Annotated[LoraRank, Words(zero="full fine-tuning")] = 0
    """Train LoRA adapters of this rank on the policy (0 = full fine-tuning); the reference is then
    the policy with its adapters switched off, so the backbone is held once."""
    value_lora_r: Annotated[LoraRank, Words(zero="all weights")] = 0
    """Train the value model (started from the reward model) as LoRA adapters of this rank and its
    head (0 = all its weights): with a full-size value model, PPO holds two trained models."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass, of the policy and the value model (less memory,
    about 30% slower)."""
    low_memory: bool = False
    """Keep the reference and reward models in CPU memory and move each to the GPU only for its
    forward pass (with lora_r and gradient_checkpointing, a 1B-parameter PPO fits on 24 GB)."""
    save_every: SaveEvery = 10
    """PPO steps between checkpoints (0: only when stopped). A run whose worker was stopped or
    vanished is queued again and goes on from its newest checkpoint."""
    precision: Precision = "auto"
    sharding: Sharding = "ddp"
    seed: Seed = 0
    """Seeds prompt order, sampling and minibatch shuffling."""

    rules = (
        _divides("minibatch_size", "rollout_batch_size"),
        Rule(
            ("total_episodes", "rollout_batch_size"),
            lambda c: (
                f"total_episodes ({c.total_episodes}) must be at least rollout_batch_size ({c.rollout_batch_size})."
                if c.total_episodes < c.rollout_batch_size
                else None
            ),
        ),
        _no_fsdp_with_lora("lora_r", "value_lora_r"),
    )


RUN_CONFIGS: dict[str, type[RunConfig]] = {
    "sft": SFTConfig,
    "reward": RewardConfig,
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
    "ppo": PPOConfig,
}
RunKindName = Literal["sft", "reward", "generate", "evaluate", "ppo"]


_TYPE_NAMES = {
    "int": f"an integer within ±{INT_MAX:,}",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
}
_BOUNDS = ("gt", "ge", "lt", "le")
_BOUND_ERRORS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def config_from_dict(kind: str, values: Any) -> Any:
    """The config of run kind `kind` from JSON-like values; defaults fill what is missing.

    Raises ValueError listing every problem (unknown kind or keys, wrong types, impossible values)."""
    cls = RUN_CONFIGS.get(kind)
    if cls is None:
        raise ValueError(f"Unknown run kind {kind!r}; known kinds: {', '.join(sorted(RUN_CONFIGS))}.")
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"The {kind} config must be an object of settings, got {type(values).__name__}.")
    fields = cls.model_fields
    # JSON has one number type: 3.0 is the integer 3 (pydantic's strict mode would refuse it).
    values = {
        key: int(value)
        if isinstance(value, float)
        and value.is_integer()
        and key in fields
        and fields[key].annotation is int
        and abs(value) <= INT_MAX
        else value
        for key, value in values.items()
    }
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        errors = error.errors()
    problems = [_problem(cls, kind, item) for item in errors]
    invalid = {str(item["loc"][0]) for item in errors if item["loc"]}
    if invalid:  # the rules across settings are checked only once every field is valid: check the others too
        valid = {key: value for key, value in values.items() if key in fields and key not in invalid}
        problems += cls.model_construct(**valid).problems(skip=invalid)
    raise ValueError(" ".join(problems))


def _problem(cls: type[RunConfig], kind: str, item: Any) -> str:
    """One of pydantic's errors in words: the setting, what it must be, and what it got."""
    if not item["loc"]:  # the model's rules
        return str(item["ctx"]["error"])
    key = str(item["loc"][0])
    if item["type"] == "extra_forbidden":
        return f"Unknown setting {key!r} for a {kind} run; known settings: {', '.join(sorted(cls.model_fields))}."
    info = cls.model_fields[key]
    value = item["input"]
    if info.annotation is float and type(value) is int:
        value = float(value)  # as the config would hold it
    if info.annotation is int and type(value) is int and abs(value) > INT_MAX:
        return f"{key} must be {type_name(cls, key)}, got {value}."
    if item["type"] == "value_error":  # a field validator's own sentence
        return str(item["ctx"]["error"])
    words = next((m for m in info.metadata if isinstance(m, Words)), Words())
    if item["type"] == "literal_error":
        allowed = words.range or f"one of {', '.join(map(str, get_args(info.annotation)))}"
    elif item["type"] in _BOUND_ERRORS:
        allowed = words.range or _allowed(info, _BOUND_ERRORS[item["type"]], words.zero)
    else:
        return f"{key} must be {type_name(cls, key)}, got {value!r}."
    return f"{words.name or key} must be {allowed}, got {value!r}."


def _allowed(info: FieldInfo, broken: str, zero: str) -> str:
    """A field's bounds in words: the whole interval of a float, else the bound that was broken."""
    bounds = {name: getattr(m, name) for m in info.metadata for name in _BOUNDS if hasattr(m, name)}
    low, high = bounds.get("gt", bounds.get("ge")), bounds.get("lt", bounds.get("le"))
    if info.annotation is float and low is not None and high is not None:
        if "ge" in bounds and "le" in bounds:
            return f"between {low} and {high}"
        return f"in {'(' if 'gt' in bounds else '['}{low}, {high}{')' if 'lt' in bounds else ']'}"
    bound = bounds[broken]
    if broken == "ge" and bound == 0:
        return f"0 ({zero}) or positive" if zero else "0 or more"
    return {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}[broken] + f" {bound:,}"


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump()


def type_name(cls: type[RunConfig], key: str) -> str:
    annotation = cls.model_fields[key].annotation
    name = getattr(annotation, "__name__", str(annotation))
    return _TYPE_NAMES.get(name, f"of type {name}")


# ---- a run's data -------------------------------------------------------------------------------


class DataFilter(BaseModel):
    """A run's data selection (TrainingRun.data_filter). The row keeps only the keys that were
    given (`stored()`), so a row written before a key existed loads with that key's default."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, use_attribute_docstrings=True
    )

    exclude_labelers: list[int] = []
    """Users whose demonstrations and rankings are left out (with those added when the run is created)."""
    min_agreement: Annotated[float, Field(ge=0, le=100)] | None = None
    """Labelers whose agreement with the others on shared ranking tasks is below this percentage are
    left out too (resolved when the run is created)."""
    splits: Annotated[list[SplitName], Field(min_length=1)] = ["train"]
    """Prompt splits to train on."""
    valid_splits: Annotated[list[SplitName], Field(min_length=1)] = ["valid"]
    """Prompt splits whose data measures held-out loss or accuracy."""
    sources: Annotated[list[SourceName], Field(min_length=1)] = ["labelers", "imported"]
    """Whose data: labelers' submissions, feedback imported from files (hh-rlhf, OpenAssistant...), or both."""
    left_out_by_admin: list[int] = []
    """Resolved when the run is created: the labelers an admin had left out of training."""
    below_agreement: list[int] = []
    """Resolved when the run is created: the labelers below min_agreement."""

    def stored(self) -> dict[str, Any]:
        """The JSON kept with the run: the keys given or resolved, as they were given."""
        return self.model_dump(exclude_unset=True)


DATA_FILTER_KEYS = ("exclude_labelers", "min_agreement", "splits", "valid_splits", "sources")
"""What a person may ask for in a run's data filter; the others are resolved when the run is created."""
_DATA_FILTER_MUST = {
    "exclude_labelers": "data_filter.exclude_labelers must be a list of user ids.",
    "min_agreement": "data_filter.min_agreement is a percentage between 0 and 100, e.g. 65; got {value!r}.",
    "splits": "data_filter.splits must be a non-empty list of splits (train, valid, test).",
    "valid_splits": "data_filter.valid_splits must be a non-empty list of splits (train, valid, test).",
    "sources": "data_filter.sources must be a non-empty list of labelers and/or imported.",
}


def data_filter_from_dict(values: Any) -> DataFilter:
    """The data filter a person asked for (API, run form). Raises ValueError listing every problem."""
    if not isinstance(values, dict):
        raise ValueError("data_filter must be an object.")
    unknown = set(values) - set(DATA_FILTER_KEYS)
    if unknown:
        raise ValueError(
            f"Unknown data_filter keys: {', '.join(sorted(map(str, unknown)))}; known: {', '.join(DATA_FILTER_KEYS)}."
        )
    try:
        return DataFilter.model_validate(values)
    except ValidationError as error:
        keys = dict.fromkeys(str(item["loc"][0]) for item in error.errors())
        raise ValueError(" ".join(_DATA_FILTER_MUST[key].format(value=values[key]) for key in keys)) from None


# Settings a person can start from on the run form, per run kind; the demo (`instructloop demo`)
# runs its profiles with them. "cpu" is sized for SmolLM2-135M on a 2-core laptop, under bf16
# autocast with fp32 master weights: 1.5x faster training steps and 1.7x faster forward passes than
# fp32 on a 2-core AVX512-BF16 CPU (SmolLM2-135M, 16 x 48 tokens). A CPU without bf16 instructions
# emulates it slowly: set precision to fp32 there.
_CPU_QUICK: dict[str, dict[str, Any]] = {
    "sft": dict(
        epochs=1,
        batch_size=8,
        micro_batch_size=8,
        learning_rate=5e-5,
        max_length=96,
        max_prompt_length=64,
        precision="bf16",
    ),
    "generate": dict(k=4, temperature=1.0, top_p=0.95, max_new_tokens=24, limit=96, batch_size=48),
    "reward": dict(epochs=1, batch_size=8, micro_batch_size=8, learning_rate=3e-5, max_length=96, precision="bf16"),
    "ppo": dict(
        total_episodes=256,
        rollout_batch_size=16,
        minibatch_size=8,
        forward_batch_size=16,
        ppo_epochs=2,
        max_new_tokens=24,
        learning_rate=2e-5,
        warmup_steps=0,  # 16 steps: a 10-step warmup would be most of them (the demo's figures had none)
        kl_coef=0.05,
        temperature=0.9,
        precision="bf16",
    ),
    "evaluate": dict(num_prompts=0, temperature=0.7, top_p=0.95, max_new_tokens=24, batch_size=40),
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": _CPU_QUICK,
    # The same settings run longer, for a model that should get better rather than a quick look.
    "cpu-real": {
        "sft": {**_CPU_QUICK["sft"], "epochs": 2},
        "generate": {**_CPU_QUICK["generate"], "limit": 0},
        "reward": {**_CPU_QUICK["reward"], "epochs": 2},
        "ppo": {**_CPU_QUICK["ppo"], "total_episodes": 1024},
        "evaluate": _CPU_QUICK["evaluate"],
    },
    # The quick look for a worker with little memory (bench/README.md, "Worker memory"): LoRA
    # adapters on the PPO policy (its base is the reference: no second copy) and value model, and
    # activations recomputed in the backward pass. A 135M PPO run peaks at 3.6 GiB, 2.36 GiB on a
    # worker started with --low-memory, against 8.5 GiB for the quick look's full fine-tuning.
    "cpu-small": {
        **{kind: {**_CPU_QUICK[kind], "gradient_checkpointing": True} for kind in ("sft", "reward")},
        "generate": _CPU_QUICK["generate"],
        "ppo": {
            **_CPU_QUICK["ppo"],
            "lora_r": 16,
            "value_lora_r": 16,
            "gradient_checkpointing": True,
            "learning_rate": 1e-4,  # adapters start at zero and need a larger step than full weights
        },
        "evaluate": _CPU_QUICK["evaluate"],
    },
    "gpu": {
        "sft": dict(
            epochs=3, batch_size=32, micro_batch_size=32, learning_rate=2e-5, max_length=256, max_prompt_length=128
        ),
        "generate": dict(k=4, temperature=1.0, top_p=0.95, max_new_tokens=48, limit=800, batch_size=128),
        "reward": dict(epochs=2, batch_size=32, micro_batch_size=16, learning_rate=1e-5, max_length=256),
        "ppo": dict(
            total_episodes=8192,
            rollout_batch_size=128,
            minibatch_size=32,
            forward_batch_size=128,
            ppo_epochs=4,
            max_new_tokens=48,
            learning_rate=1e-5,
            kl_coef=0.05,
            temperature=0.9,
        ),
        "evaluate": dict(num_prompts=200, temperature=0.7, top_p=0.95, max_new_tokens=48, batch_size=100),
    },
}
PRESET_TITLES = {
    "cpu": "CPU quick look (the CPU demo's settings: small batches, short answers, bf16 autocast)",
    "cpu-real": "CPU real (the quick look with 2 epochs, every training prompt ranked, 4x the PPO episodes)",
    "cpu-small": "CPU small memory (the quick look with LoRA PPO and gradient checkpointing: under 3 GB "
    "for a 135M model on a worker started with --low-memory)",
    "gpu": "GPU (the GPU demo's settings)",
}
