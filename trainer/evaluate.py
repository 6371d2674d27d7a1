"""Scoring answers with a reward model (pure: no database), for the `evaluate` run's automatic
win rate (worker/jobs.py)."""

import torch

from trainer import modeling


def score_pairs(model, tokenizer, pairs: list[tuple[str, str, bool]]) -> torch.Tensor:
    """Reward scores of (prompt, answer, ended) triples, encoded as the reward model was trained
    (prompt template + answer + its end token when it ended), right-padded."""
    rows = [
        modeling.encode_prompt(tokenizer, p) + modeling.encode_completion(tokenizer, a, ended=e) for p, a, e in pairs
    ]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        rows = [r[-limit:] for r in rows]
    input_ids, attention_mask = modeling.pad_batch(rows, tokenizer.pad_token_id)
    return model(input_ids.to(model.device), attention_mask.to(model.device)).float().cpu()
