"""PPO for language models, as in InstructGPT (Ouyang et al. 2022) and "Fine-Tuning Language
Models from Human Preferences" (Ziegler et al. 2019): the policy (from SFT) samples answers to
the train prompts, a frozen reward model scores them, a per-token KL penalty to the frozen
reference (SFT) model keeps the policy close, and a value model (from the reward model) gives
GAE advantages for the clipped PPO objective. With ptx_coef > 0 the SFT loss on demonstrations
is mixed in (the paper's PPO-ptx).

Launch: the worker runs it for a run of kind `ppo` (`instructloop worker`). From the shell:

    python -m trainer.ppo --policy sft-model --reward rm-model --prompts prompts.jsonl --out ppo-model \\
        --low-memory --set lora_r=16 --set total_episodes=4096

In Python:

    from trainer.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer, pick_device
    tok, dev, far = load_tokenizer(sft), pick_device(), "cpu" if cfg.low_memory else pick_device()
    policy = load_causal_lm(sft, device=dev, lora_r=cfg.lora_r,
                            gradient_checkpointing=cfg.gradient_checkpointing)
    ref = None if cfg.lora_r else load_causal_lm(sft, device=far)
    reward = ScalarHeadModel.from_pretrained(rm, device=far)
    value = ScalarHeadModel.from_pretrained(rm, device=dev)
    summary = train_ppo(policy, ref, reward, value, tok, prompts, cfg, reward_tokenizer=load_tokenizer(rm))

Memory (config.low_memory): the reference and reward models live in CPU memory and visit the
GPU only for their forward pass; with lora_r > 0 the reference is the policy with its adapters
switched off (no second copy). By arithmetic (not measured here), a 1B model in bf16 with full
fine-tuning then holds on the GPU 2 GB policy + 2 GB value weights, 4 GB of their gradients,
8 GB of AdamW state, 2 GB for the visiting frozen model, plus activations (gradient_checkpointing
keeps those small): about 18 GB of 24. With lora_r the policy's gradients and AdamW state shrink
to the adapters' size.

Divergence: a NaN/inf loss, or a mean KL to the reference past config.kl_limit, raises
TrainingDiverged after putting back the last good policy weights (a LoRA policy's adapters of the
last step, kept in CPU memory; a full policy's newest checkpoint), so the caller can save `policy`
as the last good model (exc.last_good_step says which; None when there was nothing to go back to).

Checkpoints and resume: trainer/checkpoints.py (`checkpoints=`, every config.save_every steps).

Several processes (accelerate launch / torchrun, trainer/distributed.py): each step's rollout batch
is split into one part per process, each samples and scores its part, and the figures that span the
batch are computed over all parts: the mean KL (the divergence check), the whitening of rewards and
advantages, the logged metrics. The PPO epochs run over each process's part in minibatches of
minibatch_size / processes rows with the policy and value model under DDP, so each optimizer step
averages the gradients of one global minibatch (each part's loss is its own token mean: equal to one
process's loss when the parts hold as many response tokens, close otherwise, as in TRL and
OpenRLHF). rollout_batch_size and minibatch_size must divide by the number of processes. Every
decision that ends a step early (a stop, a divergence) is taken together, so no process waits in an
all-reduce for one that left. Each process samples with its own seed (seed + rank); a checkpoint
holds every process's random generators."""

import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from runconfig import PPOConfig
from trainer.checkpoints import (
    Checkpoints,
    checkpoint_weights,
    load_trained_state,
    random_state,
    restore_training_state,
    rng_state,
    save_together,
    set_random_state,
    set_rng_state,
    trained_state,
    training_state,
)
from trainer.data import Conversation, SFTExample
from trainer.distributed import Team, full_state_dict, full_tensor, gathered_for_sampling, is_sharded
from trainer.errors import TrainingDiverged
from trainer.modeling import encode_prompt, end_ids, fit_conversation, pad_batch
from trainer.precision import for_model, frozen_dtype, load_dtype
from trainer.progress import ForwardPasses
from trainer.rollout import HFSampler, Sampler, SamplingSpec, make_sampler
from trainer.sft import IGNORE, encode_demonstration, response_loss_sum

# --- the math, in small pure functions (tested alone) -------------------------------------------


def response_mask_after_eos(responses: torch.Tensor, end_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is True for the tokens of each response up to and including its first
    end token, any of `end_ids` (everything after it is padding); ended says which responses
    produced one at all."""
    is_eos = torch.isin(responses, torch.tensor(end_ids, device=responses.device))
    ended = is_eos.any(dim=1)
    # Tokens strictly after the first EOS have a cumulative EOS count above 1 or (count 1 and not EOS).
    seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return ~seen_before, ended


CHUNK_BYTES = 256 * 2**20
"""The fp32 [rows, length, vocab] working tensor of the log-softmax is built this many bytes at a time
(a few rows), never for the whole batch: 1.2 GB at the GPU preset, 4.2 GB for a 128k vocabulary."""


def _row_chunks(logits: torch.Tensor, chunk_bytes: int) -> int:
    per_row = logits[0].numel() * 4 if len(logits) else 1
    return max(1, chunk_bytes // per_row)


def _chunk_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_bytes: int = CHUNK_BYTES
) -> torch.Tensor:
    """log pi(token) under softmax(logits / temperature): the distribution the tokens were sampled from.
    In chunks of rows; with gradients each chunk is recomputed in the backward pass (activation
    checkpointing) so the chunks' fp32 log-softmax is not kept for it either."""
    rows = _row_chunks(logits, chunk_bytes)
    parts = []
    for chunk, chunk_tokens in zip(logits.split(rows), tokens.split(rows), strict=True):
        if torch.is_grad_enabled() and chunk.requires_grad:
            from torch.utils.checkpoint import checkpoint

            parts.append(checkpoint(_chunk_logprobs, chunk, chunk_tokens, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(chunk, chunk_tokens, temperature))
    return torch.cat(parts) if parts else logits.new_zeros(tokens.shape, dtype=torch.float32)


def entropy_from_logits(logits: torch.Tensor, temperature: float, chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """The entropy of softmax(logits / temperature) at each position, in chunks of rows (no gradient)."""
    parts = []
    with torch.no_grad():
        for chunk in logits.split(_row_chunks(logits, chunk_bytes)):
            logp = torch.log_softmax(chunk.float() / temperature, dim=-1)
            parts.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(parts) if parts else logits.new_zeros(logits.shape[:-1], dtype=torch.float32)


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y_t) - log pi_ref(y_t) on the sampled tokens (an unbiased per-token KL estimate), 0 on padding."""
    return (logprobs - ref_logprobs) * mask


def rewards_with_kl(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -beta * KL at every response token, plus the sequence score at the last real token."""
    rewards = -kl_coef * kl * mask
    last = mask.long().sum(dim=1).clamp(min=1) - 1
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens; the value after the last real token
    is 0 (the episode ends there). Returns (advantages, returns), both 0 on padding."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor, team: Team | None = None) -> torch.Tensor:
    """The mean of the masked entries; with a team, over the entries of every process."""
    mask = mask.to(x.dtype)
    total, count = (x * mask).sum(), mask.sum()
    if team is not None and team.size > 1:
        total, count = team.sum_tensor(torch.stack([total, count]))
    return total / count.clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, team: Team | None = None
) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population variance; with a team, over the entries
    of every process); padding stays 0. With shift_mean=False the mean is kept (for rewards, whose
    level matters)."""
    mean = masked_mean(x, mask, team)
    var = masked_mean((x - mean) ** 2, mask, team)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: (loss, clip fraction, approximate KL old->new)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clip_frac, approx_kl


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> torch.Tensor:
    """0.5 * max((v - R)^2, (clip(v, v_old +- c) - R)^2), averaged over real tokens."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


# --- models and batches ------------------------------------------------------------------------


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO's ratio assumes the same function at rollout and update time: no dropout anywhere.

    Dropout lives in nn.Dropout modules, but also as float attributes that attention and decoder
    layers copy from the config and pass to F.dropout themselves (Llama's, Qwen's and Mistral's
    `attention_dropout`, OPT's `dropout`): those are zeroed too, on every module and config."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for owner in (module, getattr(module, "config", None)):
            for name, value in list(vars(owner).items()) if owner is not None else ():
                if isinstance(value, float) and not isinstance(value, bool) and _is_dropout_rate(name):
                    setattr(owner, name, 0.0)


def _is_dropout_rate(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def policy_logits(model, ids: torch.Tensor, mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """Logits that predict the last `response_len` tokens of `ids` (the LM head runs on those only)."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions(mask),
        use_cache=False,
        logits_to_keep=response_len + 1,
    )
    return out.logits[:, :-1]


def token_values(value_model, ids: torch.Tensor, mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """V(prompt + response[:t]) for each response position t: the value head at the token before it."""
    return value_model(ids, mask, per_token=True)[:, -response_len - 1 : -1].float()


def trim(query_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """(first query column, response length) that hold any real token: the rest is padding for all rows."""
    first = int((query_mask.sum(dim=0) > 0).long().argmax())
    length = int(response_mask.long().sum(dim=1).max())
    return first, max(length, 1)


@contextmanager
def visiting(model, device: torch.device, low_memory: bool):
    """A frozen model on `device` for the block. In low-memory mode it lives in CPU memory and
    only visits the GPU for its forward pass; otherwise it moves there once and stays."""
    if model is None or model_device(model) == device:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        if low_memory:
            model.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()


def rollout_prompt_ids(tokenizer, prompt: Conversation, context: int | None, max_new_tokens: int) -> list[int]:
    """A prompt's ids for the rollouts: the whole conversation through the chat template, its oldest
    whole turns dropped when it would leave less than max_new_tokens of the model's context. One whose
    system message and last user turn alone do not fit stays whole, and check_inputs refuses it."""
    if context:
        fitted = fit_conversation(tokenizer, prompt, context - max_new_tokens, cut_last_turn=False)
        if fitted is not None:
            return encode_prompt(tokenizer, fitted)
    return encode_prompt(tokenizer, prompt)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def check_inputs(
    policy,
    ref_policy,
    reward_model,
    value_model,
    tokenizer,
    prompt_ids,
    ptx_ids,
    config,
    reward_tokenizer,
    reward_fn,
    team_size: int = 1,
) -> None:
    """Bad input as ValueError with what to fix, before any work is done."""
    problems = config.problems()
    if problems:
        raise ValueError("Invalid PPO config: " + " ".join(problems))
    if config.top_p < 1:
        raise ValueError(
            f"top_p={config.top_p} is not supported in PPO: the log-probs and the KL are computed under the "
            f"whole softmax, so answers sampled from a truncated one would be scored by another "
            f"distribution. Use top_p=1 (temperature still applies)."
        )
    if team_size > 1 and (config.rollout_batch_size % team_size or config.minibatch_size % team_size):
        raise ValueError(
            f"With {team_size} processes, rollout_batch_size ({config.rollout_batch_size}) and minibatch_size "
            f"({config.minibatch_size}) must both divide by {team_size}: each process takes an equal part."
        )
    if not prompt_ids:
        raise ValueError("PPO needs at least one train prompt; the prompt list is empty.")
    if (reward_model is None) == (reward_fn is None):
        raise ValueError("Give exactly one of reward_model (a ScalarHeadModel) or reward_fn (a programmatic reward).")
    if ref_policy is None and not hasattr(policy, "disable_adapter"):
        raise ValueError(
            "ref_policy is required unless the policy has LoRA adapters (lora_r > 0), whose "
            "base model then serves as the reference."
        )
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in end_ids(
        tokenizer, getattr(policy, "generation_config", None)
    ):
        raise ValueError(
            "The tokenizer needs a pad token distinct from every end token (use trainer.modeling.load_tokenizer)."
        )
    context = getattr(policy.config, "max_position_embeddings", None)
    if context:
        for i, ids in enumerate(prompt_ids):
            if len(ids) + config.max_new_tokens > context:
                raise ValueError(
                    f"Prompt {i} is {len(ids)} tokens long; with max_new_tokens={config.max_new_tokens} it needs "
                    f"{len(ids) + config.max_new_tokens} positions but the model's context is {context}. "
                    f"Shorten or drop the prompt, or lower max_new_tokens."
                )
        for i, (_, labels) in enumerate(ptx_ids):
            if all(label == IGNORE for label in labels[1:]):
                raise ValueError(
                    f"Demonstration {i} for ptx leaves none of its answer within the model's context of "
                    f"{context} tokens; shorten or drop it."
                )
    vocab = policy.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the policy only {vocab} embeddings: "
            f"they do not belong together."
        )
    for name, model in (("reward model", reward_model), ("value model", value_model)):
        if model is None:
            continue
        other = model.backbone.get_input_embeddings().weight.shape[0]
        if other != vocab:
            raise ValueError(
                f"The {name} has a vocabulary of {other} tokens and the policy {vocab}: it comes from another "
                f"tokenizer family, so it would read the policy's tokens as different words. Train the reward "
                f"model from the SFT model (or the same base model)."
            )
        for special in ("eos_token_id", "bos_token_id"):
            mine, theirs = getattr(tokenizer, special, None), getattr(model.config, special, None)
            if isinstance(theirs, int) and mine is not None and theirs != mine:
                raise ValueError(
                    f"The {name}'s {special} is {theirs} but the policy tokenizer's is {mine}: it "
                    f"comes from another tokenizer family. Train it from the SFT model."
                )
    if reward_tokenizer is not None:
        same_specials = all(
            getattr(reward_tokenizer, s, None) == getattr(tokenizer, s, None)
            for s in ("eos_token", "bos_token", "pad_token")
        )
        if reward_tokenizer.get_vocab() != tokenizer.get_vocab() or not same_specials:
            raise ValueError(
                "The reward model's tokenizer differs from the policy's (vocabulary or special "
                "tokens): it comes from another tokenizer family. Train the reward model from the "
                "SFT model (or the same base model) so both read the same tokens."
            )


def adamw(params: list, lr: float, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW without weight decay, as TRL's PPO (torch's default 0.01 would pull every weight of the
    policy and value model toward 0, away from the SFT model the KL penalty holds it to), with the
    fused kernel where this torch has one for the device (one kernel for all parameters instead of a
    loop of small ops: ~2x faster steps for small models) and `fused` allows it."""
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=0.0, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=0.0)


def warmup_lr(config: PPOConfig, step: int) -> float:
    """The learning rate of PPO step `step` (from 1): a linear warmup over the first warmup_steps
    steps (InstructGPT: 10), learning_rate * step / warmup_steps, then learning_rate. A function of
    the step alone, so a resumed run goes on at the rate it stopped at."""
    return config.learning_rate * min(1.0, step / config.warmup_steps) if config.warmup_steps else config.learning_rate


class LastGoodPolicy:
    """What the policy goes back to when a step diverges, without a full copy of it per step (2.5 GB
    per step for a 1B model): a LoRA policy's adapters are copied (small); a fully fine-tuned policy
    goes back to its newest checkpoint from a good step (none: it is not put back). A step is good
    once the next rollout, sampled from its weights, passed the KL and finiteness checks."""

    def __init__(self, policy, checkpoints: Checkpoints, lora: bool):
        self.policy, self.checkpoints, self.lora = policy, checkpoints, lora
        self.adapters: dict[str, torch.Tensor] | None = None
        self.step = 0

    def keep(self, step: int) -> None:
        """The policy after `step` is good (the rollout it sampled passed the checks)."""
        self.step = step
        if self.lora:
            self.adapters = trained_state(self.policy)

    def restore(self) -> int | None:
        """Puts the last good weights back; the step they are from, or None when there are none."""
        if self.adapters is not None:
            load_trained_state(self.policy, self.adapters)
            return self.step
        state = self.checkpoints.load_file(at_most=self.step)
        if state is None:
            return None
        load_trained_state(self.policy, state["policy"]["weights"])
        return int(state["step"])


def diverged(message: str, last_good: LastGoodPolicy) -> TrainingDiverged:
    """Puts the last good policy weights back (when there are some) and builds the error that says so."""
    step = last_good.restore()
    if step is None:
        return TrainingDiverged(f"{message} There is no earlier good policy to go back to (no checkpoint yet).")
    return TrainingDiverged(
        f"{message} The policy was put back to its weights after step {step}, the last good one.",
        last_good_step=step,
    )


def peak_memory_mb(device: torch.device) -> float:
    """The GPU's peak allocation during this step (reset after reading), or the process's peak
    resident memory on the CPU (which only grows)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the algorithm, step by step ---------------------------------------------------------------


@dataclass
class Rollout:
    """One step's sampled answers and what the models say of them (steps 1-4), for this process's
    part of the batch. Tensors are [rows, response tokens] unless said otherwise."""

    batch: list[int]
    """The prompts' indices."""
    queries: torch.Tensor
    """The prompts, left-padded [rows, prompt tokens], and their attention mask."""
    query_mask: torch.Tensor
    responses: torch.Tensor
    """The answers, pad after their first end token."""
    response_mask: torch.Tensor
    """True up to and including the first end token."""
    mask: torch.Tensor
    """response_mask as floats."""
    ended: torch.Tensor
    """[rows]: whether each answer produced an end token."""
    seqs: torch.Tensor
    """queries + responses, and their attention mask."""
    seq_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor
    """[rows]: the reward model's (or reward_fn's) score of each answer."""


@dataclass
class Targets:
    """What the PPO epochs fit (steps 5-6), with the figures the step's metrics need."""

    kl: torch.Tensor
    """Per-token KL to the reference."""
    mean_kl: float
    """Per answer, over the whole batch (every process)."""
    rows_total: float
    """Answers in the whole batch."""
    penalized: torch.Tensor
    """The scores less the missing-EOS penalty."""
    advantages: torch.Tensor
    returns: torch.Tensor


class PPORun:
    """What one train_ppo call keeps across its steps (models, optimizer, prompt order and queues, the
    last good policy), and the steps themselves as methods, in the order they run."""

    def __init__(
        self,
        policy,
        ref_policy,
        reward_model,
        value_model,
        tokenizer,
        prompts: Sequence[Conversation],
        config: PPOConfig,
        *,
        ptx: Sequence[SFTExample],
        reward_tokenizer,
        reward_fn: Callable[[list[Conversation], list[str]], Sequence[float]] | None,
        checkpoints: Checkpoints | None,
        should_stop: Callable[[], bool] | None,
    ):
        """0. Tokenize and check everything before any work; freeze the frozen, switch dropout off;
        the optimizer, and the random generators and queues of this run."""
        self.team = team = Team()  # one process, or one of several under accelerate launch (see the header)
        context = getattr(policy.config, "max_position_embeddings", None)
        self.prompt_ids = [rollout_prompt_ids(tokenizer, p, context, config.max_new_tokens) for p in prompts]
        # PPO-ptx rows as SFT encodes them: the answer's tokens learned, the conversation as context.
        self.ptx_ids = [encode_demonstration(tokenizer, ex.prompt, ex.completion, max_length=context) for ex in ptx]
        check_inputs(
            policy,
            ref_policy,
            reward_model,
            value_model,
            tokenizer,
            self.prompt_ids,
            self.ptx_ids,
            config,
            reward_tokenizer,
            reward_fn,
            team.size,
        )
        self.policy, self.ref_policy, self.value_model = policy, ref_policy, value_model
        self.reward_model, self.reward_fn = reward_model, reward_fn
        self.tokenizer, self.prompts, self.config = tokenizer, prompts, config
        self.device = model_device(policy)
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = end_ids(tokenizer, getattr(policy, "generation_config", None))
        for model in (policy, ref_policy, reward_model, value_model):
            if model is not None:
                disable_dropout(model)
        for model in (ref_policy, reward_model):
            if model is not None:
                model.eval().requires_grad_(False)
        sharded = config.sharding == "fsdp" and team.size > 1
        self.precision = for_model(config.precision, policy, sharded=sharded)  # fp32 masters unless bf16-pure
        for_model(config.precision, value_model)
        # DDP for the training passes, sampling and the no-grad passes use the models themselves; or
        # FSDP, which shards the models in place (every pass through them is then collective).
        self.policy_ddp = team.wrap(policy, config.sharding, self.precision.name)
        self.value_ddp = team.wrap(value_model, config.sharding, self.precision.name)
        self.sharded = is_sharded(policy)
        self.policy_params = [p for p in policy.parameters() if p.requires_grad]
        self.value_params = [p for p in value_model.parameters() if p.requires_grad]
        self.optimizer = adamw(
            self.policy_params + self.value_params, config.learning_rate, fused=self.precision.fused_optimizer
        )
        self.both = torch.nn.ModuleList([policy, value_model])  # what holds the optimizer's parameters
        torch.manual_seed(config.seed + team.rank)  # each process samples its own answers
        self.order = random.Random(config.seed)  # the same prompt order in every process: each takes its part
        self.prompt_queue: list[int] = []
        self.ptx_queue: list[int] = []
        self.total_steps = config.total_episodes // config.rollout_batch_size
        self.micro = config.minibatch_size // team.size  # this process's rows of each global minibatch
        self.metrics: dict[str, float] = {}
        self.steps_done = 0
        self.first_step = 1
        self.started = time.perf_counter()
        self.checkpoints = checkpoints or Checkpoints()
        self.last_good = LastGoodPolicy(policy, self.checkpoints, lora=bool(config.lora_r))
        self.ref_context = (lambda: nullcontext()) if ref_policy is not None else policy.disable_adapter
        self.should_stop = should_stop or (lambda: False)
        self.sampler: Sampler = HFSampler(
            policy, batch_size=config.forward_batch_size, pad_id=self.pad_id, synced_gpus=self.sharded
        )
        """Replaced by train_ppo with the run's rollout backend once the policy holds its resumed weights."""
        self.resumed = False
        self.seconds = {"rollout_s": 0.0, "scoring_s": 0.0, "update_s": 0.0, "checkpoint_s": 0.0}
        """Each phase's seconds in the current step (process 0's: the processes wait for each other)."""

    def resume(self) -> None:
        """Go on exactly where the newest checkpoint was written; without one, save the SFT policy
        itself as step 0 (what a divergence in the first steps goes back to)."""
        resumed = self.checkpoints.load()
        if resumed is None:
            if self.checkpoints.enabled:
                self.save(0)
            return
        team = self.team
        self.resumed = True
        restore_training_state(
            resumed["policy"], self.policy, self.optimizer, None, self.precision.scaler, owner=self.both
        )
        load_trained_state(self.value_model, resumed["value"])
        loop = resumed["loop"]
        if len(loop.get("rng_by_rank", [])) == team.size:  # each process's own generators
            set_rng_state(loop["rng_by_rank"][team.rank])
        self.steps_done, self.metrics = loop["step"], loop["metrics"]
        self.prompt_queue[:], self.ptx_queue[:] = loop["prompt_queue"], loop["ptx_queue"]
        set_random_state(self.order, loop["order"])
        self.first_step = self.steps_done + 1

    def save(self, step: int) -> None:
        started = time.perf_counter()
        loop = {
            "step": step,
            "metrics": self.metrics,
            "prompt_queue": self.prompt_queue,
            "ptx_queue": self.ptx_queue,
            "order": random_state(self.order),
            "rng_by_rank": self.team.gather(rng_state()),
        }
        policy_state = training_state(self.policy, self.optimizer, None, self.precision.scaler, owner=self.both)
        state = {"policy": policy_state, "value": checkpoint_weights(self.value_model), "loop": loop}
        save_together(self.checkpoints, self.team, step, state)
        self.seconds["checkpoint_s"] += time.perf_counter() - started  # reported with the next step's metrics

    def save_on_stop(self) -> None:
        """The checkpoint of a run stopped between steps, unless this call did no step yet (the
        newest checkpoint, resumed from or of step 0, already holds where it is)."""
        if self.checkpoints.due(self.steps_done, self.config.save_every, stopping=True):
            if self.steps_done >= self.first_step:
                self.save(self.steps_done)

    def take(self, queue: list[int], n: int, size: int) -> list[int]:
        """The next n indices of a queue over range(size), refilled in a new order when empty."""
        out: list[int] = []
        while len(out) < n:
            if not queue:
                queue.extend(self.order.sample(range(size), size))
            out.append(queue.pop())
        return out

    def stop_now(self) -> bool:
        """Whether any process was asked to stop (decided together: nobody waits for one that left)."""
        return self.team.any(self.should_stop())

    def next_prompts(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """1. A batch of prompts (this process's part), left-padded so every answer starts in the same column."""
        chosen = self.take(self.prompt_queue, self.config.rollout_batch_size, len(self.prompt_ids))
        batch = self.team.shard(chosen)
        queries, query_mask = pad_batch([self.prompt_ids[i] for i in batch], self.pad_id, left=True)
        return batch, queries.to(self.device), query_mask.to(self.device)

    def roll_out(self, batch: list[int], queries: torch.Tensor, query_mask: torch.Tensor) -> Rollout | None:
        """2-4. The answers to the batch's prompts and what the models say of them; None when a stop
        came during sampling."""
        self.policy.eval()
        self.value_model.eval()
        with torch.no_grad(), self.precision.autocast():
            started = time.perf_counter()
            responses = self.sample(batch)
            if responses is None:
                return None
            scoring = time.perf_counter()
            rollout = self.score(batch, queries, query_mask, responses)
        self.seconds["rollout_s"] = scoring - started
        self.seconds["scoring_s"] = time.perf_counter() - scoring
        return rollout

    def sample(self, batch: list[int]) -> torch.Tensor | None:
        """2. Rollouts: one answer per prompt from the run's sampler (generate() on the policy, or a
        vLLM engine holding its weights); a cancel ends the sampling at the next token (the
        unfinished step is dropped: the run resumes before it). The answers right-padded to the
        longest; None when stopped."""
        config = self.config
        spec = SamplingSpec(1, config.temperature, config.top_p, config.max_new_tokens, self.eos_id)
        prompts = [self.prompt_ids[i] for i in batch]
        gather = gathered_for_sampling(self.policy) if self.sampler.name == "hf" else nullcontext()
        with gather:  # FSDP: the weights gathered once, not at every token
            completions = self.sampler.sample(prompts, spec, self.should_stop)
        if self.stop_now() or completions is None:  # decided together: nobody waits for one that left
            return None
        rows = [answers[0].token_ids for answers in completions]
        length = max(len(r) for r in rows)
        return torch.tensor([r + [self.pad_id] * (length - len(r)) for r in rows], device=self.device)

    def score(
        self, batch: list[int], queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor
    ) -> Rollout:
        """3-4. The answers cut at their first end token; the log-probs, values and scores of them."""
        # 3. Mask everything after the first EOS (pad != EOS, so the EOS itself is kept and learned).
        response_mask, ended = response_mask_after_eos(responses, self.eos_id)
        responses = responses.masked_fill(~response_mask, self.pad_id)
        seqs = torch.cat([queries, responses], dim=1)
        seq_mask = torch.cat([query_mask, response_mask.long()], dim=1)

        # 4. Log-probs of the policy and the reference (temperature applied), values, scores.
        config, size, length = self.config, self.config.forward_batch_size, responses.shape[1]
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logprobs", "ref", "values", "entropy", "scores")}
        for lo in range(0, len(batch), size):
            part = slice(lo, lo + size)
            part_ids, part_mask, resp = seqs[part], seq_mask[part], responses[part]
            logits = policy_logits(self.policy, part_ids, part_mask, length)
            parts["logprobs"].append(logprobs_from_logits(logits, resp, config.temperature))
            parts["entropy"].append(entropy_from_logits(logits, config.temperature))
            del logits
            parts["values"].append(token_values(self.value_model, part_ids, part_mask, length))
        with visiting(self.ref_policy, self.device, config.low_memory), self.ref_context():
            reference = self.ref_policy if self.ref_policy is not None else self.policy
            for lo in range(0, len(batch), size):
                part = slice(lo, lo + size)
                logits = policy_logits(reference, seqs[part], seq_mask[part], length)
                parts["ref"].append(logprobs_from_logits(logits, responses[part], config.temperature))
        if self.reward_fn is None:
            with visiting(self.reward_model, self.device, config.low_memory):
                for lo in range(0, len(batch), size):
                    part = slice(lo, lo + size)
                    parts["scores"].append(self.reward_model(seqs[part], seq_mask[part]).float())
            scores = torch.cat(parts["scores"])
        else:
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            given = list(self.reward_fn([self.prompts[i] for i in batch], texts))
            if len(given) != len(texts):
                raise ValueError(f"reward_fn returned {len(given)} scores for {len(texts)} completions.")
            scores = torch.tensor([float(v) for v in given], device=self.device)
        return Rollout(
            batch=batch,
            queries=queries,
            query_mask=query_mask,
            responses=responses,
            response_mask=response_mask,
            mask=response_mask.float(),
            ended=ended,
            seqs=seqs,
            seq_mask=seq_mask,
            logprobs=torch.cat(parts["logprobs"]),
            ref_logprobs=torch.cat(parts["ref"]),
            values=torch.cat(parts["values"]),
            entropy=torch.cat(parts["entropy"]),
            scores=scores,
        )

    def targets(self, rollout: Rollout, step: int) -> Targets:
        """5-6. Per-token rewards, the divergence checks, GAE advantages and returns."""
        config, team, mask = self.config, self.team, rollout.mask
        with torch.no_grad(), self.precision.autocast():
            # 5. Rewards: -beta * KL per token, the score (minus the no-EOS penalty) at the last token.
            kl = per_token_kl(rollout.logprobs, rollout.ref_logprobs, mask)
            kl_total, rows_total = team.sum(float(kl.sum()), len(rollout.batch))
            mean_kl = kl_total / rows_total  # over the whole batch: every process decides alike
            if team.any(not math.isfinite(mean_kl) or not bool(torch.isfinite(rollout.scores).all())):
                raise diverged(f"Step {step}: non-finite log-probs or scores.", self.last_good)
            if mean_kl > config.kl_limit:
                raise diverged(
                    f"Step {step}: the KL to the reference is {mean_kl:.2f} nats, past kl_limit={config.kl_limit}.",
                    self.last_good,
                )
            penalized = rollout.scores - config.missing_eos_penalty * (~rollout.ended).float()
            rewards = rewards_with_kl(penalized, kl, mask, config.kl_coef)
            if config.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False, team=team)

            # 6. GAE advantages and returns; advantages whitened over the batch's real tokens.
            advantages, returns = gae_advantages(rewards, rollout.values, mask, config.gamma, config.lam)
            advantages = masked_whiten(advantages, mask, team=team)
        return Targets(kl, mean_kl, rows_total, penalized, advantages, returns)

    def optimize(self, rollout: Rollout, targets: Targets, step: int) -> tuple[dict[str, list[torch.Tensor]], bool]:
        """7. PPO epochs over shuffled minibatches: clipped ratio + clipped value loss (+ ptx). Returns
        each minibatch's figures, and whether a stop came (looked for after each epoch)."""
        self.policy.train()
        self.value_model.train()
        names = ("policy_loss", "value_loss", "clip_frac", "approx_kl", "ptx_loss")
        stats: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        started = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_lr(self.config, step)
        for _ in range(self.config.ppo_epochs):
            permutation = torch.randperm(len(rollout.batch), device=self.device)
            for lo in range(0, len(rollout.batch), self.micro):
                rows = permutation[lo : lo + self.micro]
                with self.precision.autocast():  # the forward passes of this minibatch (backward runs outside)
                    loss, figures = self.minibatch_loss(rollout, targets, rows)
                self.update(loss, step)
                for name, value in figures.items():
                    stats[name].append(value.detach())
            if self.stop_now():
                return stats, True
        self.seconds["update_s"] = time.perf_counter() - started
        return stats, False

    def minibatch_loss(
        self, rollout: Rollout, targets: Targets, rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The PPO loss of these rows (trimmed to their longest prompt and answer), and its parts."""
        config = self.config
        width = rollout.queries.shape[1]
        first, resp_len = trim(rollout.query_mask[rows], rollout.response_mask[rows])
        ids = rollout.seqs[rows][:, first : width + resp_len]
        ids_mask = rollout.seq_mask[rows][:, first : width + resp_len]
        mb_mask = rollout.mask[rows][:, :resp_len]
        logits = policy_logits(self.policy_ddp, ids, ids_mask, resp_len)
        new_logprobs = logprobs_from_logits(logits, rollout.responses[rows][:, :resp_len], config.temperature)
        pg_loss, clip_frac, approx_kl = clipped_policy_loss(
            new_logprobs,
            rollout.logprobs[rows][:, :resp_len],
            targets.advantages[rows][:, :resp_len],
            mb_mask,
            config.cliprange,
        )
        new_values = token_values(self.value_ddp, ids, ids_mask, resp_len)
        vf_loss = clipped_value_loss(
            new_values,
            rollout.values[rows][:, :resp_len],
            targets.returns[rows][:, :resp_len],
            mb_mask,
            config.cliprange_value,
        )
        loss = pg_loss + config.vf_coef * vf_loss
        figures = {"policy_loss": pg_loss, "value_loss": vf_loss, "clip_frac": clip_frac, "approx_kl": approx_kl}
        if self.ptx_ids and config.ptx_coef > 0:
            ptx_loss = self.ptx_loss()
            loss = loss + config.ptx_coef * ptx_loss
            figures["ptx_loss"] = ptx_loss
        return loss, figures

    def ptx_loss(self) -> torch.Tensor:
        """PPO-ptx: the SFT loss (response tokens only) on a batch of demonstrations (this process's
        part; through the model itself: DDP allows one forward per backward, and the gradients of
        both passes meet in the same all-reduce)."""
        chosen = self.team.shard(self.take(self.ptx_queue, self.config.ptx_batch_size, len(self.ptx_ids)))
        demos = [self.ptx_ids[i] for i in chosen]
        loss_sum, tokens = response_loss_sum(self.policy, demos, self.pad_id)
        return loss_sum / max(tokens, 1)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """One optimizer step of the policy and the value model; a non-finite loss or gradient norm
        is divergence (the step is not applied)."""
        if self.team.any(not torch.isfinite(loss)):
            raise diverged(f"Step {step}: the loss became {float(loss.detach())}.", self.last_good)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(self.optimizer, lambda: self.clip_gradients(step))

    def clip_gradients(self, step: int) -> torch.Tensor:
        # Clipped per model: the value loss's large early gradients must not shrink the policy's step.
        max_norm = self.config.max_grad_norm
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.policy_params, max_norm)) + full_tensor(
            torch.nn.utils.clip_grad_norm_(self.value_params, max_norm)
        )
        # fp16: the scaler skips a step whose gradients overflowed; otherwise it is divergence.
        if not torch.isfinite(norm) and self.precision.scaler is None:
            raise diverged(f"Step {step}: the gradient norm became {float(norm)}.", self.last_good)
        return norm

    def step_metrics(
        self, rollout: Rollout, targets: Targets, stats: dict[str, list[torch.Tensor]], step: int
    ) -> dict[str, float]:
        """8. Metrics of this step, over the whole batch (peak memory: this process's)."""
        mask, rows_total = rollout.mask, targets.rows_total
        score_sum, reward_sum, entropy_sum, response_tokens, ended_sum = self.team.sum(
            float(rollout.scores.sum()),
            float((targets.penalized - self.config.kl_coef * targets.kl.sum(1)).sum()),
            float((rollout.entropy * mask).sum()),
            float(mask.sum()),
            float(rollout.ended.float().sum()),
        )
        episodes = (step - self.first_step + 1) * self.config.rollout_batch_size
        metrics = {
            "score": score_sum / rows_total,
            "reward": reward_sum / rows_total,
            "kl": targets.mean_kl,
            "entropy": entropy_sum / max(response_tokens, 1.0),
            "response_length": response_tokens / rows_total,
            "eos_fraction": ended_sum / rows_total,
            "episodes_per_s": episodes / (time.perf_counter() - self.started),
            "peak_memory_mb": peak_memory_mb(self.device),
            **self.seconds,  # rollout (sampling), scoring (log-probs, values, rewards), update, checkpoint
        }
        self.seconds["checkpoint_s"] = 0.0
        means = {name: float(torch.stack(v).mean()) for name, v in stats.items() if v}
        metrics.update(zip(means, (v / self.team.size for v in self.team.sum(*means.values())), strict=True))
        return metrics

    def summary(self, stopped: bool) -> dict:
        """The last step's metrics and the run's figures; the models left in eval mode."""
        self.policy.eval()
        self.value_model.eval()
        seconds = time.perf_counter() - self.started
        return {
            **self.metrics,
            **({"resumed_from_step": float(self.first_step - 1)} if self.resumed else {}),
            "steps": float(self.steps_done),
            "episodes": float(self.steps_done * self.config.rollout_batch_size),
            "stopped_early": float(stopped),
            "seconds": seconds,
            "rollout_backend": self.sampler.name,
            **self.team.info(),
        }


FIRST_STEP_SHARES = (0.2, 0.15, 0.65)
"""The shares of rolling out, scoring and optimizing in a step's time before a step has been timed
(then the previous step's own): SmolLM2-135M PPO at the CPU preset in fp32 on the 2-core CPU
(bench/worker_memory.py: 0.22/0.20/0.58 in step 1, 0.13/0.13/0.74 in step 2)."""


class StepProgress:
    """How far the current step is, for on_phase(phase, total_steps, fraction of the step done): the
    phase with a detail, "rolling out (token 12 of 24)", "scoring", "optimizing (epoch 2 of 4)",
    reported at each phase's start and at most every trainer.progress.REPORT_EVERY_S inside it.

    Counted from forward passes (trainer.progress), so neither the sampler nor the PPO epochs need
    to report: while generate() samples, the policy runs one pass per new token and the sampler asks
    between_batches() after each batch (a vLLM engine runs its own passes: its rollouts show no
    tokens, and "scoring" shows from the next phase on); while the epochs run, the value model runs
    one pass per minibatch. A phase's share of the step is its share of the previous step's time."""

    def __init__(self, run: "PPORun", on_phase: Callable[[str, int, float], None]):
        self.run, self.on_phase = run, on_phase
        config, rows = run.config, run.config.rollout_batch_size // run.team.size
        self.batches = math.ceil(rows / config.forward_batch_size)
        self.per_epoch = math.ceil(rows / run.micro)
        self.shares: tuple[float, float, float] = FIRST_STEP_SHARES
        self.phase, self.batches_done = "", 0
        self.tokens = ForwardPasses(run.policy.get_input_embeddings(), lambda: self.moved("rolling out"))
        self.minibatches = ForwardPasses(run.value_model, lambda: self.moved("optimizing"))

    def start(self, phase: str) -> None:
        self.phase = phase
        self.batches_done = self.tokens.count = self.minibatches.count = 0
        self.report()

    def between_batches(self, stop_now: Callable[[], bool]) -> Callable[[], bool]:
        """The sampler's between_batches: counts the batch sampled, then asks stop_now(); after the
        step's last batch the rollout goes on to scoring."""

        def ask() -> bool:
            self.batches_done += 1
            self.tokens.count = 0
            if self.phase == "rolling out" and self.batches_done >= self.batches:
                self.start("scoring")
            return stop_now()

        return ask

    def moved(self, phase: str) -> None:
        if self.phase == phase:
            self.report()

    def where(self) -> tuple[float, str]:
        """(the fraction of the step done, the phase's detail)."""
        rolling, scoring, optimizing = self.shares
        if self.phase == "rolling out":
            most = self.run.config.max_new_tokens
            tokens = min(self.tokens.count, most)
            done = min(1.0, (self.batches_done + tokens / most) / self.batches)
            if self.batches == 1:
                return rolling * done, f"token {tokens} of {most}"
            return (
                rolling * done,
                f"batch {min(self.batches_done + 1, self.batches)}/{self.batches}, token {tokens}/{most}",
            )
        if self.phase == "optimizing":
            epochs = self.run.config.ppo_epochs
            finished = min(max(self.minibatches.count - 1, 0), epochs * self.per_epoch)  # the counted one runs
            epoch = min(finished // self.per_epoch + 1, epochs)
            return rolling + scoring + optimizing * finished / (epochs * self.per_epoch), f"epoch {epoch} of {epochs}"
        return rolling, ""

    def report(self) -> None:
        fraction, detail = self.where()
        self.on_phase(f"{self.phase} ({detail})" if detail else self.phase, self.run.total_steps, fraction)

    def step_done(self) -> None:
        """The step's phases' times set the shares of the next (scoring's from the rollout's end)."""
        rolling, scoring, optimizing = (self.run.seconds[k] for k in ("rollout_s", "scoring_s", "update_s"))
        if min(rolling, scoring, optimizing) > 0:
            total = rolling + scoring + optimizing
            self.shares = (rolling / total, scoring / total, optimizing / total)

    def close(self) -> None:
        self.tokens.close()
        self.minibatches.close()


def train_ppo(
    policy,
    ref_policy,
    reward_model,
    value_model,
    tokenizer,
    prompts: Sequence[Conversation],
    config: PPOConfig,
    *,
    ptx: Sequence[SFTExample] = (),
    on_metrics: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    reward_tokenizer=None,
    reward_fn: Callable[[list[Conversation], list[str]], Sequence[float]] | None = None,
    checkpoints: Checkpoints | None = None,
    on_phase: Callable[[str, int, float], None] | None = None,
) -> dict:
    """Optimize `policy` in place with PPO against `reward_model`; return a summary of the run.

    - policy: causal LM (from SFT), trained; LoRA-wrapped when config.lora_r > 0.
    - ref_policy: frozen copy of the SFT model, or None with a LoRA policy (adapters off = reference).
    - reward_model: frozen ScalarHeadModel; value_model: a ScalarHeadModel (from the reward model), trained.
    - reward_tokenizer: the reward model's own tokenizer, checked against `tokenizer` when given.
    - prompts: strings or conversations (trainer/data.py), each formatted whole by the chat template;
      one too long for the context with max_new_tokens loses its oldest whole turns.
    - reward_fn(prompts, completions) -> scores: a programmatic reward (e.g. a checkable answer) used
      instead of reward_model, given the prompts as passed; completions are decoded without special tokens.
    - on_phase(phase, total_steps, fraction): what the step does now and the fraction of it done,
      "rolling out (token 12 of 24)", "scoring", "optimizing (epoch 2 of 4)" (StepProgress).
    - checkpoints: a checkpoint every config.save_every steps and when stopped between steps (a stop
      in the middle of a step's PPO epochs goes back to the previous checkpoint), and the run goes on
      from the newest one it finds.
    Returns the last step's metrics with "steps", "episodes", "stopped_early" (1.0 when should_stop
    ended it) and "seconds"; every step's metrics went to on_metrics(step, total_steps, metrics)."""
    run = PPORun(
        policy,
        ref_policy,
        reward_model,
        value_model,
        tokenizer,
        prompts,
        config,
        ptx=ptx,
        reward_tokenizer=reward_tokenizer,
        reward_fn=reward_fn,
        checkpoints=checkpoints,
        should_stop=should_stop,
    )
    run.resume()
    progress = StepProgress(run, on_phase or (lambda phase, total, fraction: None))
    try:
        run.sampler = make_sampler(
            config.rollout_backend,
            policy,
            batch_size=config.forward_batch_size,
            pad_id=run.pad_id,
            synced_gpus=run.sharded,  # FSDP: every process runs as many forward passes
            between_batches=progress.between_batches(run.stop_now),
        )
        try:
            return _steps(run, config, on_metrics, progress)
        finally:
            run.sampler.close()
    finally:
        progress.close()


def _steps(
    run: PPORun,
    config: PPOConfig,
    on_metrics: Callable[[int, int, dict], None] | None,
    progress: StepProgress,
) -> dict:
    """train_ppo's steps, from the first not yet done to the last or a stop."""
    stopped = False
    for step in range(run.first_step, run.total_steps + 1):
        if run.stop_now():  # between steps: a clean point to resume from
            stopped = True
            run.save_on_stop()
            break
        batch, queries, query_mask = run.next_prompts()
        progress.start("rolling out")  # (the number of steps is known before the first ends)
        rollout = run.roll_out(batch, queries, query_mask)
        if rollout is None:
            stopped = True
            break
        targets = run.targets(rollout, step)
        # This policy is good (its KL is fine): keep it to fall back to if the update below diverges.
        run.last_good.keep(step - 1)
        progress.start("optimizing")
        run.sampler.sleep()  # vLLM on a GPU: its KV cache freed while the update runs
        stats, stopped = run.optimize(rollout, targets, step)
        if not stopped and step < run.total_steps:
            run.sampler.load_weights(run.policy)  # the next rollouts come from the updated policy
        run.metrics = run.step_metrics(rollout, targets, stats, step)
        run.steps_done = step
        progress.step_done()
        if on_metrics is not None:
            on_metrics(step, run.total_steps, run.metrics)
        if stopped:
            break
        if run.checkpoints.due(step, config.save_every):
            run.save(step)
    return run.summary(stopped)


def main(argv: list[str] | None = None) -> None:
    from trainer import standalone
    from trainer.modeling import (
        ScalarHeadModel,
        load_causal_lm,
        load_tokenizer,
        resolve_model_source,
        save_causal_lm,
    )

    parser = standalone.parser("PPO of an SFT policy against a reward model.")
    parser.add_argument("--policy", required=True, help="the SFT model: local folder, hub id or smollm2-135m-instruct")
    parser.add_argument("--reward", required=True, help="a reward model folder (trainer.reward's output)")
    parser.add_argument(
        "--prompts", required=True, type=Path, help='JSONL with a "prompt" per line (a string or a message list)'
    )
    parser.add_argument("--ptx", type=Path, help='demonstrations for PPO-ptx: JSONL with "prompt" and "completion"')
    parser.add_argument("--low-memory", action="store_true", help="keep the reference and reward models in CPU memory")
    args = parser.parse_args(argv)
    config = standalone.config("ppo", args.set, **({"low_memory": True} if args.low_memory else {}))
    source = resolve_model_source(args.policy, args.cache)
    tokenizer = load_tokenizer(source)
    device = standalone.device()
    frozen = torch.device("cpu") if config.low_memory else device
    torch.manual_seed(config.seed)
    policy = load_causal_lm(
        source,
        device=device,
        lora_r=config.lora_r,
        dtype=load_dtype(config.precision),
        gradient_checkpointing=config.gradient_checkpointing,
    )
    # The frozen models in the policy's weights' dtype: equal weights give a KL of exactly 0.
    ref = None if config.lora_r else load_causal_lm(source, device=frozen, dtype=frozen_dtype(config.precision))
    reward = ScalarHeadModel.from_pretrained(args.reward, device=frozen, dtype=frozen_dtype(config.precision))
    value = ScalarHeadModel.from_pretrained(
        args.reward,
        device=device,
        lora_r=config.value_lora_r,
        dtype=load_dtype(config.precision),
        gradient_checkpointing=config.gradient_checkpointing,
    )
    prompts = [row["prompt"] for row in standalone.read_jsonl(args.prompts)]
    ptx = [
        SFTExample(row["prompt"], standalone.answer_text(row["completion"])) for row in standalone.read_jsonl(args.ptx)
    ]
    try:
        result = train_ppo(
            policy,
            ref,
            reward,
            value,
            tokenizer,
            prompts,
            config,
            ptx=ptx,
            reward_tokenizer=load_tokenizer(args.reward),
            on_metrics=standalone.print_metrics,
            should_stop=standalone.stop_on_signals(),
            checkpoints=standalone.checkpoints(args),
        )
    except TrainingDiverged as error:  # the policy holds its last good weights: keep them
        whole = full_state_dict(policy)
        if standalone.is_main():
            save_causal_lm(policy, tokenizer, args.out, whole)
        raise SystemExit(f"{error} Saved to {args.out}.") from None
    standalone.finish(result, policy, lambda whole: save_causal_lm(policy, tokenizer, args.out, whole), args)


if __name__ == "__main__":
    main()
