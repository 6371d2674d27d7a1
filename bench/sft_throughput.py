"""SFT training throughput: trainer/sft.py against TRL's SFTTrainer (in bench/.venv-trl) on the same
model, the same token ids (prompt through the chat template, response + EOS, loss on the response
only) and the same batch size. Prints tokens/s (non-pad tokens through the model), the ratio and
peak memory.

    .venv/bin/python bench/sft_throughput.py                          # tiny model on the CPU
    .venv/bin/python bench/sft_throughput.py --model smollm2-135m-instruct --batch-size 16   # on a GPU

Data: the Alpaca demonstrations in ../shared/data/alpaca-5k (synthetic text where absent). Each
side runs in its own process (peak memory = that process's peak RSS on the CPU, max allocated
on the GPU); the first optimizer step is warm-up and not timed. Both sides use a constant
learning rate, AdamW (0.9, 0.95), gradient clipping at 1."""

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

ALPACA = ROOT.parent / "shared" / "data" / "alpaca-5k" / "alpaca_5000.json.gz"


def demonstrations(n: int, seed: int):
    from trainer.data import SFTExample

    rng = random.Random(seed)
    if ALPACA.exists():
        with gzip.open(ALPACA, "rt", encoding="utf-8") as f:
            rows = json.load(f)
        rng.shuffle(rows)
        return [
            SFTExample(prompt=(r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")), completion=r["output"])
            for r in rows[:n]
        ]
    words = "the a model answer question helpful kind long short clear wrong right good bad please".split()
    make = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    return [SFTExample(make(rng.randint(10, 60)), make(rng.randint(20, 150))) for _ in range(n)]


def our_side(spec: dict) -> dict:
    import torch

    from runconfig import SFTConfig
    from trainer.modeling import load_causal_lm, load_tokenizer
    from trainer.sft import train_sft

    torch.set_num_threads(spec["threads"])
    tokenizer = load_tokenizer(spec["model"])
    model = load_causal_lm(spec["model"], device="cuda" if torch.cuda.is_available() else "cpu")
    examples = demonstrations(spec["batch_size"] * spec["steps"], seed=0)
    config = SFTConfig(
        learning_rate=spec["learning_rate"],
        epochs=1,
        batch_size=spec["batch_size"],
        micro_batch_size=spec["batch_size"],
        warmup_ratio=0.0,
        min_lr_ratio=1.0,
        max_length=spec["max_length"],
        max_prompt_length=spec["max_length"] // 2,
        keep_best=False,
        seed=spec["seed"],
    )
    marks = []

    def on_metrics(step, total, metrics):
        if "tokens" not in metrics:  # the loop's call before its first step (the number of steps) or a held-out pass
            return
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), time.process_time(), metrics["tokens"]))

    train_sft(model, tokenizer, examples, [], config, on_metrics=on_metrics)
    device = model.device.type
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    tokens = sum(n for _, _, n in marks[1:])
    return {
        "tokens_per_s": tokens / (marks[-1][0] - marks[0][0]),
        "tokens_per_cpu_s": tokens / (marks[-1][1] - marks[0][1]),
        "peak_memory_mb": peak,
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny (built here), a model folder, hub id or smollm2-135m-instruct"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per side (the first is not timed)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per side (1: steady on a busy machine)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds per side, the fastest is kept")
    parser.add_argument("--cache", default=str(Path.home() / ".local/share/instructloop"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "sft"))
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run our side from a spec file
    args = parser.parse_args()
    if args.side:
        print(json.dumps(our_side(json.loads(Path(args.side).read_text()))))
        return

    from runconfig import SFTConfig
    from trainer.modeling import load_tokenizer, resolve_model_source
    from trainer.sft import IGNORE, encode_example
    from trainer.tiny import make_tiny_model

    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    examples = demonstrations(args.batch_size * args.steps, seed=0)
    if args.model == "tiny":
        model = str(
            make_tiny_model(
                workdir / "tiny-model",
                texts=[f"{e.prompt} {e.completion}" for e in examples],
                vocab_size=8192,
                hidden_size=256,
                intermediate_size=704,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=4,
            )
        )
    else:
        model = resolve_model_source(args.model, Path(args.cache))
    # The very token ids our side trains on, for TRL: [ids, number of prompt tokens].
    tokenizer = load_tokenizer(model)
    config = SFTConfig(max_length=args.max_length, max_prompt_length=args.max_length // 2)
    rows = []
    for example in examples:
        ids, labels = encode_example(tokenizer, example, config)
        rows.append([ids, sum(label == IGNORE for label in labels)])
    data = workdir / "sft-data.json"
    data.write_text(json.dumps({"train": rows}))
    spec = {
        "model": model,
        "data": str(data),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": 0,
        "threads": args.threads,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
    }

    spec_path = workdir / "ours-spec.json"
    spec_path.write_text(json.dumps(spec))
    import trl_side

    def run_ours():
        out = subprocess.run(
            [sys.executable, __file__, "--side", str(spec_path)], check=True, capture_output=True, text=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    # The sides take turns, and each keeps its fastest round: other load on the machine only slows a round down.
    ours = trl = None
    for _ in range(args.repeats):
        r = run_ours()
        ours = r if ours is None or r["tokens_per_s"] > ours["tokens_per_s"] else ours
        r = trl_side.run("sft", {**spec, "workdir": str(workdir / "trl")}, workdir)
        trl = r if trl is None or r["tokens_per_s"] > trl["tokens_per_s"] else trl
    print(
        f"\nmodel: {args.model}; batch {args.batch_size}, {args.steps} steps (first untimed), max_length "
        f"{args.max_length}, {args.threads} thread(s) per side, best of {args.repeats} rounds, {len(rows)} demonstrations\n"
    )
    header = f"{'side':<26} {'tokens/s':>9} {'vs TRL':>7} {'tokens/CPU-s':>13} {'vs TRL':>7} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for side, r in (("trainer/sft.py (ours)", ours), (f"TRL SFTTrainer {trl['trl_version']}", trl)):
        print(
            f"{side:<26} {r['tokens_per_s']:>9.0f} {r['tokens_per_s'] / trl['tokens_per_s']:>6.2f}x "
            f"{r['tokens_per_cpu_s']:>13.0f} {r['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:>6.2f}x "
            f"{r['peak_memory_mb']:>8.0f}"
        )
    (workdir / "results.json").write_text(json.dumps({"ours": ours, "trl": trl}, indent=1))


if __name__ == "__main__":
    main()
