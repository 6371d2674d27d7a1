"""What each run kind does with the database (the worker's side): read the run's snapshot, load
its input models, call the algorithm, write what it made (models, completions, tasks).

The algorithms themselves (sft.py, reward.py, ppo.py, generate.py, evaluate.py) import neither the
app nor SQLAlchemy; import-linter checks that (`make lint`)."""

import random
from collections.abc import Callable
from typing import Any, Literal

import torch

from app.models import Completion, ModelKind, Project, Prompt, RunKind, TaskKind
from app.services import tasks
from app.services.evaluation import win_rate
from runconfig import K_MAX, K_MIN, EvaluateConfig, GenerateConfig, PPOConfig, config_from_dict, config_to_dict
from trainer import modeling
from trainer.data import PromptItem, SFTExample
from trainer.distributed import full_state_dict
from trainer.errors import TrainingDiverged
from trainer.evaluate import score_pairs
from trainer.generate import Sample, sample_batches, split_by_length
from trainer.ppo import train_ppo
from trainer.precision import frozen_dtype, load_dtype
from trainer.progress import ForwardPasses
from trainer.reward import train_reward
from trainer.rollout import choose_backend
from trainer.sft import train_sft
from worker.context import Outcome, RunContext, VersionInfo, free_memory
from worker.snapshots import DataError, Snapshot, snapshot_demonstrations, snapshot_prompts, snapshot_rankings

SamplingConfig = GenerateConfig | EvaluateConfig | PPOConfig


def _model_options(config) -> dict:
    """How to load the model a run trains: its dtype follows the run's precision (fp32 master weights
    unless bf16-pure), then checkpointing and LoRA."""
    return {
        "gradient_checkpointing": bool(getattr(config, "gradient_checkpointing", False)),
        "lora_r": int(getattr(config, "lora_r", 0) or 0),
        "dtype": load_dtype(config.precision),
    }


def _seed(config) -> None:
    torch.manual_seed(int(getattr(config, "seed", 0)))


def run_sft(ctx: RunContext) -> Outcome:
    config = config_from_dict("sft", ctx.config)
    train, valid, snapshot = ctx.read(lambda session: snapshot_demonstrations(session, ctx.project_id, ctx.data_filter))
    ctx.set_snapshot(snapshot)
    ctx.set_phase("loading models")
    base = ctx.input_version(0)
    source = ctx.resolve(base)
    tokenizer = ctx.load_tokenizer(source)
    _seed(config)
    model = modeling.load_causal_lm(source, device=ctx.device, **_model_options(config))
    ctx.checkpoint()
    ctx.set_phase("training")
    result = train_sft(
        model,
        tokenizer,
        train,
        valid,
        config,
        on_metrics=ctx.on_metrics,
        should_stop=ctx.should_stop,
        checkpoints=ctx.checkpoints(),
    )
    ctx.checkpoint()
    ctx.set_phase("saving")
    whole = full_state_dict(model)  # a sharded model's weights, gathered by every process
    folder = ctx.save_model(lambda folder: modeling.save_causal_lm(model, tokenizer, folder, whole))
    return Outcome(summary=result, model_kind=ModelKind.sft, artifact=folder, parent_ids=[base.id], metrics=result)


def run_reward(ctx: RunContext) -> Outcome:
    config = config_from_dict("reward", ctx.config)

    def read(session):
        train, valid, snapshot = snapshot_rankings(session, ctx.project_id, ctx.data_filter)
        try:  # the demonstrations set the bias (their mean score becomes 0); optional
            demonstrations, _, demo_snapshot = snapshot_demonstrations(session, ctx.project_id, ctx.data_filter)
            snapshot = snapshot.merge(demo_snapshot)
        except DataError:
            demonstrations = []
            snapshot.notes.append("No accepted demonstrations: the reward bias is not normalized.")
        return train, valid, demonstrations, snapshot

    train, valid, demonstrations, snapshot = ctx.read(read)
    ctx.set_snapshot(snapshot)
    ctx.set_phase("loading models")
    start = ctx.input_version(0)
    source = ctx.resolve(start)
    tokenizer = ctx.load_tokenizer(source)
    _seed(config)
    model = modeling.ScalarHeadModel.from_causal_lm(source, device=ctx.device, **_model_options(config))
    ctx.checkpoint()
    ctx.set_phase("training")
    result = train_reward(
        model,
        tokenizer,
        train,
        valid,
        config,
        demonstrations=demonstrations,
        on_metrics=ctx.on_metrics,
        should_stop=ctx.should_stop,
        checkpoints=ctx.checkpoints(),
    )
    ctx.checkpoint()
    ctx.set_phase("saving")
    whole = full_state_dict(model)
    folder = ctx.save_model(lambda folder: model.save_pretrained(folder, tokenizer=tokenizer, state_dict=whole))
    return Outcome(summary=result, model_kind=ModelKind.reward, artifact=folder, parent_ids=[start.id], metrics=result)


def run_ppo(ctx: RunContext) -> Outcome:
    config = config_from_dict("ppo", ctx.config)
    splits = ctx.data_filter.splits

    def read(session):
        prompts, snapshot = snapshot_prompts(session, ctx.project_id, splits)
        ptx: list[SFTExample] = []
        if config.ptx_coef > 0:
            try:
                ptx, _, demo_snapshot = snapshot_demonstrations(session, ctx.project_id, ctx.data_filter)
            except DataError as exc:
                raise ValueError(f"ptx_coef > 0 mixes in the SFT loss on demonstrations: {exc}") from None
            snapshot = snapshot.merge(demo_snapshot)
        return prompts, ptx, snapshot

    prompts, ptx, snapshot = ctx.read(read)
    ctx.set_phase("loading models")
    policy_version, reward_version = ctx.input_version(0), ctx.input_version(1)
    policy_source, reward_source = ctx.resolve(policy_version), ctx.resolve(reward_version)
    tokenizer = ctx.load_tokenizer(policy_source)
    reward_tokenizer = modeling.load_tokenizer(reward_source)
    check_same_tokenizer(tokenizer, reward_tokenizer, policy_version, reward_version)
    _seed(config)
    # As trainer/ppo.py's header: with LoRA the reference is the policy with its adapters off; in
    # low-memory mode the frozen models stay on the CPU and visit the GPU for their forward pass.
    frozen_device = "cpu" if config.low_memory else ctx.device
    policy = modeling.load_causal_lm(policy_source, device=ctx.device, **_model_options(config))
    prompts = _fit_prompts(policy, tokenizer, policy_version, prompts, config, snapshot)
    snapshot.keep_prompts([p.id for p in prompts])
    if not prompts:
        raise ValueError(_all_too_long(config))
    ctx.set_snapshot(snapshot)
    # The frozen models in the policy's weights' dtype (fp32 beside fp32 masters): a bf16 reference made
    # the KL between equal weights +0.10 nats per answer on CUDA (trainer/precision.py frozen_dtype).
    frozen = frozen_dtype(config.precision)
    ref_policy = None if config.lora_r else modeling.load_causal_lm(policy_source, device=frozen_device, dtype=frozen)
    reward_model = modeling.ScalarHeadModel.from_pretrained(reward_source, device=frozen_device, dtype=frozen)
    value_model = modeling.ScalarHeadModel.from_pretrained(
        reward_source,
        device=ctx.device,
        lora_r=config.value_lora_r,
        gradient_checkpointing=config.gradient_checkpointing,
        dtype=_model_options(config)["dtype"],
    )
    ctx.checkpoint()
    try:
        result = train_ppo(
            policy,
            ref_policy,
            reward_model,
            value_model,
            tokenizer,
            [p.prompt for p in prompts],  # conversations: the chat template formats each whole
            config,
            ptx=ptx,
            on_metrics=ctx.on_metrics,
            should_stop=ctx.should_stop,
            reward_tokenizer=reward_tokenizer,
            checkpoints=ctx.checkpoints(),
            on_phase=ctx.set_phase,
        )
    except TrainingDiverged as exc:
        if exc.last_good_step is None:
            raise
        # train_ppo put back the weights of the last good step: keep them for a look (not registered).
        last_good = ctx.worker.run_folder(ctx.run_id, ".last-good")
        whole = full_state_dict(policy)
        if ctx.is_main:
            modeling.save_causal_lm(policy, tokenizer, last_good, whole)
        raise TrainingDiverged(
            f"{exc} The last good policy (step {exc.last_good_step}) is saved in {last_good}."
        ) from exc
    ctx.checkpoint()
    ctx.set_phase("saving")
    whole = full_state_dict(policy)
    folder = ctx.save_model(lambda folder: modeling.save_causal_lm(policy, tokenizer, folder, whole))
    return Outcome(
        summary=result,
        model_kind=ModelKind.ppo,
        artifact=folder,
        parent_ids=[policy_version.id, reward_version.id],
        metrics=result,
    )


def check_same_tokenizer(policy_tokenizer, reward_tokenizer, policy: VersionInfo, reward: VersionInfo) -> None:
    """The reward model reads the policy's tokens: both must use the same vocabulary."""
    if policy_tokenizer.get_vocab() != reward_tokenizer.get_vocab():
        raise ValueError(
            f"The reward model (version {reward.id}, {reward.name}) uses another tokenizer than the "
            f"policy (version {policy.id}, {policy.name}); train the reward model from the same "
            "model family as the policy."
        )


def generation_settings(config, *, ended_with_eos: bool, num_tokens: int, run_id: int) -> dict:
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "ended_with_eos": ended_with_eos,
        "num_tokens": num_tokens,
        "run_id": run_id,
    }


def store_completions(session, prompt_id: int, version, samples: list[Sample], config, run_id: int) -> list[Completion]:
    rows = [
        Completion(
            prompt_id=prompt_id,
            model_version_id=version.id,
            source=version.name[:200],
            text=s.text,
            generation=generation_settings(
                config, ended_with_eos=s.ended_with_eos, num_tokens=s.num_tokens, run_id=run_id
            ),
        )
        for s in samples
    ]
    session.add_all(rows)
    session.flush()
    return rows


def _sampler(
    ctx: RunContext, version: VersionInfo, prompts: list[PromptItem], config: SamplingConfig, snapshot: Snapshot
) -> tuple[Any, Any, list[PromptItem]]:
    """The policy to sample from, its tokenizer, and the prompts that fit (_fit_prompts)."""
    ctx.set_phase(f"loading model {version.id}")
    source = ctx.resolve(version)
    tokenizer = ctx.load_tokenizer(source)
    model = modeling.load_causal_lm(source, device=ctx.device)
    ctx.checkpoint()
    ctx.set_phase("sampling")
    return model, tokenizer, _fit_prompts(model, tokenizer, version, prompts, config, snapshot)


def _all_too_long(config: SamplingConfig) -> str:
    limit = f" or max_prompt_length={config.max_prompt_length}" if config.max_prompt_length else ""
    return (
        "Every selected prompt is too long for the model's context with "
        f"max_new_tokens={config.max_new_tokens}{limit}; lower max_new_tokens or use shorter prompts."
    )


def _fit_prompts(
    model, tokenizer, version: VersionInfo, prompts: list[PromptItem], config: SamplingConfig, snapshot: Snapshot
) -> list[PromptItem]:
    """The prompts that fit the model's context with max_new_tokens and the run's max_prompt_length,
    conversations cut by whole turns where that makes them fit; the snapshot's notes name the rest."""
    fit, too_long = split_by_length(model, tokenizer, prompts, config.max_new_tokens, config.max_prompt_length)
    limit = f"max_new_tokens={config.max_new_tokens}" + (
        f" and max_prompt_length={config.max_prompt_length}" if config.max_prompt_length else ""
    )
    if too_long:
        snapshot.notes.append(
            f"Model version {version.id}: skipped {len(too_long)} prompt(s) longer than its context with "
            f"{limit}: ids {[p.id for p in too_long][:20]}."
        )
    before = {p.id: p.messages for p in prompts}
    cut = [p.id for p in fit if p.messages != before[p.id]]
    if cut:
        snapshot.notes.append(
            f"Model version {version.id}: {len(cut)} conversation(s) lost their oldest turns to fit its context "
            f"with {limit}: ids {cut[:20]}."
        )
    return fit


def _samples(
    ctx: RunContext,
    model,
    tokenizer,
    prompts: list[PromptItem],
    k: int,
    config: GenerateConfig | EvaluateConfig,
    total: int,
):
    """k answers per prompt, batch by batch, with the run's sampling settings (stops when asked);
    while a batch samples, its tokens are the phase and its prompts' share of them the progress
    beyond the last step (`total` steps in the run)."""
    batches = sample_batches(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        k=k,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        batch_size=config.batch_size,
        should_stop=ctx.should_stop,
        backend=rollout_backend(model, config),
    )
    in_batch = 0  # prompts of the batch being sampled

    def moved() -> None:
        tokens = min(passes.count, config.max_new_tokens)
        ctx.set_phase(
            f"sampling (token {tokens} of {config.max_new_tokens})", total, in_batch * tokens / config.max_new_tokens
        )

    # generate() runs the model once per new token (a vLLM engine its own copy: no tokens shown).
    passes = ForwardPasses(model.get_input_embeddings(), moved)
    try:
        for start in range(0, len(prompts), config.batch_size):
            in_batch, passes.count = len(prompts[start : start + config.batch_size]), 0
            ctx.set_phase("sampling", total, 0.0)
            batch = next(batches, None)
            if batch is None:
                return
            yield batch
    finally:
        passes.close()


def rollout_backend(model, config: GenerateConfig | EvaluateConfig) -> Literal["hf", "vllm"]:
    """The sampler that `config.rollout_backend` means on this worker (the summary says which ran)."""
    return choose_backend(config.rollout_backend, next(model.parameters()).device)


def run_generate(ctx: RunContext) -> Outcome:
    """The `generate` run kind; `ctx` is the worker's RunContext. Each batch's completions and ranking
    tasks are committed together, so labelers can start on the first prompts while the rest samples
    (a cancelled run keeps the complete tasks it made)."""
    config: GenerateConfig = config_from_dict("generate", ctx.config)
    with ctx.session() as session:
        project = session.get_one(Project, ctx.project_id)
        k = config.k or project.k
        prompts, snapshot = snapshot_prompts(
            session,
            ctx.project_id,
            [config.split],
            limit=config.limit,
            without_task_kind=TaskKind.ranking if config.new_prompts_only else None,
        )
    if not K_MIN <= k <= K_MAX:
        raise ValueError(
            f"K must be between {K_MIN} and {K_MAX} outputs per prompt; the project's K is {k}: set k in the config."
        )
    version = ctx.input_version(0)
    if version.kind == ModelKind.reward:
        raise ValueError(f"Model version {version.id} is a reward model; generate samples from a policy.")
    model, tokenizer, prompts = _sampler(ctx, version, prompts, config, snapshot)
    snapshot.keep_prompts([p.id for p in prompts])
    if not prompts:
        raise ValueError(_all_too_long(config))
    ctx.set_snapshot(snapshot)

    total = len(prompts)
    made_tasks, completions, ended = 0, 0, 0
    batches = _samples(ctx, model, tokenizer, prompts, k, config, total)
    for start, samples in batches:
        with ctx.session() as session:
            project = session.get_one(Project, ctx.project_id)
            for item, outputs in zip(prompts[start : start + len(samples)], samples, strict=True):
                prompt = session.get(Prompt, item.id)
                if prompt is None:  # deleted while the run sampled
                    continue
                rows = store_completions(session, prompt.id, version, outputs, config, ctx.run_id)
                tasks.create_ranking_task(
                    session, project, prompt, [r.id for r in rows], priority=config.priority, source_run_id=ctx.run_id
                )
                made_tasks += 1
                completions += len(rows)
                ended += sum(s.ended_with_eos for s in outputs)
        done = start + len(samples)
        batch_outputs = [s for outputs in samples for s in outputs]
        ctx.on_metrics(
            done,
            total,
            {
                "eos_fraction": sum(s.ended_with_eos for s in batch_outputs) / len(batch_outputs),
                "mean_tokens": sum(s.num_tokens for s in batch_outputs) / len(batch_outputs),
            },
        )
    return Outcome(
        summary={
            "prompts": total,
            "ranking_tasks": made_tasks,
            "completions": completions,
            "k": k,
            "eos_fraction": ended / completions if completions else 0.0,
            "model_version_id": version.id,
            "rollout_backend": rollout_backend(model, config),
            "config": config_to_dict(config),
        }
    )


def run_evaluate(ctx: RunContext) -> Outcome:
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
        model, tokenizer, prompts = _sampler(ctx, version, prompts, config, snapshot)
        answers[version.id] = {}
        backend = rollout_backend(model, config)
        batches = _samples(ctx, model, tokenizer, prompts, 1, config, steps_total)
        for start, samples in batches:
            with ctx.session() as session:
                for item, outputs in zip(prompts[start : start + len(samples)], samples, strict=True):
                    (row,) = store_completions(session, item.id, version, outputs, config, ctx.run_id)
                    answers[version.id][item.id] = row.id
                    texts[row.id] = row.text
                    ended[row.id] = bool(row.generation.get("ended_with_eos", True))
            ctx.on_metrics(
                turn * steps_total // 2 + start + len(samples),
                steps_total,
                {
                    f"eos_fraction_{'candidate' if turn == 0 else 'baseline'}": sum(
                        s[0].ended_with_eos for s in samples
                    )
                    / len(samples),
                },
            )
        del model
        free_memory()
        ctx.checkpoint()
    if not prompts:
        raise ValueError("No held-out prompt fits both models' contexts; lower max_new_tokens.")
    prompts = [p for p in prompts if p.id in answers[candidate.id] and p.id in answers[baseline.id]]
    snapshot.keep_prompts([p.id for p in prompts])
    ctx.set_snapshot(snapshot)

    # 3. Comparison tasks with a seeded, stored A/B order. Two identical answers are not posed: there
    # is nothing to choose between them (they are counted, as ties, in the summary).
    rng = random.Random(config.seed)
    pairs = []
    identical: list[int] = []  # prompt ids
    with ctx.session() as session:
        project = session.get_one(Project, ctx.project_id)
        for item in prompts:
            prompt = session.get(Prompt, item.id)
            mine, theirs = answers[candidate.id][item.id], answers[baseline.id][item.id]
            candidate_is_a = rng.random() < 0.5
            if texts[mine].strip() == texts[theirs].strip():
                identical.append(item.id)
                continue
            a, b = (mine, theirs) if candidate_is_a else (theirs, mine)
            if prompt is None:
                continue
            task = tasks.create_comparison_task(
                session, project, prompt, a, b, priority=config.priority, source_run_id=ctx.run_id
            )
            pairs.append({"task_id": task.id, "prompt_id": item.id, "a": a, "b": b, "candidate_is_a": candidate_is_a})
    summary: dict[str, Any] = {
        "prompts": len(pairs) + len(identical),
        "comparison_tasks": len(pairs),
        "identical_answers": len(identical),
        "identical_prompt_ids": identical,
        "candidate_model_id": candidate.id,
        "baseline_model_id": baseline.id,
        "pairs": pairs,
        "config": config_to_dict(config),
        "rollout_backend": backend,
    }

    # 4. The reward model's verdict.
    if reward is not None:
        ctx.set_phase("scoring with the reward model")
        summary["reward_model"] = reward_win_rate(
            ctx,
            reward,
            prompts,
            answers[candidate.id],
            answers[baseline.id],
            texts,
            ended,
            batch_size=config.batch_size,
        )
        ctx.on_metrics(steps_total, steps_total, {"reward_win_rate": summary["reward_model"]["win_rate"]})
    return Outcome(summary=summary)


@torch.no_grad()
def reward_win_rate(
    ctx,
    reward,
    prompts,
    candidate_answers: dict[int, int],
    baseline_answers: dict[int, int],
    texts: dict[int, str],
    ended: dict[int, bool],
    *,
    batch_size: int,
) -> dict:
    source = ctx.resolve(reward)
    tokenizer = ctx.load_tokenizer(source)
    model = modeling.ScalarHeadModel.from_pretrained(source, device=ctx.device)
    model.eval()
    outcomes: list[tuple[int, float]] = []
    identical = 0
    margins = []
    for start in range(0, len(prompts), batch_size):
        ctx.checkpoint()
        chunk = prompts[start : start + batch_size]
        answers = [candidate_answers[p.id] for p in chunk] + [baseline_answers[p.id] for p in chunk]
        pairs = [(p.prompt, texts[a], ended[a]) for p, a in zip(chunk + chunk, answers, strict=True)]
        scores = score_pairs(model, tokenizer, pairs).tolist()
        for p, mine, theirs in zip(chunk, scores[: len(chunk)], scores[len(chunk) :], strict=True):
            margins.append(mine - theirs)
            # Identical answers are a tie, not whichever side a rounding difference favours.
            if texts[candidate_answers[p.id]].strip() == texts[baseline_answers[p.id]].strip():
                identical += 1
                outcomes.append((p.id, 0.5))
            elif abs(mine - theirs) < 1e-6:
                outcomes.append((p.id, 0.5))
            else:
                outcomes.append((p.id, 1.0 if mine > theirs else 0.0))
    del model
    free_memory()
    return {
        **win_rate(outcomes, identical=identical),
        "reward_model_id": reward.id,
        "mean_margin": sum(margins) / len(margins) if margins else None,
    }


JOBS: dict[RunKind, Callable[[RunContext], Outcome]] = {
    RunKind.sft: run_sft,
    RunKind.reward: run_reward,
    RunKind.ppo: run_ppo,
    RunKind.generate: run_generate,
    RunKind.evaluate: run_evaluate,
}
