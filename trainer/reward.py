"""Reward model (InstructGPT step 2): a scalar head on the SFT model, trained on the labelers'
rankings of K outputs per prompt with the paper's K-way loss.

All C(K,2) pairs of one ranking form one batch element, and each of the K completions runs
through the model once (K forwards instead of the 2*C(K,2) of a pairwise trainer); the loss is
the mean over the batch's rankings of each ranking's mean over its pairs of
-log sigmoid(r_winner - r_loser) (InstructGPT's 1/C(K,2) per ranking). Tied outputs are not
compared. After training, the head's bias is shifted so the demonstrations' mean score is 0, and
the accuracy on held-out pairs is reported.

The worker runs this for a `reward` run (`instructloop worker`). By hand, on JSONL rankings
({"prompt", "completions": [...], "order": [[best], [tied, tied], ...]}):

    python -m trainer.reward --model sft-model --train rankings.jsonl --valid valid.jsonl \\
        --out rm-model --set epochs=1

`pairwise_step_loss` is the naive version (each pair's two completions forwarded separately),
kept for the numerical test of the K-way loss and for bench/rm_throughput.py."""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from runconfig import RewardConfig
from trainer.checkpoints import Checkpoints, EpochOrder, restore_training_state, training_state
from trainer.data import RankingExample, SFTExample
from trainer.distributed import Team, full_tensor
from trainer.errors import TrainingDiverged
from trainer.modeling import ScalarHeadModel, encode_completion, encode_prompt, pad_right
from trainer.precision import for_model, load_dtype

MetricsCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class EncodedRanking:
    """One ranking ready for the model: K token sequences and its (winner, loser) index pairs."""

    sequences: list[list[int]]
    pairs: list[tuple[int, int]]


def ranking_pairs(example: RankingExample, where: str = "") -> list[tuple[int, int]]:
    """(winner, loser) completion indices for every two completions in different groups of the
    order (best group first); completions in one group are tied and give no pair."""
    k = len(example.completions)
    if k < 2:
        raise ValueError(f"Ranking {where}has {k} completion(s); a ranking needs at least 2 (K >= 2).")
    seen = [i for group in example.order for i in group]
    bad = sorted({i for i in seen if not (isinstance(i, int) and 0 <= i < k)}, key=str)
    if bad:
        raise ValueError(f"Ranking {where}refers to completion(s) {bad} that do not exist (it has {k}).")
    if len(seen) != len(set(seen)):
        raise ValueError(f"Ranking {where}places a completion twice in its order {example.order}.")
    return [
        (winner, loser)
        for g, better in enumerate(example.order)
        for worse in example.order[g + 1 :]
        for winner in better
        for loser in worse
    ]


def encode_sequence(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> list[int]:
    """prompt + completion within max_length: the prompt gives up its start first (down to half
    the budget), then the completion its end."""
    keep_prompt = max(max_length - len(completion_ids), max_length // 2)
    prompt_ids = prompt_ids[-keep_prompt:] if len(prompt_ids) > keep_prompt else prompt_ids
    return (prompt_ids + completion_ids)[:max_length]


def encode_rankings(tokenizer, rankings: list[RankingExample], max_length: int) -> list[EncodedRanking]:
    """Tokenize each ranking's used completions once; rankings whose outputs are all tied are skipped."""
    encoded = []
    for n, example in enumerate(rankings):
        where = f"#{n} " + (f"(id {example.meta['id']}) " if "id" in example.meta else "")
        pairs = ranking_pairs(example, where)
        if not pairs:
            continue
        used = sorted({i for pair in pairs for i in pair})  # unranked outputs need no forward
        slot = {i: s for s, i in enumerate(used)}
        prompt_ids = encode_prompt(tokenizer, example.prompt)
        ended = example.ended or [True] * len(example.completions)
        sequences = [
            encode_sequence(
                prompt_ids, encode_completion(tokenizer, example.completions[i], ended=ended[i]), max_length
            )
            for i in used
        ]
        encoded.append(EncodedRanking(sequences, [(slot[win], slot[lose]) for win, lose in pairs]))
    return encoded


def score(model: ScalarHeadModel, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Reward of each sequence (read at its last real token, its EOS)."""
    ids, mask = pad_right(sequences, pad_id)
    device = next(model.parameters()).device  # (a DDP wrapper has no .device)
    return model(ids.to(device), mask.to(device))


def kway_step_loss(model, rankings: list[EncodedRanking], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over the rankings of each ranking's mean -log sigmoid(r_w - r_l) over its pairs,
    per-pair margins r_w - r_l), with one forward per completion: the K sequences of every ranking
    go through the model in one batch.

    Each ranking weighs the same whatever its K, as in InstructGPT (the loss is 1/C(K,2) times the
    sum over a ranking's pairs): averaging over all pairs of a batch instead let a K=9 ranking (36
    pairs) outweigh two K=4 rankings (6 pairs each) three to one."""
    sequences, winners, losers, weights, offset = [], [], [], [], 0
    for ranking in rankings:
        sequences += ranking.sequences
        winners += [offset + w for w, _ in ranking.pairs]
        losers += [offset + lose for _, lose in ranking.pairs]
        weights += [1.0 / len(ranking.pairs)] * len(ranking.pairs)
        offset += len(ranking.sequences)
    rewards = score(model, sequences, pad_id)
    margins = rewards[winners] - rewards[losers]
    per_pair = torch.tensor(weights, device=margins.device, dtype=margins.dtype)
    return (-F.logsigmoid(margins) * per_pair).sum(), margins


def pairwise_step_loss(model, rankings: list[EncodedRanking], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive equivalent of kway_step_loss: each pair's winner and loser are forwarded as their
    own sequences (2 * C(K,2) forwards per ranking), as a pairwise trainer does."""
    chosen = [r.sequences[w] for r in rankings for w, _ in r.pairs]
    rejected = [r.sequences[lose] for r in rankings for _, lose in r.pairs]
    weights = torch.tensor([1.0 / len(r.pairs) for r in rankings for _ in r.pairs])
    margins = score(model, chosen, pad_id) - score(model, rejected, pad_id)
    return (-F.logsigmoid(margins) * weights.to(margins)).sum(), margins


@torch.no_grad()
def evaluate(
    model, rankings: list[EncodedRanking], pad_id: int, batch_size: int, team: Team | None = None
) -> dict[str, float]:
    """Held-out pair accuracy (winner scored strictly higher) and mean loss per pair (each process
    scores its part of the rankings)."""
    was_training = model.training
    model.eval()
    loss, correct, pairs = 0.0, 0.0, 0.0
    team = team or Team()
    for rows, weight in team.batches(rankings, batch_size):
        batch_loss, margins = kway_step_loss(model, rows, pad_id)
        loss += batch_loss.item() * weight
        correct += int((margins > 0).sum()) * weight
        pairs += margins.numel() * weight
    model.train(was_training)
    loss, correct, pairs = team.sum(loss, correct, pairs)
    # accuracy over pairs (as the paper reports it), loss as trained: per ranking
    return {"accuracy": correct / max(pairs, 1), "loss": loss / max(len(rankings), 1), "pairs": float(pairs)}


@torch.no_grad()
def normalize_bias(model: ScalarHeadModel, tokenizer, demonstrations, max_length: int, batch_size: int) -> float:
    """Shift the head's bias so the demonstrations' mean score is 0; return the shift."""
    was_training = model.training
    model.eval()
    sequences = [
        encode_sequence(encode_prompt(tokenizer, d.prompt), encode_completion(tokenizer, d.completion), max_length)
        for d in demonstrations
    ]
    scores = torch.cat(
        [
            score(model, sequences[i : i + batch_size], tokenizer.pad_token_id)
            for i in range(0, len(sequences), batch_size)
        ]
    )
    shift = scores.mean().item()
    model.head.bias.data.sub_(shift)
    model.train(was_training)
    return shift


def train_reward(
    model: ScalarHeadModel,
    tokenizer,
    train: list[RankingExample],
    valid: list[RankingExample],
    config: RewardConfig,
    *,
    demonstrations: Sequence[SFTExample] = (),
    on_metrics: MetricsCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train `model` in place on the rankings; return the final metrics (held-out accuracy first).
    With `checkpoints`, a checkpoint every `config.save_every` steps and when stopped, and the run
    goes on from the newest one it finds."""
    # 1. Check the config and the rankings (bad indices, K < 2) before any work.
    problems = config.problems()
    if problems:
        raise ValueError("Bad reward config: " + " ".join(problems))
    pad_id = tokenizer.pad_token_id
    train_rows = encode_rankings(tokenizer, train, config.max_length)
    valid_rows = encode_rankings(tokenizer, valid, config.max_length)
    if not train_rows:
        raise ValueError(
            f"No training ranking has two outputs in different places ({len(train)} rankings, all tied or none); "
            "collect rankings first."
        )
    on_metrics = on_metrics or (lambda step, total, metrics: None)
    should_stop = should_stop or (lambda: False)
    checkpoints = checkpoints or Checkpoints()
    team = Team()  # one process, or one of several under accelerate launch (trainer/distributed.py)
    torch.manual_seed(config.seed)

    # 2. Optimizer and schedule: linear warmup, cosine decay to min_lr_ratio (paper: 10%) of the peak.
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    precision = for_model(config.precision, model)  # fp32 master weights unless bf16-pure
    wrapped = team.wrap(model, config.sharding)  # DDP (or FSDP) with several processes
    params = [p for p in model.parameters() if p.requires_grad]  # (FSDP replaced them with their shards)
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=config.weight_decay, fused=True
    )  # one kernel for all parameters (CPU and GPU)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
        min_lr_rate=config.min_lr_ratio,
    )
    eval_every = config.eval_every or steps_per_epoch
    result = {
        "train_rankings": float(len(train_rows)),
        "train_pairs": float(sum(len(r.pairs) for r in train_rows)),
        "valid_pairs": float(sum(len(r.pairs) for r in valid_rows)),
        "steps": 0.0,
        "stopped_early": 0.0,
    }

    train_seconds, step, pairs_done = 0.0, 0, 0  # time in training steps only (not evaluation)
    epochs = EpochOrder(len(train_rows), config.batch_size, config.seed)
    resumed = checkpoints.load()
    if resumed is not None:  # go on exactly where the checkpoint was written
        restore_training_state(resumed, model, optimizer, schedule, precision.scaler)
        epochs.load(resumed["epochs"])
        step, train_seconds, pairs_done = (resumed["loop"][k] for k in ("step", "train_seconds", "pairs_done"))
        result.update(resumed["loop"]["result"], stopped_early=0.0, resumed_from_step=float(step))

    def save(step: int) -> None:
        loop = {"step": step, "train_seconds": train_seconds, "pairs_done": pairs_done, "result": result}
        state = training_state(model, optimizer, schedule, precision.scaler)
        if team.is_main:
            checkpoints.save(step, {**state, "epochs": epochs.state(), "loop": loop})
        team.barrier()

    # 3. The loop: each optimizer step takes batch_size whole rankings (all their pairs).
    on_metrics(step, total_steps, {})  # the number of steps, before the first one
    model.train()
    while step < total_steps:
        batch = [train_rows[i] for i in epochs.batch()]
        batch_pairs = sum(len(r.pairs) for r in batch)
        step_started = time.perf_counter()
        loss_total, correct = 0.0, 0.0
        for micro, (rows, weight, last) in enumerate(team.micro_batches(batch, config.micro_batch_size)):
            if micro and team.size == 1 and should_stop():  # cancel mid-batch (one process: nobody waits)
                result["stopped_early"] = 1.0
                break
            # 4. K forwards per ranking; the loss is the mean over the batch's rankings of each
            # ranking's mean over its pairs.
            with team.no_sync(wrapped, last=last):
                with precision.autocast():
                    loss_sum, margins = kway_step_loss(wrapped, rows, pad_id)
                precision.backward(loss_sum * (weight * team.loss_scale / len(batch)))
            loss_total += loss_sum.item() * weight
            correct += int((margins.detach() > 0).sum()) * weight
        loss_total, correct = team.sum(loss_total, correct)
        if result["stopped_early"]:
            optimizer.zero_grad(set_to_none=True)
            if checkpoints.due(step, config.save_every, stopping=True):
                save(step)
            total_steps = step
            break
        epochs.advance()
        loss = loss_total / len(batch)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"Reward loss became {loss} at step {step + 1}: lower learning_rate (now {config.learning_rate})."
            )
        norm = precision.step(optimizer, lambda: torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        grad_norm = float(full_tensor(norm))
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_seconds += time.perf_counter() - step_started
        pairs_done += batch_pairs
        result.update(steps=float(step), train_loss=loss, train_accuracy=correct / batch_pairs)
        metrics = {
            "train_loss": loss,
            "train_accuracy": correct / batch_pairs,
            "lr": schedule.get_last_lr()[0],
            "grad_norm": grad_norm,
        }

        # 5. Held-out pairs every eval_every steps and at the end.
        stopping = team.any(should_stop())  # cancel / SIGTERM, polled once per step, decided together
        if valid_rows and (stopping or step % eval_every == 0 or step == total_steps):
            with precision.autocast():
                held_out = evaluate(model, valid_rows, pad_id, config.eval_batch_size, team)
            metrics.update(valid_loss=held_out["loss"], valid_accuracy=held_out["accuracy"])
            result.update(valid_loss=held_out["loss"], valid_accuracy=held_out["accuracy"])
        on_metrics(step, total_steps, metrics)

        # 6. Checkpoint; on cancel / SIGTERM stop at this safe point with what we have.
        if checkpoints.due(step, config.save_every, stopping=stopping):
            save(step)
        if stopping:
            result["stopped_early"] = 1.0
            total_steps = step
            break

    result["pairs_per_s"] = pairs_done / train_seconds if train_seconds > 0 else 0.0
    result.update(team.info())

    # 7. Bias: the demonstrations' mean score becomes 0, so rewards are comparable across runs.
    if config.normalize_bias and demonstrations:
        result["bias_shift"] = normalize_bias(
            model, tokenizer, list(demonstrations), config.max_length, config.eval_batch_size
        )
    model.eval()
    return result


def main(argv: list[str] | None = None) -> None:
    from trainer import standalone
    from trainer.modeling import load_tokenizer, resolve_model_source

    parser = standalone.parser("Reward model on JSONL rankings.")
    parser.add_argument("--model", required=True, help="SFT model folder, hub id or smollm2-135m-instruct")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--valid", type=Path)
    args = parser.parse_args(argv)
    config = standalone.config("reward", args.set)
    source = resolve_model_source(args.model, args.cache)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(config.seed)
    model = ScalarHeadModel.from_causal_lm(
        source,
        device=standalone.device(),
        lora_r=config.lora_r,
        dtype=load_dtype(config.precision),
        gradient_checkpointing=config.gradient_checkpointing,
    )
    train, valid = (
        [
            RankingExample(prompt=r["prompt"], completions=r["completions"], order=r["order"])
            for r in standalone.read_jsonl(path)
        ]
        for path in (args.train, args.valid)
    )
    standalone.train_and_save(
        train_reward,
        model,
        tokenizer,
        train,
        valid,
        config,
        args,
        lambda m, tok, out, whole: m.save_pretrained(out, tok, state_dict=whole),
    )


if __name__ == "__main__":
    main()
