"""`generate` runs: sample K outputs per prompt from one model version, store them as Completions
(with their sampling settings and whether they ended with EOS) and create ranking tasks.

    instructloop worker            # picks up runs created with kind "generate"

`sample_batches` is the sampler shared with evaluate.py: Hugging Face `generate` with its KV cache,
plain temperature / top-p sampling (top-k and repetition penalties off, whatever the model's own
generation_config says), reseeded per batch so the same seed gives the same outputs on the CPU."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from app.models import Completion, ModelKind, Project, Prompt, TaskKind
from app.services import tasks
from trainer import modeling
from runconfig import GenerateConfig, config_from_dict, config_to_dict
from trainer.data import PromptItem, snapshot_prompts


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


def split_by_length(model, tokenizer, prompts: list[PromptItem], max_new_tokens: int
                    ) -> tuple[list[PromptItem], list[PromptItem]]:
    """(prompts that fit, prompts too long for the context with max_new_tokens of answer)."""
    limit = context_length(model)
    if not limit:
        return prompts, []
    fit, too_long = [], []
    for item in prompts:
        n = len(modeling.encode_prompt(tokenizer, item.text))
        (fit if n + max_new_tokens <= limit else too_long).append(item)
    return fit, too_long


@torch.no_grad()
def sample_batches(model, tokenizer, prompts: list[str], *, k: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int, batch_size: int,
                   should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[int, list[list[Sample]]]]:
    """Yields (index of the batch's first prompt, K samples per prompt of the batch), batch by batch;
    stops between batches when should_stop() says so."""
    model.eval()
    ends = eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # generation continues right after each prompt's last token
    for start in range(0, len(prompts), batch_size):
        if should_stop is not None and should_stop():
            return
        chunk = prompts[start:start + batch_size]
        encoded = [modeling.encode_prompt(tokenizer, p) for p in chunk]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        torch.manual_seed(seed + start)  # per batch, so resuming or re-batching keeps the stream
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            do_sample=True, temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0,
            max_new_tokens=max_new_tokens, num_return_sequences=k, use_cache=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=ends,
        )
        generated = output[:, width:].cpu()
        samples: list[list[Sample]] = []
        for row in range(len(chunk)):
            per_prompt = []
            for j in range(k):
                per_prompt.append(_to_sample(generated[row * k + j].tolist(), tokenizer, ends))
            samples.append(per_prompt)
        yield start, samples


def _to_sample(tokens: list[int], tokenizer, ends: list[int]) -> Sample:
    stop = next((i for i, t in enumerate(tokens) if t in ends), None)
    body = tokens if stop is None else tokens[:stop]
    body = [t for t in body if t != tokenizer.pad_token_id]
    # Postgres text cannot hold NUL, which a byte-level tokenizer can produce.
    text = tokenizer.decode(body, skip_special_tokens=True).replace("\x00", "").strip()
    return Sample(text=text, ended_with_eos=stop is not None, num_tokens=len(body) + (stop is not None))


def generation_settings(config, *, ended_with_eos: bool, num_tokens: int, run_id: int) -> dict:
    return {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
            "seed": config.seed, "ended_with_eos": ended_with_eos, "num_tokens": num_tokens, "run_id": run_id}


def store_completions(session, prompt_id: int, version, samples: list[Sample], config, run_id: int) -> list[Completion]:
    rows = [Completion(prompt_id=prompt_id, model_version_id=version.id, source=version.name[:200], text=s.text,
                       generation=generation_settings(config, ended_with_eos=s.ended_with_eos,
                                                      num_tokens=s.num_tokens, run_id=run_id))
            for s in samples]
    session.add_all(rows)
    session.flush()
    return rows


def run_generate(ctx) -> dict:
    """The `generate` run kind; `ctx` is the worker's RunContext. Each batch's completions and ranking
    tasks are committed together, so labelers can start on the first prompts while the rest samples
    (a cancelled run keeps the complete tasks it made)."""
    config: GenerateConfig = config_from_dict("generate", ctx.config)
    with ctx.session() as session:
        project = session.get(Project, ctx.project_id)
        k = config.k or project.k
        prompts, snapshot = snapshot_prompts(
            session, ctx.project_id, [config.split], limit=config.limit,
            without_task_kind=TaskKind.ranking if config.new_prompts_only else None)
    if not 2 <= k <= 9:
        raise ValueError(f"K must be between 2 and 9 outputs per prompt; the project's K is {k}: set k in the config.")
    version = ctx.input_version(0)
    if version.kind == ModelKind.reward:
        raise ValueError(f"Model version {version.id} is a reward model; generate samples from a policy.")
    source = ctx.resolve(version)
    tokenizer = ctx.load_tokenizer(source)
    model = modeling.load_causal_lm(source, device=ctx.device)
    ctx.checkpoint()
    prompts, too_long = split_by_length(model, tokenizer, prompts, config.max_new_tokens)
    if too_long:
        snapshot.notes.append(f"Skipped {len(too_long)} prompt(s) longer than the context with max_new_tokens="
                              f"{config.max_new_tokens}: ids {[p.id for p in too_long][:20]}.")
        snapshot.keep_prompts([p.id for p in prompts])
    if not prompts:
        raise ValueError("Every selected prompt is too long for the model's context with "
                         f"max_new_tokens={config.max_new_tokens}; lower max_new_tokens or use shorter prompts.")
    ctx.set_snapshot(snapshot)

    total = len(prompts)
    made_tasks, completions, ended = 0, 0, 0
    batches = sample_batches(model, tokenizer, [p.text for p in prompts], k=k, temperature=config.temperature,
                             top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed,
                             batch_size=config.batch_size, should_stop=ctx.should_stop)
    for start, samples in batches:
        with ctx.session() as session:
            project = session.get(Project, ctx.project_id)
            for item, outputs in zip(prompts[start:start + len(samples)], samples):
                prompt = session.get(Prompt, item.id)
                if prompt is None:  # deleted while the run sampled
                    continue
                rows = store_completions(session, prompt.id, version, outputs, config, ctx.run_id)
                tasks.create_ranking_task(session, project, prompt, [r.id for r in rows], priority=config.priority,
                                          source_run_id=ctx.run_id)
                made_tasks += 1
                completions += len(rows)
                ended += sum(s.ended_with_eos for s in outputs)
        done = start + len(samples)
        batch_outputs = [s for outputs in samples for s in outputs]
        ctx.on_metrics(done, total, {
            "eos_fraction": sum(s.ended_with_eos for s in batch_outputs) / len(batch_outputs),
            "mean_tokens": sum(s.num_tokens for s in batch_outputs) / len(batch_outputs),
        })
    return {"prompts": total, "ranking_tasks": made_tasks, "completions": completions, "k": k,
            "eos_fraction": ended / completions if completions else 0.0,
            "model_version_id": version.id, "config": config_to_dict(config)}
