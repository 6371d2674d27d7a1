"""Scoring answers with a reward model (pure: no database), for the `evaluate` run's automatic
win rate (worker/jobs.py)."""

import torch

from trainer import modeling
from trainer.data import Conversation


def score_pairs(
    model, tokenizer, pairs: list[tuple[Conversation, str, bool]], max_length: int | None = None
) -> torch.Tensor:
    """Reward scores of (prompt, answer, ended) triples, encoded as the reward model was trained
    (the conversation through the chat template + answer + its end token when it ended), right-padded.
    A conversation too long for the model's context, or for max_length (the length the reward model
    was trained at, when given), loses its oldest whole turns first."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if max_length:
        limit = min(limit, max_length) if limit else max_length
    rows = []
    for prompt, answer, ended in pairs:
        answer_ids = modeling.encode_completion(tokenizer, answer, ended=ended)
        budget = max(limit - len(answer_ids), limit // 2) if limit else None
        row = modeling.encode_prompt(tokenizer, prompt, max_tokens=budget) + answer_ids
        rows.append(row[-limit:] if limit else row)
    input_ids, attention_mask = modeling.pad_batch(rows, tokenizer.pad_token_id)
    return model(input_ids.to(model.device), attention_mask.to(model.device)).float().cpu()
