"""Reward-model training throughput: the K-way step (each of a ranking's K completions forwarded
once, all C(K,2) pairs in one batch element) against the naive pairwise step (2*C(K,2) forwards)
and against TRL's RewardTrainer (pairwise, in bench/.venv-trl), on the same model, the same token
ids and the same number of pairs per optimizer step. Prints pairs/s, the ratios, held-out pair
accuracy after the same number of steps, and peak memory.

    .venv/bin/python bench/rm_throughput.py                 # tiny model on the CPU, K = 4 and 9
    .venv/bin/python bench/rm_throughput.py --model smollm2-135m-instruct --ks 4,9   # on a GPU

Data: prompts and assistant answers from ../shared/data/hh-rlhf (synthetic text where absent),
ranked by a known synthetic preference (a quality word opening each answer; full orders, no ties,
so a ranking has all C(K,2) pairs), so that held-out accuracy says whether each trainer learned. Each side runs in its own process
(peak memory = that process's peak RSS on the CPU, max allocated on the GPU); the first
optimizer step is warm-up and not timed."""

import argparse
import gzip
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The known preference: an answer opening with a later word beats one opening with an earlier word.
QUALITY = ["Awful", "Wrong", "Rude", "Meh", "Vague", "Odd", "Fine", "Okay", "Decent", "Great", "Correct", "Kind"]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf"
TURN = "\n\nAssistant:"


def source_texts(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """(prompts, answers) from hh-rlhf helpful-base, or synthetic sentences where it is absent."""
    path = HH / "helpful-base" / "test-first1554.jsonl.gz"
    if path.exists():
        prompts, answers = [], []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for text in (row["chosen"], row["rejected"]):
                    cut = text.rfind(TURN)
                    prompts.append(text[:cut].strip()[-600:])
                    answers.append(text[cut + len(TURN) :].strip()[:400])
        return prompts, answers
    words = "the a model answer question helpful kind long short clear wrong right good bad please".split()
    make = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    return [make(rng.randint(20, 80)) for _ in range(n)], [make(rng.randint(10, 60)) for _ in range(n)]


def make_rankings(k: int, n: int, seed: int):
    from trainer.data import RankingExample

    rng = random.Random(seed)
    prompts, answers = source_texts(4 * n * k, rng)
    rankings = []
    for _ in range(n):
        picked = rng.sample(range(len(QUALITY)), k)  # K different words: a full order, no ties
        rankings.append(
            RankingExample(
                prompt=rng.choice(prompts),
                completions=[f"{QUALITY[q]}. {rng.choice(answers)}" for q in picked],
                order=[[i] for i in sorted(range(k), key=lambda i: -picked[i])],
            )
        )
    return rankings


def prepare(args, workdir: Path) -> tuple[str, dict]:
    """The model folder and, per K, the tokenized train/valid rankings (written to JSON)."""
    from trainer.modeling import load_tokenizer, resolve_model_source
    from trainer.reward import encode_rankings
    from trainer.tiny import make_tiny_model

    data_files = {}
    all_rankings = {
        k: (make_rankings(k, args.train_rankings, seed=k), make_rankings(k, args.valid_rankings, seed=100 + k))
        for k in args.ks
    }
    if args.model == "tiny":
        texts = [t for train, _ in all_rankings.values() for r in train for t in [r.prompt, *r.completions]]
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
            )
        )
    else:
        model = resolve_model_source(args.model, Path(args.cache))
    tokenizer = load_tokenizer(model)
    for k, (train, valid) in all_rankings.items():
        encoded = {
            name: [[r.sequences, r.pairs] for r in encode_rankings(tokenizer, rows, args.max_length)]
            for name, rows in (("train", train), ("valid", valid))
        }
        data_files[k] = workdir / f"rankings-k{k}.json"
        data_files[k].write_text(json.dumps(encoded))
    return model, data_files


def our_side(spec: dict) -> dict:
    """The project's trainer in this process: the K-way or the naive pairwise step."""
    import torch

    from trainer.modeling import ScalarHeadModel, load_tokenizer
    from trainer.reward import EncodedRanking, evaluate, kway_step_loss, pairwise_step_loss

    torch.set_num_threads(spec["threads"])
    data = json.loads(Path(spec["data"]).read_text())
    train = [EncodedRanking(s, [tuple(p) for p in pairs]) for s, pairs in data["train"]]
    valid = [EncodedRanking(s, [tuple(p) for p in pairs]) for s, pairs in data["valid"]]
    tokenizer = load_tokenizer(spec["model"])
    torch.manual_seed(spec["seed"])
    model = ScalarHeadModel.from_causal_lm(spec["model"])
    model.train()
    step_loss = kway_step_loss if spec["side"] == "kway" else pairwise_step_loss
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["learning_rate"], betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    per_step = spec["rankings_per_step"]
    times, cpu_times, pairs_timed = [], [], 0
    for step in range(spec["steps"]):
        batch = train[step * per_step : (step + 1) * per_step]
        n_pairs = sum(len(r.pairs) for r in batch)
        loss_sum, _ = step_loss(model, batch, tokenizer.pad_token_id)
        (loss_sum / len(batch)).backward()  # per-ranking means (InstructGPT's 1/C(K,2)), averaged
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        cpu_times.append(time.process_time())
        pairs_timed += n_pairs if step > 0 else 0
    held_out = evaluate(model, valid, tokenizer.pad_token_id, batch_size=per_step)
    device = model.device.type
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "pairs_per_s": pairs_timed / (times[-1] - times[0]),
        "pairs_per_cpu_s": pairs_timed / (cpu_times[-1] - cpu_times[0]),
        "valid_accuracy": held_out["accuracy"],
        "peak_memory_mb": peak,
        "device": device,
    }


def run_our_side(side: str, spec: dict, workdir: Path) -> dict:
    spec_path = workdir / f"{side}-spec.json"
    spec_path.write_text(json.dumps({**spec, "side": side}))
    out = subprocess.run(
        [sys.executable, __file__, "--side", str(spec_path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny (built here), a model folder, hub id or smollm2-135m-instruct"
    )
    parser.add_argument("--ks", default="4,9", help="comma-separated K values")
    parser.add_argument("--rankings-per-step", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per side (the first is not timed)")
    parser.add_argument("--valid-rankings", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per side (1: steady on a busy machine)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds per side, the fastest is kept")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL (no bench/.venv-trl)")
    parser.add_argument("--cache", default=str(Path.home() / ".local/share/instructloop"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "rm"))
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side from a spec file
    args = parser.parse_args()
    if args.side:
        print(json.dumps(our_side(json.loads(Path(args.side).read_text()))))
        return

    args.ks = [int(k) for k in args.ks.split(",")]
    args.train_rankings = args.rankings_per_step * args.steps
    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    model, data_files = prepare(args, workdir)
    print(
        f"model: {args.model}; {args.rankings_per_step} rankings per step, {args.steps} steps (first untimed), "
        f"max_length {args.max_length}, {args.threads} thread(s) per side, best of {args.repeats} rounds\n"
    )
    header = (
        f"{'K':>2} {'side':<22} {'pairs/s':>8} {'vs naive':>8} {'vs TRL':>7} {'pairs/CPU-s':>11} {'vs naive':>8} "
        f"{'vs TRL':>7} {'held-out acc':>12} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for k in args.ks:
        spec = {
            "model": model,
            "data": str(data_files[k]),
            "steps": args.steps,
            "seed": 0,
            "threads": args.threads,
            "learning_rate": args.learning_rate,
            "rankings_per_step": args.rankings_per_step,
        }
        runs = {
            "K-way (ours)": lambda: run_our_side("kway", spec, workdir),
            "naive pairwise (ours)": lambda: run_our_side("naive", spec, workdir),
        }
        if not args.no_trl:
            import trl_side

            data = json.loads(Path(data_files[k]).read_text())
            # TRL sees the same pairs; each step takes as many pairs as one of our steps does on average.
            n_pairs = sum(len(p) for _, p in data["train"])
            trl_spec = {
                **spec,
                "pairs_per_step": max(1, round(n_pairs / len(data["train"]) * args.rankings_per_step)),
                "workdir": str(workdir / "trl"),
            }
            runs["TRL RewardTrainer"] = lambda: trl_side.run("rm", trl_spec, workdir)
        # Sides take turns, and each keeps its fastest round: other load on the machine only slows a round down.
        results = {}
        for _ in range(args.repeats):
            for side, run in runs.items():
                r = run()
                if side not in results or r["pairs_per_s"] > results[side]["pairs_per_s"]:
                    results[side] = r
        naive, trl = results["naive pairwise (ours)"], results.get("TRL RewardTrainer")
        for side, r in results.items():
            cells = []
            for key in ("pairs_per_s", "pairs_per_cpu_s"):
                vs_trl = f"{r[key] / trl[key]:.2f}x" if trl else "-"
                cells.append(f"{r[key]:>8.1f} {r[key] / naive[key]:>7.2f}x {vs_trl:>7}")
            print(
                f"{k:>2} {side:<22} {cells[0]} {'':>3}{cells[1]} {r['valid_accuracy']:>12.3f} "
                f"{r['peak_memory_mb']:>8.0f}",
                flush=True,
            )
            rows.append({"k": k, "side": side, **r})
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
