"""`evaluate` runs: two model versions answer the same held-out prompts; the labelers compare the
answers side by side, and a reward model (when given) gives an automatic win rate.

Input models: [candidate, baseline] or [candidate, baseline, reward].

1. Snapshot the held-out prompts (config.split, at most config.num_prompts).
2. Each policy answers every prompt once, with the same sampling settings and seed (one model in
   memory at a time); the answers are stored as Completions.
3. One comparison task per prompt; which model is A is drawn per prompt from a seeded generator and
   stored as the task's output positions (A = position 0), and in the run summary.
4. With a reward model: score both answers; the candidate's win rate (ties half) with a Wilson 95% CI
   goes to the run summary. The labelers' win rate is computed on demand by app.services.evaluation."""

import gc
import random

import torch

from app.models import ModelKind, Project, Prompt
from app.services import tasks
from app.services.evaluation import win_rate
from trainer import modeling
from runconfig import EvaluateConfig, config_from_dict, config_to_dict
from trainer.data import snapshot_prompts
from trainer.generate import sample_batches, split_by_length, store_completions


def run_evaluate(ctx) -> dict:
    config: EvaluateConfig = config_from_dict("evaluate", ctx.config)
    with ctx.session() as session:
        prompts, snapshot = snapshot_prompts(session, ctx.project_id, [config.split], limit=config.num_prompts)
    candidate, baseline = ctx.input_version(0), ctx.input_version(1)
    reward = ctx.input_version(2) if len(ctx.input_model_ids) > 2 else None
    for version in (candidate, baseline):
        if version.kind == ModelKind.reward:
            raise ValueError(f"Model version {version.id} is a reward model; evaluate compares two policies.")
    if reward is not None and reward.kind != ModelKind.reward:
        raise ValueError(f"Model version {reward.id} is a {reward.kind.value} model, not a reward model.")

    # 2. Both policies answer the same prompts (those that fit both contexts).
    answers: dict[int, dict[int, int]] = {}  # version id -> prompt id -> completion id
    texts: dict[int, str] = {}  # completion id -> text
    ended: dict[int, bool] = {}  # completion id -> did the sample end by itself
    steps_total = 2 * len(prompts)
    for turn, version in enumerate((candidate, baseline)):
        source = ctx.resolve(version)
        tokenizer = ctx.load_tokenizer(source)
        model = modeling.load_causal_lm(source, device=ctx.device)
        ctx.checkpoint()
        fit, too_long = split_by_length(model, tokenizer, prompts, config.max_new_tokens)
        if too_long:
            snapshot.notes.append(f"Model version {version.id}: skipped {len(too_long)} prompt(s) too long for "
                                  f"its context: ids {[p.id for p in too_long][:20]}.")
        prompts = fit
        answers[version.id] = {}
        batches = sample_batches(model, tokenizer, [p.text for p in prompts], k=1, temperature=config.temperature,
                                 top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed,
                                 batch_size=config.batch_size, should_stop=ctx.should_stop)
        for start, samples in batches:
            with ctx.session() as session:
                for item, outputs in zip(prompts[start:start + len(samples)], samples):
                    (row,) = store_completions(session, item.id, version, outputs, config, ctx.run_id)
                    answers[version.id][item.id] = row.id
                    texts[row.id] = row.text
                    ended[row.id] = bool(row.generation.get("ended_with_eos", True))
            ctx.on_metrics(turn * steps_total // 2 + start + len(samples), steps_total, {
                f"eos_fraction_{'candidate' if turn == 0 else 'baseline'}":
                    sum(s[0].ended_with_eos for s in samples) / len(samples),
            })
        del model
        _free_memory()
        ctx.checkpoint()
    if not prompts:
        raise ValueError("No held-out prompt fits both models' contexts; lower max_new_tokens.")
    prompts = [p for p in prompts if p.id in answers[candidate.id] and p.id in answers[baseline.id]]
    snapshot.keep_prompts([p.id for p in prompts])
    ctx.set_snapshot(snapshot)

    # 3. Comparison tasks with a seeded, stored A/B order.
    rng = random.Random(config.seed)
    pairs = []
    with ctx.session() as session:
        project = session.get(Project, ctx.project_id)
        for item in prompts:
            prompt = session.get(Prompt, item.id)
            mine, theirs = answers[candidate.id][item.id], answers[baseline.id][item.id]
            candidate_is_a = rng.random() < 0.5
            a, b = (mine, theirs) if candidate_is_a else (theirs, mine)
            if prompt is None:
                continue
            task = tasks.create_comparison_task(session, project, prompt, a, b, priority=config.priority,
                                                source_run_id=ctx.run_id)
            pairs.append({"task_id": task.id, "prompt_id": item.id, "a": a, "b": b, "candidate_is_a": candidate_is_a})
    summary = {"prompts": len(pairs), "comparison_tasks": len(pairs), "candidate_model_id": candidate.id,
               "baseline_model_id": baseline.id, "pairs": pairs, "config": config_to_dict(config)}

    # 4. The reward model's verdict.
    if reward is not None:
        summary["reward_model"] = reward_win_rate(ctx, reward, prompts, answers[candidate.id], answers[baseline.id],
                                                  texts, ended, batch_size=config.batch_size)
        ctx.on_metrics(steps_total, steps_total, {"reward_win_rate": summary["reward_model"]["win_rate"]})
    return summary


@torch.no_grad()
def reward_win_rate(ctx, reward, prompts, candidate_answers: dict[int, int], baseline_answers: dict[int, int],
                    texts: dict[int, str], ended: dict[int, bool], *, batch_size: int) -> dict:
    source = ctx.resolve(reward)
    tokenizer = ctx.load_tokenizer(source)
    model = modeling.ScalarHeadModel.from_pretrained(source, device=ctx.device)
    model.eval()
    wins = losses = ties = 0
    margins = []
    for start in range(0, len(prompts), batch_size):
        ctx.checkpoint()
        chunk = prompts[start:start + batch_size]
        answers = [candidate_answers[p.id] for p in chunk] + [baseline_answers[p.id] for p in chunk]
        pairs = [(p.text, texts[a], ended[a]) for p, a in zip(chunk + chunk, answers)]
        scores = score_pairs(model, tokenizer, pairs).tolist()
        for mine, theirs in zip(scores[:len(chunk)], scores[len(chunk):]):
            margins.append(mine - theirs)
            if abs(mine - theirs) < 1e-6:
                ties += 1
            elif mine > theirs:
                wins += 1
            else:
                losses += 1
    del model
    _free_memory()
    return {**win_rate(wins, losses, ties), "reward_model_id": reward.id,
            "mean_margin": sum(margins) / len(margins) if margins else None}


def score_pairs(model, tokenizer, pairs: list[tuple[str, str, bool]]) -> torch.Tensor:
    """Reward scores of (prompt, answer, ended) triples, encoded as the reward model was trained
    (prompt template + answer + its end token when it ended), right-padded."""
    rows = [modeling.encode_prompt(tokenizer, p) + modeling.encode_completion(tokenizer, a, ended=e)
            for p, a, e in pairs]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        rows = [r[-limit:] for r in rows]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r)
        attention_mask[i, :len(r)] = 1
    return model(input_ids.to(model.device), attention_mask.to(model.device)).float().cpu()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
