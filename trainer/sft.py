"""Supervised fine-tuning (InstructGPT step 1): the causal-LM loss on the demonstrations' response
tokens only, the prompt formatted with the model's chat template, AdamW with a cosine schedule after
a linear warmup, gradient accumulation, and the held-out loss on the valid split.

The worker runs this for an `sft` run (`instructloop worker`). By hand, on prompt/completion JSONL
(the project's SFT export):

    python -m trainer.sft --model smollm2-135m-instruct --train train.jsonl --valid valid.jsonl \\
        --out sft-model --set epochs=2 --set lora_r=16

The loss is the mean over all response tokens of an optimizer batch (not a mean of micro-batch
means), so the result does not depend on micro_batch_size. Logits are computed only at the
positions that predict a response token (transformers' boolean `logits_to_keep`): the prompt's
positions never meet the vocabulary-sized output layer."""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from runconfig import SFTConfig
from trainer.checkpoints import (
    Checkpoints,
    EpochOrder,
    load_trained_state,
    restore_training_state,
    trained_state,
    training_state,
)
from trainer.data import SFTExample
from trainer.distributed import Team, full_tensor
from trainer.errors import TrainingDiverged
from trainer.modeling import encode_completion, encode_prompt, pad_right
from trainer.precision import for_model, load_dtype

IGNORE = -100  # label of the prompt's tokens: no loss there

MetricsCallback = Callable[[int, int, dict[str, float]], None]


def encode_example(tokenizer, example: SFTExample, config: SFTConfig) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt keeps its last max_prompt_length tokens, the response its
    first tokens up to max_length; labels are IGNORE on the prompt."""
    prompt = encode_prompt(tokenizer, example.prompt)[-config.max_prompt_length :]
    response = encode_completion(tokenizer, example.completion)[: config.max_length - len(prompt)]
    return prompt + response, [IGNORE] * len(prompt) + response


def response_loss_sum(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the response tokens of `rows`, and how many tokens that is."""
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_right([ids for ids, _ in rows], pad_id)
    labels, _ = pad_right([labels for _, labels in rows], pad_id, fill=IGNORE)
    input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
    # Position t predicts token t+1: keep the positions whose next token is a response token.
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits
    targets = labels[:, 1:][keep[:, :-1]]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")
    return loss, int(targets.numel())


@torch.no_grad()
def held_out_loss(model, encoded: list, pad_id: int, batch_size: int, team: Team | None = None) -> float:
    """Mean loss per response token over the whole held-out set (each process scores its part)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    team = team or Team()
    for rows, weight in team.batches(encoded, batch_size):
        loss, n = response_loss_sum(model, rows, pad_id)
        total, tokens = total + loss.item() * weight, tokens + n * weight
    model.train(was_training)
    total, tokens = team.sum(total, tokens)
    return total / max(tokens, 1)


def train_sft(
    model,
    tokenizer,
    train: list[SFTExample],
    valid: list[SFTExample],
    config: SFTConfig,
    *,
    on_metrics: MetricsCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Fine-tune `model` in place; return the final metrics (train/valid loss, steps, tokens/s).
    With `checkpoints`, a checkpoint every `config.save_every` steps and when stopped, and the run
    goes on from the newest one it finds."""
    # 1. Check the config and the data before any work.
    problems = config.problems()
    if problems:
        raise ValueError("Bad SFT config: " + " ".join(problems))
    if not train:
        raise ValueError("SFT needs at least one training demonstration; accept some demonstrations first.")
    empty = [i for i, ex in enumerate(train) if not ex.completion.strip()]
    if empty:
        raise ValueError(f"{len(empty)} training demonstrations have an empty response (first: #{empty[0]}).")
    on_metrics = on_metrics or (lambda step, total, metrics: None)
    should_stop = should_stop or (lambda: False)
    checkpoints = checkpoints or Checkpoints()
    team = Team()  # one process, or one of several under accelerate launch (trainer/distributed.py)
    torch.manual_seed(config.seed)  # dropout, if the model has any

    # 2. Tokenize once: prompt through the chat template, response ended by EOS.
    pad_id = tokenizer.pad_token_id
    train_rows = [encode_example(tokenizer, ex, config) for ex in train]
    valid_rows = [encode_example(tokenizer, ex, config) for ex in valid]

    # 3. Optimizer and schedule: linear warmup, cosine decay to min_lr_ratio of the peak.
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

    best_loss, best_step = math.inf, 0
    best_weights: dict[str, torch.Tensor] | None = None
    result = {"steps": 0.0, "train_loss": math.nan, "tokens": 0.0, "stopped_early": 0.0}
    train_seconds, step = 0.0, 0  # time in training steps only (not evaluation)
    epochs = EpochOrder(len(train_rows), config.batch_size, config.seed)
    resumed = checkpoints.load()
    if resumed is not None:  # go on exactly where the checkpoint was written
        restore_training_state(resumed, model, optimizer, schedule, precision.scaler)
        epochs.load(resumed["epochs"])
        loop = resumed["loop"]
        step, train_seconds = loop["step"], loop["train_seconds"]
        result.update(loop["result"], stopped_early=0.0, resumed_from_step=float(step))
        best_loss, best_step, best_weights = loop["best_loss"], loop["best_step"], loop["best_weights"]
    elif valid_rows:
        with precision.autocast():
            result["initial_valid_loss"] = held_out_loss(model, valid_rows, pad_id, config.eval_batch_size, team)
        on_metrics(0, total_steps, {"valid_loss": result["initial_valid_loss"]})

    def save(step: int) -> None:
        loop = {
            "step": step,
            "train_seconds": train_seconds,
            "result": result,
            "best_loss": best_loss,
            "best_step": best_step,
            "best_weights": best_weights,
        }
        state = training_state(model, optimizer, schedule, precision.scaler)
        if team.is_main:
            checkpoints.save(step, {**state, "epochs": epochs.state(), "loop": loop})
        team.barrier()

    # 4. The loop: one optimizer step per batch_size demonstrations, accumulated over micro-batches.
    on_metrics(step, total_steps, {})  # the number of steps, before the first one
    model.train()
    while step < total_steps:
        batch = [train_rows[i] for i in epochs.batch()]
        step_started = time.perf_counter()
        # Normalize by the batch's response tokens, so accumulation equals one big batch.
        batch_tokens = sum(sum(label != IGNORE for label in labels[1:]) for _, labels in batch)
        loss_total, tokens_seen = 0.0, 0.0
        for micro, (rows, weight, last) in enumerate(team.micro_batches(batch, config.micro_batch_size)):
            if micro and team.size == 1 and should_stop():  # cancel mid-batch (one process: nobody waits)
                result["stopped_early"] = 1.0
                break
            with team.no_sync(wrapped, last=last):
                with precision.autocast():
                    loss_sum, _ = response_loss_sum(wrapped, rows, pad_id)
                precision.backward(loss_sum * (weight * team.loss_scale / batch_tokens))
            loss_total += loss_sum.item() * weight
            tokens_seen += sum(len(ids) for ids, _ in rows) * int(weight)
        loss_total, tokens_seen = team.sum(loss_total, tokens_seen)
        if result["stopped_early"]:
            optimizer.zero_grad(set_to_none=True)
            if checkpoints.due(step, config.save_every, stopping=True):
                save(step)
            total_steps = step
            break
        epochs.advance()
        loss = loss_total / batch_tokens
        # 5. Stop on divergence rather than save a broken model.
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"SFT loss became {loss} at step {step + 1}: lower learning_rate (now {config.learning_rate})."
            )
        norm = precision.step(optimizer, lambda: torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        grad_norm = float(full_tensor(norm))
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_seconds += time.perf_counter() - step_started
        result.update(steps=float(step), train_loss=loss, tokens=result["tokens"] + tokens_seen)
        metrics = {
            "train_loss": loss,
            "lr": schedule.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens": tokens_seen,
        }

        # 6. Held-out loss every eval_every steps (and at the end); remember the best weights.
        stopping = team.any(should_stop())  # cancel / SIGTERM, polled once per step, decided together
        if valid_rows and (stopping or step % eval_every == 0 or step == total_steps):
            with precision.autocast():
                metrics["valid_loss"] = held_out_loss(model, valid_rows, pad_id, config.eval_batch_size, team)
            result["valid_loss"] = metrics["valid_loss"]
            if metrics["valid_loss"] < best_loss:
                best_loss, best_step = metrics["valid_loss"], step
                if config.keep_best and step < total_steps:
                    best_weights = trained_state(model)
                elif config.keep_best:
                    best_weights = None  # the last weights are the best: nothing to restore
        on_metrics(step, total_steps, metrics)

        # 7. Checkpoint; on cancel / SIGTERM stop at this safe point with what we have.
        if checkpoints.due(step, config.save_every, stopping=stopping):
            save(step)
        if stopping:
            result["stopped_early"] = 1.0
            total_steps = step
            break

    # 8. Keep the weights with the lowest held-out loss (checkpoint choice by validation loss).
    if best_weights is not None:
        load_trained_state(model, best_weights)
    if valid_rows and math.isfinite(best_loss):
        result.update(best_valid_loss=best_loss, best_step=float(best_step))
        if config.keep_best:
            result["valid_loss"] = best_loss
    result["tokens_per_s"] = result["tokens"] / train_seconds if train_seconds > 0 else 0.0
    result.update(team.info())
    model.eval()
    return result


def main(argv: list[str] | None = None) -> None:
    from trainer import standalone
    from trainer.modeling import load_causal_lm, load_tokenizer, resolve_model_source, save_causal_lm

    parser = standalone.parser("SFT on prompt/completion JSONL.")
    parser.add_argument("--model", required=True, help="local folder, hub id or smollm2-135m-instruct")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--valid", type=Path)
    args = parser.parse_args(argv)
    config = standalone.config("sft", args.set)
    source = resolve_model_source(args.model, args.cache)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(config.seed)
    model = load_causal_lm(
        source,
        device=standalone.device(),
        lora_r=config.lora_r,
        dtype=load_dtype(config.precision),
        gradient_checkpointing=config.gradient_checkpointing,
    )
    train, valid = (
        [SFTExample(r["prompt"], r["completion"]) for r in standalone.read_jsonl(path)]
        for path in (args.train, args.valid)
    )
    standalone.train_and_save(train_sft, model, tokenizer, train, valid, config, args, save_causal_lm)


if __name__ == "__main__":
    main()
