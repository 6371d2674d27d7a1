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
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    return model(input_ids.to(model.device), attention_mask.to(model.device)).float().cpu()
