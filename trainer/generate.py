"""Sampling from a policy (pure: no database): K outputs per prompt with Hugging Face `generate`
and its KV cache, plain temperature / top-p sampling (top-k and repetition penalties off, whatever
the model's own generation_config says), reseeded per batch so the same seed gives the same outputs
on the CPU. Used by the `generate` and `evaluate` runs (worker/jobs.py)."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from trainer import modeling
from trainer.data import Conversation, PromptItem


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
    model, tokenizer, prompts: list[PromptItem], max_new_tokens: int
) -> tuple[list[PromptItem], list[PromptItem]]:
    """(prompts that fit, prompts too long for the context with max_new_tokens of answer).

    A conversation over that budget loses its oldest whole turns (modeling.fit_conversation; its
    item then carries the shorter messages); one whose system message and last user turn alone are
    over it is too long: an answer to the tail of a question is no answer to the question."""
    limit = context_length(model)
    if not limit:
        return prompts, []
    fit: list[PromptItem] = []
    too_long: list[PromptItem] = []
    for item in prompts:
        messages = modeling.fit_conversation(tokenizer, item.prompt, limit - max_new_tokens, cut_last_turn=False)
        if messages is None:
            too_long.append(item)
        elif messages != modeling.as_messages(item.prompt):
            fit.append(replace(item, messages=messages))
        else:
            fit.append(item)
    return fit, too_long


@torch.no_grad()
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
) -> Iterator[tuple[int, list[list[Sample]]]]:
    """Yields (index of the batch's first prompt, K samples per prompt of the batch), batch by batch.
    should_stop() is asked at every new token too: once it says so, sampling ends within a token and
    the cut batch is not yielded (its answers would look cut at the token limit). A prompt is a
    string or a conversation, which the chat template formats whole, with the generation prompt."""
    model.eval()
    ends = eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # generation continues right after each prompt's last token
    for start in range(0, len(prompts), batch_size):
        if should_stop is not None and should_stop():
            return
        chunk = prompts[start : start + batch_size]
        encoded = [modeling.encode_prompt(tokenizer, p) for p in chunk]
        input_ids, attention_mask = modeling.pad_batch(encoded, tokenizer.pad_token_id, left=True)
        width = input_ids.shape[1]
        torch.manual_seed(seed + start)  # per batch, so resuming or re-batching keeps the stream
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            repetition_penalty=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=ends,
            stopping_criteria=StoppingCriteriaList([StopWhen(should_stop)]) if should_stop is not None else None,
        )
        if should_stop is not None and should_stop():
            return
        generated = output[:, width:].cpu()
        samples: list[list[Sample]] = []
        for row in range(len(chunk)):
            per_prompt = []
            for j in range(k):
                per_prompt.append(_to_sample(generated[row * k + j].tolist(), tokenizer, ends))
            samples.append(per_prompt)
        yield start, samples


class StopWhen(StoppingCriteria):
    """Ends a generate() call at the next token once `should_stop()` says so (a cancel, SIGTERM): a
    large batch or a long answer no longer holds a cancel until it is done."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


def _to_sample(tokens: list[int], tokenizer, ends: list[int]) -> Sample:
    stop = next((i for i, t in enumerate(tokens) if t in ends), None)
    body = tokens if stop is None else tokens[:stop]
    body = [t for t in body if t != tokenizer.pad_token_id]
    # Postgres text cannot hold NUL, which a byte-level tokenizer can produce.
    text = tokenizer.decode(body, skip_special_tokens=True).replace("\x00", "").strip()
    return Sample(text=text, ended_with_eos=stop is not None, num_tokens=len(body) + (stop is not None))
