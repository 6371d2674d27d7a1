"""Reward-model quality: the project's reward trainer against TRL's RewardTrainer on the same model,
the same real preferences and the same number of optimizer steps; held-out pair accuracy and
pairs/s side by side in one run.

    .venv/bin/python bench/rm_quality.py                          # tiny model on the CPU (minutes)
    .venv/bin/python bench/rm_quality.py --model smollm2-135m-instruct --train-pairs 4000 --steps 500   # a GPU
    .venv/bin/python bench/rm_quality.py --model smollm2-135m-instruct --lora-r 16 --precision bf16 \
        --learning-rate 1e-4 --steps 30 --train-pairs 240 --valid-pairs 200   # 2-core CPU: ~20 min a side

Data: the hh-rlhf helpful splits in ../shared/data (helpful-base, helpful-online,
helpful-rejection-sampled test files; identical pairs dropped), each pair a K=2 ranking: the
dialogue up to the last assistant turn is the prompt, the two last turns the answers. A seeded
shuffle splits them into train and held-out pairs. Both sides get the same token ids (tokenized
once here for TRL; the project's trainer tokenizes the same text into the same ids), the same learning rate, constant schedule, AdamW betas (0.9, 0.95), no weight decay,
gradient clipping at 1.0, and the same pairs per step; TRL runs in bench/.venv-trl
(bench/trl_side.py). The tiny model (4 layers, built here with a tokenizer trained on the data)
learns little from a few thousand pairs; the comparison is what matters.

Each side returns its (chosen, rejected) scores of the held-out pairs, and the figures of both are
computed here by worker.gold.pair_figures, as the hh demo scores its reward models: accuracy (the
chosen answer scored strictly higher), accuracy on the pairs whose chosen answer has fewer words
(length-controlled: "longer wins" gets all of them wrong), on the chosen-longer pairs, their mean
("balanced", where "longer wins" gets 50%), and how often the model prefers the longer answer
(pairs of equal length in words count in the overall accuracy only). "longer wins" (in words) on
the same pairs is the baseline row.

--lora-r N trains LoRA adapters of rank N on both sides (alpha 2N, dropout 0, all linear layers of
the backbone, the scalar head trained in full): ours through RewardConfig.lora_r, TRL's through
RewardTrainer's peft_config. --precision bf16 trains both under bf16 autocast with fp32 weights."""

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HH = ROOT.parent / "shared" / "data" / "hh-rlhf"


def load_pairs() -> list[tuple[str, str, str]]:
    """(prompt, chosen answer, rejected answer), as tests/test_reward_hh.py reads the helpful splits."""
    from tests.test_reward_hh import load_helpful

    return [(r.prompt, r.completions[0], r.completions[1]) for r in load_helpful()]


def our_side(spec: dict) -> dict:
    """The project's trainer, trainer.reward.train_reward, as a reward run uses it (it tokenizes the
    pairs itself, into the same ids the TRL side gets)."""
    import torch

    from runconfig import RewardConfig
    from trainer.data import RankingExample
    from trainer.modeling import ScalarHeadModel, load_tokenizer
    from trainer.precision import load_dtype
    from trainer.precision import resolve as resolve_precision
    from trainer.reward import score, train_reward

    torch.set_num_threads(spec["threads"])
    raw = json.loads(Path(spec["pairs"]).read_text())
    train = [RankingExample(p, [c, r], [[0], [1]]) for p, c, r in raw["train"]]
    tokenizer = load_tokenizer(spec["model"])
    torch.manual_seed(spec["seed"])
    model = ScalarHeadModel.from_causal_lm(spec["model"], lora_r=spec["lora_r"], dtype=load_dtype(spec["precision"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = RewardConfig(
        learning_rate=spec["learning_rate"],
        batch_size=spec["pairs_per_step"],
        micro_batch_size=spec["pairs_per_step"],
        warmup_ratio=0.0,
        min_lr_ratio=1.0,  # constant lr
        max_steps=spec["steps"],
        eval_every=spec["steps"],
        eval_batch_size=16,
        max_length=spec["max_length"],
        normalize_bias=False,
        lora_r=spec["lora_r"],
        precision=spec["precision"],
        seed=spec["seed"],
    )
    # No held-out rankings here: the held-out pairs are scored once below, from the same ids as TRL's.
    result = train_reward(model, tokenizer, train, [], config)
    model.eval()
    valid = json.loads(Path(spec["data"]).read_text())["valid"]
    scores = []
    with torch.no_grad(), resolve_precision(spec["precision"], model.device).autocast():
        for start in range(0, len(valid), EVAL_RANKINGS):
            rows = valid[start : start + EVAL_RANKINGS]
            flat = score(model, [s for seqs, _ in rows for s in seqs], tokenizer.pad_token_id).tolist()
            offset = 0
            for seqs, pairs in rows:
                scores += [[flat[offset + w], flat[offset + lose]] for w, lose in pairs]
                offset += len(seqs)
    return {"pairs_per_s": result["pairs_per_s"], "scores": scores, "trainable_params": trainable}


EVAL_RANKINGS = 8
"""Held-out rankings per forward when scoring (16 sequences), on both sides."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (built here), a model folder, or smollm2-135m-instruct")
    parser.add_argument("--train-pairs", type=int, default=2400)
    parser.add_argument("--valid-pairs", type=int, default=600)
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=300, help="optimizer steps per side (at most train pairs / pairs per step)"
    )
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank on both sides (0: all weights trained)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, fp32 weights")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (model init and data order)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=str(Path.home() / ".local/share/instructloop"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "rm-quality"))
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run our side from a spec file
    args = parser.parse_args()
    if args.side:
        print(json.dumps(our_side(json.loads(Path(args.side).read_text()))))
        return
    if not HH.is_dir():
        sys.exit(f"{HH} is absent: this benchmark needs the hh-rlhf files of ../shared/data")
    import trl_side

    from trainer.data import RankingExample
    from trainer.modeling import load_tokenizer, resolve_model_source
    from trainer.reward import encode_rankings
    from trainer.tiny import make_tiny_model
    from worker import gold

    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs()
    args.steps = min(args.steps, args.train_pairs // args.pairs_per_step)
    print(
        f"{len(pairs):,} hh-rlhf helpful pairs; {args.train_pairs:,} train, {args.valid_pairs:,} held out; "
        f"{args.pairs_per_step} pairs/step x {args.steps} steps, lr {args.learning_rate}, max_length {args.max_length}, "
        f"lora_r {args.lora_r}, {args.precision}, {args.threads} thread(s)"
    )
    if args.model == "tiny":
        texts = [t for p in pairs[:4000] for t in p]
        model = str(
            make_tiny_model(
                workdir / "tiny-model",
                texts=texts,
                vocab_size=4096,
                hidden_size=256,
                intermediate_size=704,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=4,
                max_position_embeddings=512,
            )
        )
    else:
        model = resolve_model_source(args.model, Path(args.cache))
    tokenizer = load_tokenizer(model)
    print(
        f"\n{'seed':>4} {'side':<28} {'acc':>6} {'shorter':>7} {'longer':>7} {'balanced':>8} "
        f"{'prefers longer':>14} {'pairs/s':>8}  (chosen shorter/longer/all pairs)"
    )
    results: list[dict] = []
    pooled: dict[str, tuple[list, list]] = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        shuffled = pairs[:]
        random.Random(seed).shuffle(shuffled)
        split = {
            "train": shuffled[: args.train_pairs],
            "valid": shuffled[args.train_pairs : args.train_pairs + args.valid_pairs],
        }
        encoded = {
            name: [
                [r.sequences, r.pairs]
                for r in encode_rankings(
                    tokenizer, [RankingExample(p, [c, r], [[0], [1]]) for p, c, r in rows], args.max_length
                )
            ]
            for name, rows in split.items()
        }
        data, raw = workdir / f"ids-seed{seed}.json", workdir / f"pairs-seed{seed}.json"
        data.write_text(json.dumps(encoded))
        raw.write_text(json.dumps(split))
        spec = {
            "model": model,
            "data": str(data),
            "pairs": str(raw),
            "steps": args.steps,
            "seed": seed,
            "threads": args.threads,
            "learning_rate": args.learning_rate,
            "pairs_per_step": args.pairs_per_step,
            "max_length": args.max_length,
            "lora_r": args.lora_r,
            "precision": args.precision,
            "eval_rankings": EVAL_RANKINGS,
            "workdir": str(workdir / "trl"),
        }
        spec_path = workdir / "ours-spec.json"
        spec_path.write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, __file__, "--side", str(spec_path)], check=True, capture_output=True, text=True
        )
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        theirs = trl_side.run("rm", spec, workdir)
        held_out = [gold.HeldOutPair(p, c, r) for p, c, r in split["valid"]]
        (workdir / f"scores-seed{seed}.json").write_text(json.dumps({"ours": ours["scores"], "trl": theirs["scores"]}))
        sides = [
            ("instructloop (K-way loss)", ours, ours["scores"]),
            (f"TRL {theirs['trl_version']} RewardTrainer", theirs, theirs["scores"]),
            # as gold.longer_wins scores it: the word counts as scores
            ("longer wins (words)", {}, [[gold.words(p.chosen), gold.words(p.rejected)] for p in held_out]),
        ]
        for side, r, scores in sides:
            f = score_figures(held_out, scores)
            print_row(str(seed), side, f, r.get("pairs_per_s"), held_out)
            results.append({"seed": seed, "side": side, **{k: v for k, v in r.items() if k != "scores"}, **f})
            pooled.setdefault(side, ([], []))
            pooled[side][0].extend(held_out)
            pooled[side][1].extend(scores)
        print(
            f"     trainable parameters: ours {ours['trainable_params']:,}, TRL {theirs['trainable_params']:,} "
            f"(TRL's mixed precision: {theirs['mixed_precision']})",
            flush=True,
        )
    if len(seeds) > 1:  # every seed's held-out pairs together (the seeds' held-out sets overlap in part)
        for side, (held_out, scores) in pooled.items():
            print_row("all", side, score_figures(held_out, scores), None, held_out)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


def score_figures(held_out: list, scores: list) -> dict:
    """worker.gold's held-out figures of one side's (chosen, rejected) scores."""
    from worker import gold

    if len(scores) != len(held_out):
        raise ValueError(f"{len(scores)} scored pairs for {len(held_out)} held-out pairs")
    return gold.pair_figures(held_out, [c for c, _ in scores], [r for _, r in scores])


def print_row(seed: str, side: str, f: dict, pairs_per_s: float | None, held_out: list) -> None:
    from worker import gold

    def num(x: float | None, width: int, digits: int = 3) -> str:
        return f"{x:>{width}.{digits}f}" if x is not None else f"{'-':>{width}}"

    longer = sum(1 for p in held_out if gold.words(p.chosen) > gold.words(p.rejected))
    print(
        f"{seed:>4} {side:<28} {num(f['accuracy'], 6)} {num(f['accuracy_chosen_shorter'], 7)} "
        f"{num(f['accuracy_chosen_longer'], 7)} {num(f['balanced_accuracy'], 8)} {num(f['prefers_longer'], 14)} "
        f"{num(pairs_per_s, 8, 1)}  ({f['chosen_shorter_pairs']}/{longer}/{f['pairs']})",
        flush=True,
    )


if __name__ == "__main__":
    main()
