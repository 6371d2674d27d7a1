"""Reward-model quality: the project's reward trainer against TRL's RewardTrainer on the same model,
the same real preferences and the same number of optimizer steps; held-out pair accuracy and
pairs/s side by side in one run.

    .venv/bin/python bench/rm_quality.py                          # tiny model on the CPU (minutes)
    .venv/bin/python bench/rm_quality.py --model smollm2-135m-instruct --train-pairs 4000 --steps 500   # a GPU

Data: the hh-rlhf helpful splits in ../shared/data (helpful-base, helpful-online,
helpful-rejection-sampled test files; identical pairs dropped), each pair a K=2 ranking: the
dialogue up to the last assistant turn is the prompt, the two last turns the answers. A seeded
shuffle splits them into train and held-out pairs. Both sides get the same token ids (tokenized
once here for TRL; the project's trainer tokenizes the same text into the same ids), the same learning rate, constant schedule, AdamW betas (0.9, 0.95), no weight decay,
gradient clipping at 1.0, and the same pairs per step; TRL runs in bench/.venv-trl
(bench/trl_side.py). The tiny model (4 layers, built here with a tokenizer trained on the data)
learns little from a few thousand pairs; the comparison is what matters. Accuracy counts a pair
right when the chosen answer scores strictly higher."""

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
    from trainer.reward import train_reward

    torch.set_num_threads(spec["threads"])
    raw = json.loads(Path(spec["pairs"]).read_text())
    train, valid = ([RankingExample(p, [c, r], [[0], [1]]) for p, c, r in raw[name]] for name in ("train", "valid"))
    tokenizer = load_tokenizer(spec["model"])
    torch.manual_seed(spec["seed"])
    model = ScalarHeadModel.from_causal_lm(spec["model"])
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
        seed=spec["seed"],
    )
    result = train_reward(model, tokenizer, train, valid, config)
    return {"pairs_per_s": result["pairs_per_s"], "valid_accuracy": result["valid_accuracy"]}


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

    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs()
    args.steps = min(args.steps, args.train_pairs // args.pairs_per_step)
    print(
        f"{len(pairs):,} hh-rlhf helpful pairs; {args.train_pairs:,} train, {args.valid_pairs:,} held out; "
        f"{args.pairs_per_step} pairs/step x {args.steps} steps, lr {args.learning_rate}, max_length {args.max_length}"
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
    print(f"\n{'seed':>4} {'side':<26} {'held-out acc':>12} {'pairs/s':>8}")
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
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
            "workdir": str(workdir / "trl"),
        }
        spec_path = workdir / "ours-spec.json"
        spec_path.write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, __file__, "--side", str(spec_path)], check=True, capture_output=True, text=True
        )
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        theirs = trl_side.run("rm", spec, workdir)
        for side, r in (("instructloop (K-way loss)", ours), (f"TRL {theirs['trl_version']} RewardTrainer", theirs)):
            print(f"{seed:>4} {side:<26} {r['valid_accuracy']:>12.3f} {r['pairs_per_s']:>8.1f}", flush=True)
            results.append({"seed": seed, "side": side, **r})
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
