"""Training precision side by side on the default model (SmolLM2-135M-Instruct): fp32, bf16 mixed
(fp32 master weights under bf16 autocast, the GPU default) and bf16-pure (weights and AdamW state in
bf16), the same SFT steps on the same demonstrations. Printed per precision: seconds per optimizer
step (the first is warm-up and not counted), peak memory, the share of weights the first step
changed, and the held-out loss drop after N steps.

    .venv/bin/python bench/precision.py                 # CPU (bf16 autocast runs there too)
    .venv/bin/python bench/precision.py --steps 20      # on a GPU the same command uses it

Each precision runs in its own process (peak memory = its peak RSS on the CPU, max allocated on a
GPU). On the CPU, bf16 autocast is emulated by kernels slower than fp32 ones: step times there say
nothing about a GPU; the weights-changed and loss columns are the point."""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [
    ("Name three primary colours.", "Red, yellow and blue."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Give a synonym for happy.", "Joyful."),
    ("Write a sentence about the sea.", "The sea was calm and silver under the morning sky."),
    ("What is 7 times 6?", "7 times 6 is 42."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
    ("Name a fruit that is yellow.", "A banana."),
    ("Say hello politely.", "Hello, it is nice to meet you."),
    ("List two mammals.", "A dog and a whale."),
    ("What colour is grass?", "Grass is green."),
    ("Give an antonym for cold.", "Hot."),
    ("How many days are in a week?", "There are seven days in a week."),
]


def one(spec: dict) -> dict:
    import torch

    from runconfig import SFTConfig
    from trainer.data import SFTExample
    from trainer.modeling import load_causal_lm, load_tokenizer, resolve_model_source
    from trainer.precision import load_dtype
    from trainer.sft import train_sft

    torch.set_num_threads(spec["threads"])
    source = resolve_model_source(spec["model"], Path(spec["cache"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = spec.get("loaded") or load_dtype(spec["precision"])  # as the worker loads it
    loaded = getattr(torch, loaded) if isinstance(loaded, str) else loaded
    torch.manual_seed(0)
    model = load_causal_lm(source, device=device, dtype=loaded)
    tokenizer = load_tokenizer(source)
    examples = [SFTExample(p, c) for p, c in PAIRS]
    train, valid = examples[:8], examples[8:]
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    changed_after_first: list[float] = []
    step_times: list[float] = []

    def on_metrics(step: int, total: int, metrics: dict) -> None:
        step_times.append(time.perf_counter())
        if step == 1:
            changed = sum(int((p.detach().float() != before[n]).sum()) for n, p in model.named_parameters())
            changed_after_first.append(changed / sum(p.numel() for p in model.parameters()))

    config = SFTConfig(
        learning_rate=spec["lr"],
        epochs=100,
        max_steps=spec["steps"],
        batch_size=4,
        micro_batch_size=4,
        warmup_ratio=0.0,
        min_lr_ratio=1.0,
        keep_best=False,
        max_length=128,
        max_prompt_length=64,
        eval_every=spec["steps"],
        precision=spec["precision"],
    )
    result = train_sft(model, tokenizer, train, valid, config, on_metrics=on_metrics)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "seconds_per_step": (step_times[-1] - step_times[0]) / max(1, len(step_times) - 1),
        "peak_memory_mb": peak,
        "changed_first_step": changed_after_first[0],
        "loss_drop": result["initial_valid_loss"] - result["valid_loss"],
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=str(Path.home() / ".local/share/instructloop"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    print(f"model {args.model}; SFT, {args.steps} steps of 4 demonstrations, lr {args.lr}\n")
    print(
        f"{'precision':<24} {'s/step':>7} {'peak MB':>8} {'weights changed by step 1':>26} {'held-out loss drop':>19}"
    )
    # The worker loads fp32 for fp32 and bf16 (master weights) and bf16 for bf16-pure; the extra row
    # trains bf16-mixed from weights loaded in bf16, to show why it does not.
    for precision, loaded in (("fp32", None), ("bf16", None), ("bf16-pure", None), ("bf16", "bfloat16")):
        spec = {
            "model": args.model,
            "steps": args.steps,
            "lr": args.lr,
            "threads": args.threads,
            "cache": args.cache,
            "precision": precision,
            "loaded": loaded,
        }
        out = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)], check=True, capture_output=True, text=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = precision + (" (loaded bf16)" if loaded else "")
        print(
            f"{name:<24} {r['seconds_per_step']:>7.2f} {r['peak_memory_mb']:>8.0f} "
            f"{r['changed_first_step']:>26.1%} {r['loss_drop']:>19.4f}   ({r['device']})",
            flush=True,
        )


if __name__ == "__main__":
    main()
