"""Run settings: one pydantic model per run kind, shared by the web app (forms, API, validation
before a run is queued) and the trainer (which reads them back from the run row). Neither torch
nor the app is imported here, so both sides may import this module without a package cycle.

Defaults follow the InstructGPT paper (Ouyang et al. 2022, appendix C), scaled for small models.
Each field's docstring is its documentation (`use_attribute_docstrings`): the run forms and
`GET /api/v1/run-configs` show it. Each model's `problems()` lists impossible combinations.

`config_from_dict(kind, values)` is the one way in from JSON (API, dashboard, database): it
refuses unknown keys and wrong types and runs `problems()`, listing every problem at once."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPLITS = ("train", "valid", "test")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-pure")  # see trainer/precision.py
SHARDINGS = ("ddp", "fsdp")  # see trainer/distributed.py
INT_MAX = 2**31 - 1  # every integer setting fits the database's integer


Precision = Annotated[
    str,
    Field(
        description="Training precision: auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU), "
        "fp32, bf16 or fp16 (mixed: fp32 master weights under autocast), or bf16-pure (half the memory, but small "
        "updates round away: only for a model that does not fit otherwise)."
    ),
]


Sharding = Annotated[
    str,
    Field(
        description="How several processes (instructloop worker --processes N, accelerate launch) share the "
        "training: ddp (each holds the whole model and optimizer; fastest when they fit one GPU) or fsdp (weights, "
        "gradients and optimizer state split across the processes: for full fine-tunes that do not fit one GPU; "
        "not with LoRA, whose adapters are small). One process ignores it."
    ),
]


class RunConfig(BaseModel):
    """Strict JSON types: an int is accepted where a float is wanted, a bool never as a number."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True, validate_assignment=True
    )

    def problems(self) -> list[str]:
        return []


class SFTConfig(RunConfig):
    """`sft`: supervised fine-tuning on the accepted demonstrations, loss on the response tokens
    only (InstructGPT appendix C.1: cosine decay, batch 32; 16 epochs there, fewer here because
    small models on small data overfit sooner). Input model: the base (or an earlier SFT) model."""

    learning_rate: float = 2e-5
    """Peak AdamW learning rate (paper: 9.65e-6 at 1.3B; small models take a larger one)."""
    epochs: int = 3
    """Passes over the training demonstrations."""
    batch_size: int = 32
    """Demonstrations per optimizer step (paper: 32)."""
    micro_batch_size: int = 8
    """Demonstrations per forward pass; batch_size / micro_batch_size gradients are accumulated."""
    warmup_ratio: float = 0.03
    """Share of the steps with a linear warmup before the cosine decay."""
    min_lr_ratio: float = 0.0
    """The cosine schedule ends at learning_rate * min_lr_ratio."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    max_length: int = 1024
    """Longest prompt + response in tokens; longer responses are cut (they then have no EOS)."""
    max_prompt_length: int = 512
    """Longest prompt in tokens; longer prompts keep their end (the part next to the answer)."""
    eval_every: int = 0
    """Optimizer steps between held-out evaluations; 0 evaluates once per epoch."""
    eval_batch_size: int = 16
    """Demonstrations per forward pass when computing the held-out loss."""
    keep_best: bool = True
    """Return the weights with the lowest held-out loss seen (not the last ones) when there is a valid split."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs); the schedule spans the shorter of the two."""
    lora_r: int = 0
    """Train LoRA adapters of this rank instead of all weights (0 = full fine-tuning)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    save_every: int = 100
    """Optimizer steps between checkpoints (0: only when stopped). A run whose worker was stopped or
    vanished is queued again and goes on from its newest checkpoint."""
    precision: Precision = "auto"
    sharding: Sharding = "ddp"
    seed: int = 0
    """Seeds shuffling (and the worker seeds model init): the same data and seed give the same metrics on the CPU."""

    def problems(self) -> list[str]:
        problems = _optimizer_problems(self)
        if not 8 <= self.max_length <= 32768:
            problems.append(f"max_length must be between 8 and 32768 tokens, got {self.max_length}.")
        if not 1 <= self.max_prompt_length < self.max_length:
            problems.append(
                f"max_prompt_length must be at least 1 and below max_length ({self.max_length}), "
                f"got {self.max_prompt_length}."
            )
        return problems


class RewardConfig(RunConfig):
    """`reward`: a reward model (the input model + a scalar head read at the last real token) trained
    on the labelers' rankings with InstructGPT's K-way loss: all C(K,2) pairs of one ranking form one
    batch element, each completion runs through the model once, ties are dropped (appendix C.2: one
    epoch, cosine decay to 10% of the peak, 64 rankings per batch). Input model: SFT (or base)."""

    learning_rate: float = 1e-5
    """Peak AdamW learning rate (paper: 9e-6 at 6B)."""
    epochs: int = 1
    """Passes over the rankings (paper: one; more overfits)."""
    batch_size: int = 32
    """Rankings per optimizer step, each bringing all its pairs (paper: 64)."""
    micro_batch_size: int = 4
    """Rankings per forward pass (K sequences each); batch_size / micro_batch_size are accumulated."""
    warmup_ratio: float = 0.05
    """Share of the steps with a linear warmup before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at learning_rate * min_lr_ratio (paper: 10%)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    max_length: int = 512
    """Longest prompt + completion in tokens; longer ones keep the prompt's end and the completion's start."""
    eval_every: int = 0
    """Optimizer steps between held-out evaluations; 0 evaluates at the end of each epoch."""
    eval_batch_size: int = 8
    """Rankings per forward pass when computing held-out accuracy."""
    normalize_bias: bool = True
    """After training, shift the head's bias so the demonstrations' mean score is 0 (as in the paper)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs); the schedule spans the shorter of the two."""
    lora_r: int = 0
    """Train LoRA adapters of this rank on the backbone (the head is always trained; 0 = full fine-tuning)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    save_every: int = 100
    """Optimizer steps between checkpoints (0: only when stopped). A run whose worker was stopped or
    vanished is queued again and goes on from its newest checkpoint."""
    precision: Precision = "auto"
    sharding: Sharding = "ddp"
    seed: int = 0
    """Seeds shuffling: the same data and seed give the same metrics on the CPU."""

    def problems(self) -> list[str]:
        problems = _optimizer_problems(self)
        if not 8 <= self.max_length <= 32768:
            problems.append(f"max_length must be between 8 and 32768 tokens, got {self.max_length}.")
        return problems


def _precision_problems(config: SFTConfig | RewardConfig | PPOConfig) -> list[str]:
    """The precision and sharding settings."""
    problems = []
    if config.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}.")
    if config.sharding not in SHARDINGS:
        problems.append(f"sharding must be one of {', '.join(SHARDINGS)}, got {config.sharding!r}.")
    elif config.sharding == "fsdp" and (config.lora_r or getattr(config, "value_lora_r", 0)):
        problems.append("sharding=fsdp splits fully fine-tuned models; LoRA adapters are small: use ddp with lora_r.")
    return problems


def _optimizer_problems(config: SFTConfig | RewardConfig) -> list[str]:
    """Checks shared by SFTConfig and RewardConfig."""
    problems = _precision_problems(config)
    if not 0 < config.learning_rate < 1:
        problems.append(f"learning_rate must be in (0, 1), got {config.learning_rate}.")
    if config.epochs < 1:
        problems.append(f"epochs must be at least 1, got {config.epochs}.")
    if config.batch_size < 1 or config.micro_batch_size < 1:
        problems.append(
            f"batch_size and micro_batch_size must be at least 1, got "
            f"{config.batch_size} and {config.micro_batch_size}."
        )
    elif config.batch_size % config.micro_batch_size:
        problems.append(
            f"micro_batch_size ({config.micro_batch_size}) must divide batch_size "
            f"({config.batch_size}): gradients of whole micro-batches are accumulated."
        )
    if config.eval_batch_size < 1:
        problems.append(f"eval_batch_size must be at least 1, got {config.eval_batch_size}.")
    if not 0 <= config.warmup_ratio < 1:
        problems.append(f"warmup_ratio must be in [0, 1), got {config.warmup_ratio}.")
    if not 0 <= config.min_lr_ratio <= 1:
        problems.append(f"min_lr_ratio must be between 0 and 1, got {config.min_lr_ratio}.")
    if config.weight_decay < 0:
        problems.append(f"weight_decay must be 0 or more, got {config.weight_decay}.")
    if not config.max_grad_norm > 0:
        problems.append(f"max_grad_norm must be above 0, got {config.max_grad_norm}.")
    if config.eval_every < 0:
        problems.append(f"eval_every must be 0 (once per epoch) or positive, got {config.eval_every}.")
    if config.max_steps < 0:
        problems.append(f"max_steps must be 0 (all epochs) or positive, got {config.max_steps}.")
    if config.lora_r < 0:
        problems.append(f"lora_r must be 0 (full fine-tuning) or positive, got {config.lora_r}.")
    if config.save_every < 0:
        problems.append(f"save_every must be 0 (only when stopped) or positive, got {config.save_every}.")
    return problems


class GenerateConfig(RunConfig):
    """`generate`: sample K outputs per prompt from one model version and create ranking tasks."""

    k: int = 0
    """Outputs per prompt; 0 uses the project's K (2..9)."""
    temperature: float = 1.0
    """Sampling temperature (the paper samples the outputs to rank at temperature 1)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    max_new_tokens: int = 128
    """Longest output in tokens; outputs cut here are stored with ended_with_eos = false."""
    split: str = "train"
    """Prompts of this split (train, valid or test) get outputs."""
    limit: int = 64
    """Most prompts per run; 0 means every prompt of the split."""
    new_prompts_only: bool = True
    """Skip prompts that already have a ranking task, so repeated runs reach new prompts."""
    batch_size: int = 8
    """Prompts per generate call (each brings K sequences)."""
    priority: int = 0
    """Priority of the ranking tasks created (higher is handed out first)."""
    seed: int = 0
    """Seeds the sampler: the same model, prompts and seed give the same outputs on the CPU."""

    def problems(self) -> list[str]:
        problems: list[str] = []
        if self.k != 0 and not 2 <= self.k <= 9:
            problems.append(f"k must be 0 (the project's K) or between 2 and 9, got {self.k}.")
        problems += _sampling_problems(self.temperature, self.top_p, self.max_new_tokens, self.batch_size)
        if self.split not in SPLITS:
            problems.append(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}.")
        if self.limit < 0:
            problems.append(f"limit must be 0 (all prompts) or positive, got {self.limit}.")
        return problems


class EvaluateConfig(RunConfig):
    """`evaluate`: two model versions answer the same held-out prompts; labelers compare them
    side by side (A/B order randomized per prompt and stored), and an optional reward model
    gives an automatic win rate. Input models: [candidate, baseline] or [candidate, baseline, reward]."""

    split: str = "test"
    """Held-out prompts to answer (test or valid; train is refused: it measures memorization)."""
    num_prompts: int = 64
    """Prompts to compare; 0 means every prompt of the split."""
    temperature: float = 0.7
    """Sampling temperature for both models (the same for both, so only the weights differ)."""
    top_p: float = 0.95
    """Nucleus sampling for both models."""
    max_new_tokens: int = 128
    """Longest answer in tokens."""
    batch_size: int = 8
    """Prompts per generate call."""
    priority: int = 0
    """Priority of the comparison tasks created."""
    seed: int = 0
    """Seeds sampling and the A/B order."""

    def problems(self) -> list[str]:
        problems: list[str] = []
        if self.split not in ("valid", "test"):
            problems.append(f"split must be a held-out split (valid or test), got {self.split!r}.")
        if self.num_prompts < 0:
            problems.append(f"num_prompts must be 0 (all) or positive, got {self.num_prompts}.")
        problems += _sampling_problems(self.temperature, self.top_p, self.max_new_tokens, self.batch_size)
        return problems


class PPOConfig(RunConfig):
    """`ppo`: optimize the policy (from an SFT model) against a frozen reward model, with a per-token
    KL penalty to the frozen SFT reference (InstructGPT's "PPO" and, with ptx_coef > 0, "PPO-ptx").
    Input models: [policy (SFT), reward]; the value model starts from the reward model.
    Defaults follow TRL's PPOv2 trainer and the paper, scaled for small models."""

    learning_rate: float = 1e-5
    """AdamW learning rate for the policy and the value model (constant)."""
    kl_coef: float = 0.05
    """beta: per-token KL penalty coefficient against the reference (SFT) model (paper: 0.02)."""
    gamma: float = 1.0
    """Discount factor over response tokens (1: no discount, as in the paper)."""
    lam: float = 0.95
    """GAE lambda (bias/variance trade-off of the advantage estimate)."""
    cliprange: float = 0.2
    """PPO clip range of the policy ratio: updates are clipped to [1 - c, 1 + c]."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around the rollout's value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (mean kept) before GAE; advantages are always whitened."""
    ppo_epochs: int = 4
    """Passes of PPO optimization over each rollout batch."""
    rollout_batch_size: int = 16
    """Prompts sampled (one response each) per PPO step; one episode = one prompt and its response."""
    minibatch_size: int = 4
    """Episodes per gradient step; must divide rollout_batch_size."""
    forward_batch_size: int = 16
    """Sequences per no-grad forward (generation, reference, reward, value) in a rollout."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; log-probs are computed at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1 keeps the whole distribution, which PPO assumes)."""
    max_new_tokens: int = 64
    """Longest response in tokens; a response cut here has no EOS and gets missing_eos_penalty."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the reward-model score of a response that produced no EOS (0 disables)."""
    ptx_coef: float = 0.0
    """gamma of PPO-ptx: weight of the SFT loss on demonstrations mixed into each step (0 = plain PPO)."""
    ptx_batch_size: int = 4
    """Demonstrations per gradient step for the ptx term."""
    total_episodes: int = 1024
    """Episodes (prompt + sampled response) in the whole run; steps = total_episodes // rollout_batch_size."""
    kl_limit: float = 20.0
    """The run stops as diverged when the mean per-response KL to the reference (nats) passes this."""
    max_grad_norm: float = 1.0
    """The policy's and the value model's gradients are each clipped to this global norm."""
    lora_r: int = 0
    """Train LoRA adapters of this rank on the policy (0 = full fine-tuning); the reference is then
    the policy with its adapters switched off, so the backbone is held once."""
    value_lora_r: int = 0
    """Train the value model (started from the reward model) as LoRA adapters of this rank and its
    head (0 = all its weights): with a full-size value model, PPO holds two trained models."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass, of the policy and the value model (less memory,
    about 30% slower)."""
    low_memory: bool = False
    """Keep the reference and reward models in CPU memory and move each to the GPU only for its
    forward pass (with lora_r and gradient_checkpointing, a 1B-parameter PPO fits on 24 GB)."""
    save_every: int = 10
    """PPO steps between checkpoints (0: only when stopped). A run whose worker was stopped or
    vanished is queued again and goes on from its newest checkpoint."""
    precision: Precision = "auto"
    sharding: Sharding = "ddp"
    seed: int = 0
    """Seeds prompt order, sampling and minibatch shuffling."""

    def problems(self) -> list[str]:
        problems = _sampling_problems(self.temperature, self.top_p, self.max_new_tokens, batch_size=1)
        problems += _precision_problems(self)
        if self.forward_batch_size < 1:
            problems.append(f"forward_batch_size must be at least 1, got {self.forward_batch_size}.")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate}.")
        if not 0 <= self.kl_coef <= 1:
            problems.append(f"kl_coef (beta) must be between 0 and 1 (paper: 0.02), got {self.kl_coef}.")
        if not 0 < self.gamma <= 1:
            problems.append(f"gamma must be in (0, 1], got {self.gamma}.")
        if not 0 <= self.lam <= 1:
            problems.append(f"lam must be between 0 and 1, got {self.lam}.")
        if not 0 < self.cliprange < 1:
            problems.append(f"cliprange must be in (0, 1) (usual: 0.2), got {self.cliprange}.")
        if not 0 < self.cliprange_value <= 100:
            problems.append(f"cliprange_value must be in (0, 100], got {self.cliprange_value}.")
        if self.vf_coef < 0:
            problems.append(f"vf_coef must be 0 or more, got {self.vf_coef}.")
        if self.ppo_epochs < 1:
            problems.append(f"ppo_epochs must be at least 1, got {self.ppo_epochs}.")
        if self.rollout_batch_size < 1 or self.minibatch_size < 1:
            problems.append(
                f"rollout_batch_size and minibatch_size must be at least 1, got "
                f"{self.rollout_batch_size} and {self.minibatch_size}."
            )
        elif self.rollout_batch_size % self.minibatch_size:
            problems.append(
                f"minibatch_size ({self.minibatch_size}) must divide rollout_batch_size ({self.rollout_batch_size})."
            )
        if self.total_episodes < self.rollout_batch_size:
            problems.append(
                f"total_episodes ({self.total_episodes}) must be at least rollout_batch_size "
                f"({self.rollout_batch_size})."
            )
        if self.missing_eos_penalty < 0:
            problems.append(f"missing_eos_penalty must be 0 or more, got {self.missing_eos_penalty}.")
        if self.ptx_coef < 0:
            problems.append(f"ptx_coef must be 0 or more, got {self.ptx_coef}.")
        if self.ptx_batch_size < 1:
            problems.append(f"ptx_batch_size must be at least 1, got {self.ptx_batch_size}.")
        if not self.kl_limit > 0:
            problems.append(f"kl_limit must be above 0, got {self.kl_limit}.")
        if not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be above 0, got {self.max_grad_norm}.")
        if self.lora_r < 0:
            problems.append(f"lora_r must be 0 (full fine-tuning) or positive, got {self.lora_r}.")
        if self.save_every < 0:
            problems.append(f"save_every must be 0 (only when stopped) or positive, got {self.save_every}.")
        if self.value_lora_r < 0:
            problems.append(f"value_lora_r must be 0 (all weights) or positive, got {self.value_lora_r}.")
        return problems


def _sampling_problems(temperature: float, top_p: float, max_new_tokens: int, batch_size: int) -> list[str]:
    problems: list[str] = []
    if not temperature > 0:
        problems.append(f"temperature must be above 0, got {temperature}.")
    if not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}.")
    if not 1 <= max_new_tokens <= 4096:
        problems.append(f"max_new_tokens must be between 1 and 4096, got {max_new_tokens}.")
    if batch_size < 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}.")
    return problems


RUN_CONFIGS: dict[str, type[RunConfig]] = {
    "sft": SFTConfig,
    "reward": RewardConfig,
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
    "ppo": PPOConfig,
}
RunKindName = Literal["sft", "reward", "generate", "evaluate", "ppo"]


# Settings with an upper bound that keeps a run possible to finish. The lower bounds and the
# relations between settings are in each config's problems().
UPPER_BOUNDS = {
    "epochs": 1000,
    "ppo_epochs": 100,
    "lora_r": 4096,
    "value_lora_r": 4096,
    **{
        name: 65536
        for name in (
            "batch_size",
            "micro_batch_size",
            "eval_batch_size",
            "rollout_batch_size",
            "minibatch_size",
            "forward_batch_size",
            "ptx_batch_size",
        )
    },
}
_TYPE_NAMES = {
    "int": f"an integer within ±{INT_MAX:,}",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
}


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
    problems = []
    try:
        config = cls.model_validate(values)
    except ValidationError as error:
        for item in error.errors():
            key = str(item["loc"][0]) if item["loc"] else ""
            if item["type"] == "extra_forbidden":
                problems.append(
                    f"Unknown setting {key!r} for a {kind} run; known settings: {', '.join(sorted(fields))}."
                )
            else:
                problems.append(f"{key} must be {type_name(cls, key)}, got {item['input']!r}.")
    else:
        for key in fields:
            value = getattr(config, key)
            if fields[key].annotation is int and abs(value) > INT_MAX:
                problems.append(f"{key} must be {type_name(cls, key)}, got {value}.")
            elif key in UPPER_BOUNDS and value > UPPER_BOUNDS[key]:
                problems.append(f"{key} must be at most {UPPER_BOUNDS[key]:,}, got {value}.")
        problems = problems or config.problems()
    if problems:
        raise ValueError(" ".join(problems))
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump()


def type_name(cls: type[RunConfig], key: str) -> str:
    annotation = cls.model_fields[key].annotation
    name = getattr(annotation, "__name__", str(annotation))
    return _TYPE_NAMES.get(name, f"of type {name}")


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
    "gpu": "GPU (the GPU demo's settings)",
}
