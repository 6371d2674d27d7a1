"""Reward model (InstructGPT step 2): a scalar head on the SFT model, trained on the labelers'
rankings of K outputs per prompt with the paper's K-way loss.

All C(K,2) pairs of one ranking form one batch element, and each of the K completions runs
through the model once (K forwards instead of the 2*C(K,2) of a pairwise trainer); the loss is
the mean over the batch's rankings of each ranking's mean over its pairs of
-log sigmoid(r_winner - r_loser) (InstructGPT's 1/C(K,2) per ranking). Tied outputs are not
compared. After training, the head's bias is shifted so the demonstrations' mean score is 0, and
the accuracy on held-out pairs is reported.

A prompt is a conversation (trainer/data.py), formatted with the chat template as the policy sees
it; one too long for max_length loses its oldest whole turns first.

The worker runs this for a `reward` run (`instructloop worker`). By hand, on JSONL rankings
({"prompt": a string or a message list, "completions": [...], "order": [[best], [tied, tied], ...]}):

    python -m trainer.reward --model sft-model --train rankings.jsonl --valid valid.jsonl \\
        --demonstrations sft-train.jsonl --out rm-model --set epochs=1

(--demonstrations: the SFT data, {"prompt", "completion"}, whose mean score becomes 0 as in a run
of the app; without it the bias stays as trained.)

`pairwise_step_loss` is the naive version (each pair's two completions forwarded separately),
kept for the numerical test of the K-way loss and for bench/rm_throughput.py."""

import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from runconfig import RewardConfig
from trainer.checkpoints import Checkpoints
from trainer.data import Conversation, RankingExample, SFTExample
from trainer.distributed import Team
from trainer.loop import MetricsCallback, TrainingLoop
from trainer.modeling import ScalarHeadModel, encode_completion, encode_prompt, pad_batch
from trainer.precision import load_dtype


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
    keep_prompt = prompt_budget(len(completion_ids), max_length)
    prompt_ids = prompt_ids[-keep_prompt:] if len(prompt_ids) > keep_prompt else prompt_ids
    return (prompt_ids + completion_ids)[:max_length]


def prompt_budget(completion_length: int, max_length: int) -> int:
    """What max_length leaves the prompt beside a completion, never under half of it."""
    return max(max_length - completion_length, max_length // 2)


def encode_scored(tokenizer, prompt: Conversation, completion_ids: list[int], max_length: int) -> list[int]:
    """encode_sequence of a conversation: one over its budget loses its oldest whole turns first
    (modeling.encode_prompt with max_tokens), so the reward model reads the turns PPO's policy sees."""
    budget = prompt_budget(len(completion_ids), max_length)
    return encode_sequence(encode_prompt(tokenizer, prompt, max_tokens=budget), completion_ids, max_length)


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
        ended = example.ended or [True] * len(example.completions)
        completions = {i: encode_completion(tokenizer, example.completions[i], ended=ended[i]) for i in used}
        prompts: dict[int, list[int]] = {}  # prompt ids per budget: one encoding for most rankings
        sequences = []
        for i in used:
            budget = prompt_budget(len(completions[i]), max_length)
            if budget not in prompts:
                prompts[budget] = encode_prompt(tokenizer, example.prompt, max_tokens=budget)
            sequences.append(encode_sequence(prompts[budget], completions[i], max_length))
        encoded.append(EncodedRanking(sequences, [(slot[win], slot[lose]) for win, lose in pairs]))
    return encoded


def score(model: ScalarHeadModel, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Reward of each sequence (read at its last real token, its EOS)."""
    ids, mask = pad_batch(sequences, pad_id)
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
    model,
    rankings: list[EncodedRanking],
    pad_id: int,
    batch_size: int,
    team: Team | None = None,
    *,
    batches: Iterable[tuple[list[EncodedRanking], float]] | None = None,
) -> dict[str, float]:
    """Held-out pair accuracy (winner scored strictly higher) and mean loss per pair (each process
    scores its part of the rankings); `batches`: that part's (rows, weight), e.g. the training
    loop's, which stops when asked."""
    was_training = model.training
    model.eval()
    loss, correct, pairs = 0.0, 0.0, 0.0
    team = team or Team()
    try:
        for rows, weight in batches if batches is not None else team.batches(rankings, batch_size):
            batch_loss, margins = kway_step_loss(model, rows, pad_id)
            loss += batch_loss.item() * weight
            correct += int((margins > 0).sum()) * weight
            pairs += margins.numel() * weight
    finally:
        model.train(was_training)
    loss, correct, pairs = team.sum(loss, correct, pairs)
    # accuracy over pairs (as the paper reports it), loss as trained: per ranking
    return {"accuracy": correct / max(pairs, 1), "loss": loss / max(len(rankings), 1), "pairs": float(pairs)}


@torch.no_grad()
def normalize_bias(
    model: ScalarHeadModel,
    tokenizer,
    demonstrations,
    max_length: int,
    batch_size: int,
    should_stop: Callable[[], bool] | None = None,
) -> float | None:
    """Shift the head's bias so the demonstrations' mean score is 0; return the shift. None, and
    the bias left as it was, when should_stop (polled before each batch) says stop."""
    was_training = model.training
    model.eval()
    sequences = [
        encode_scored(tokenizer, d.prompt, encode_completion(tokenizer, d.completion), max_length)
        for d in demonstrations
    ]
    scores = []
    try:
        for i in range(0, len(sequences), batch_size):
            if should_stop is not None and should_stop():
                return None
            scores.append(score(model, sequences[i : i + batch_size], tokenizer.pad_token_id))
    finally:
        model.train(was_training)
    shift = torch.cat(scores).mean().item()
    model.head.bias.data.sub_(shift)
    return shift


class RewardLoop(TrainingLoop):
    """The shared loop (trainer/loop.py) with the K-way loss over whole rankings and held-out pair accuracy."""

    name = "Reward"

    def __init__(self, model, config: RewardConfig, train_rows: list, valid_rows: list, pad_id: int, **hooks):
        result = {
            "train_rankings": float(len(train_rows)),
            "train_pairs": float(sum(len(r.pairs) for r in train_rows)),
            "valid_pairs": float(sum(len(r.pairs) for r in valid_rows)),
            "steps": 0.0,
            "stopped_early": 0.0,
        }
        super().__init__(model, config, train_rows, valid_rows, result, **hooks)
        self.pad_id = pad_id
        self.pairs_done = 0

    def loss(self, model, rows: list) -> tuple[torch.Tensor, float]:
        # K forwards per ranking; the loss is the mean over the batch's rankings of each ranking's
        # mean over its pairs.
        loss_sum, margins = kway_step_loss(model, rows, self.pad_id)
        return loss_sum, float(int((margins.detach() > 0).sum()))  # pairs ordered right

    def loss_denominator(self, batch: list) -> float:
        return len(batch)  # each ranking weighs the same

    def step_metrics(self, batch: list, count: float) -> dict[str, float]:
        batch_pairs = sum(len(r.pairs) for r in batch)
        self.pairs_done += batch_pairs
        self.result["train_accuracy"] = count / batch_pairs
        return {"train_accuracy": count / batch_pairs}

    def evaluate(self) -> dict[str, float]:
        size = self.config.eval_batch_size
        batches = self.held_out_batches(self.valid_rows, size)
        held_out = evaluate(self.model, self.valid_rows, self.pad_id, size, self.team, batches=batches)
        return {"valid_loss": held_out["loss"], "valid_accuracy": held_out["accuracy"]}

    def loop_state(self) -> dict:
        return {"pairs_done": self.pairs_done}

    def load_loop_state(self, loop: dict) -> None:
        self.pairs_done = loop["pairs_done"]

    def final_figures(self) -> dict[str, float]:
        return {"pairs_per_s": self.pairs_done / self.train_seconds if self.train_seconds > 0 else 0.0}


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
    # Check the config and the rankings (bad indices, K < 2) before any work.
    problems = config.problems()
    if problems:
        raise ValueError("Bad reward config: " + " ".join(problems))
    train_rows = encode_rankings(tokenizer, train, config.max_length)
    valid_rows = encode_rankings(tokenizer, valid, config.max_length)
    if not train_rows:
        raise ValueError(
            f"No training ranking has two outputs in different places ({len(train)} rankings, all tied or none); "
            "collect rankings first."
        )
    # Each optimizer step takes batch_size whole rankings (all their pairs).
    loop = RewardLoop(
        model,
        config,
        train_rows,
        valid_rows,
        tokenizer.pad_token_id,
        on_metrics=on_metrics,
        should_stop=should_stop,
        checkpoints=checkpoints,
    )
    result = loop.run()
    # Bias: the demonstrations' mean score becomes 0, so rewards are comparable across runs.
    if config.normalize_bias and demonstrations and not result["stopped_early"]:
        shift = normalize_bias(
            model, tokenizer, list(demonstrations), config.max_length, config.eval_batch_size, loop.stop_decided
        )
        if shift is None:  # stopped: the trained state is saved; a resume normalizes again
            result["stopped_early"] = 1.0
            if loop.checkpoints.enabled:
                loop.save()
        else:
            result["bias_shift"] = shift
    return result


def main(argv: list[str] | None = None) -> None:
    from trainer import standalone
    from trainer.modeling import load_tokenizer, resolve_model_source

    parser = standalone.parser("Reward model on JSONL rankings.")
    parser.add_argument("--model", required=True, help="SFT model folder, hub id or smollm2-135m-instruct")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--valid", type=Path)
    parser.add_argument(
        "--demonstrations",
        type=Path,
        help='JSONL with "prompt" and "completion" (the SFT data): the bias is set so that their mean score is 0, '
        "as the worker sets it (score_offset in the saved config.json)",
    )
    args = parser.parse_args(argv)
    config = standalone.config("reward", args.set)
    demonstrations = [
        SFTExample(row["prompt"], standalone.answer_text(row["completion"]))
        for row in standalone.read_jsonl(args.demonstrations)
    ]
    if config.normalize_bias and not demonstrations and standalone.is_main():
        print("No --demonstrations: the reward bias is not normalized.", file=sys.stderr)
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
        functools.partial(train_reward, demonstrations=demonstrations),
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
