"""Sampling from a policy (pure: no database): K outputs per prompt through a sampler of
trainer.rollout (Hugging Face `generate` or a vLLM engine), plain temperature / top-p sampling
(top-k and repetition penalties off, whatever the model's own generation_config says), reseeded per
batch so the same seed gives the same outputs on the CPU. Used by the `generate` and `evaluate`
runs (worker/jobs.py)."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from trainer import modeling
from trainer.data import Conversation, PromptItem
from trainer.rollout import Backend, Completion, SamplingSpec, open_sampler


@dataclass(frozen=True)
class Sample:
    text: str
    ended_with_eos: bool
    num_tokens: int
    """Generated tokens, EOS included when there was one."""


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer (modeling.end_ids)."""
    return modeling.end_ids(tokenizer, getattr(model, "generation_config", None))


def context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def split_by_length(
    model, tokenizer, prompts: list[PromptItem], max_new_tokens: int, max_prompt_length: int = 0
) -> tuple[list[PromptItem], list[PromptItem]]:
    """(prompts that fit, prompts too long for the context with max_new_tokens of answer, or for
    max_prompt_length when it is set and shorter).

    A conversation over that budget loses its oldest whole turns (modeling.fit_conversation; its
    item then carries the shorter messages); one whose system message and last user turn alone are
    over it is too long: an answer to the tail of a question is no answer to the question."""
    context = context_length(model)
    budget = context - max_new_tokens if context else None
    if max_prompt_length:
        budget = max_prompt_length if budget is None else min(budget, max_prompt_length)
    if budget is None:
        return prompts, []
    fit: list[PromptItem] = []
    too_long: list[PromptItem] = []
    for item in prompts:
        messages = modeling.fit_conversation(tokenizer, item.prompt, budget, cut_last_turn=False)
        if messages is None:
            too_long.append(item)
        elif messages != modeling.as_messages(item.prompt):
            fit.append(replace(item, messages=messages))
        else:
            fit.append(item)
    return fit, too_long


def sample_batches(
    model,
    tokenizer,
    prompts: list[Conversation],
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    should_stop: Callable[[], bool] | None = None,
    backend: Backend = "hf",
) -> Iterator[tuple[int, list[list[Sample]]]]:
    """Yields (index of the batch's first prompt, K samples per prompt of the batch), batch by batch.
    should_stop() is asked at every new token too: once it says so, sampling ends within a token and
    the cut batch is not yielded (its answers would look cut at the token limit). A prompt is a
    string or a conversation, which the chat template formats whole, with the generation prompt.
    `backend` picks the sampler (trainer.rollout); its engine is closed when the iteration ends."""
    model.eval()
    ends = eos_ids(model, tokenizer)
    with open_sampler(backend, model, batch_size=batch_size, pad_id=tokenizer.pad_token_id) as sampler:
        for start in range(0, len(prompts), batch_size):
            if should_stop is not None and should_stop():
                return
            chunk = prompts[start : start + batch_size]
            encoded = [modeling.encode_prompt(tokenizer, p) for p in chunk]
            # Seeded per batch, so resuming or re-batching keeps the stream.
            spec = SamplingSpec(k, temperature, top_p, max_new_tokens, ends, seed=seed + start)
            completions = sampler.sample(encoded, spec, should_stop)
            if completions is None:
                return
            yield start, [[_to_sample(c, tokenizer, ends) for c in per_prompt] for per_prompt in completions]


def _to_sample(completion: Completion, tokenizer, ends: list[int]) -> Sample:
    body = completion.token_ids[:-1] if completion.ended else completion.token_ids
    # Postgres text cannot hold NUL, which a byte-level tokenizer can produce.
    text = tokenizer.decode(body, skip_special_tokens=True).replace("\x00", "").strip()
    return Sample(text=text, ended_with_eos=completion.ended, num_tokens=len(completion.token_ids))
