"""PPO throughput, side by side in one run: this project's trainer/ppo.py against TRL 1.12's
`trl.experimental.ppo.PPOTrainer` (the last TRL with PPO), on the same models, prompts and settings.

    .venv/bin/python bench/ppo_throughput.py                    # tiny model on the CPU
    .venv/bin/python bench/ppo_throughput.py --episodes 512 --repeats 3 --threads 1
    .venv/bin/python bench/ppo_throughput.py --size default --threads 2 --repeats 1

`--size default` runs the default model (SmolLM2-135M-Instruct, as the SFT policy) with two sets
of settings, each on both sides: `instructloop demo`'s PPO settings (runconfig.PRESETS["cpu"]) and
the run form's defaults (PPOConfig()), and prints how much faster the demo's settings train.

The TRL side runs in its own virtual environment, made once (torch first, so pip keeps the
CPU build; TRL 1.12 accepts transformers 5.x and datasets 5.x):

    python3 -m venv bench/.venv-trl12
    bench/.venv-trl12/bin/pip install torch==2.13.0
    bench/.venv-trl12/bin/pip install "trl==1.12.*"

What it does:
1. Builds the models once (main venv) under bench/out/ppo/: a tiny Llama-style model (trainer.tiny)
   fine-tuned with trainer.sft on short answers, half of which contain digits; a reward model
   (trainer.reward) trained on rankings of that SFT model's own samples by a checkable rule
   (an answer with a digit beats one without); the same reward model exported as a
   LlamaForSequenceClassification folder for TRL (same weights: the scores are checked equal).
2. Runs each side in a subprocess (ours, then TRL, alternating order over --repeats), timing only
   the training loop: episodes/s (an episode = one prompt + one sampled answer), peak memory
   (max RSS of the process on the CPU, torch's peak allocation on a GPU), and the reward curve
   (mean reward-model score minus the missing-EOS penalty per step, as TRL's objective/scores).
3. Prints the table, the curves and the ratio ours/TRL.

Same settings on both sides (the bench set for the tiny models): rollout batch 16, minibatch 8 (one
optimizer step each), 4 PPO epochs, lr constant, AdamW eps 1e-5, beta, clip ranges, vf_coef, gamma,
lambda, temperature, max new tokens, missing-EOS penalty, precision (fp32, or bf16 autocast with fp32
weights on both), no gradient checkpointing, the same torch threads."""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / "bench" / ".venv-trl12" / "bin" / "python"

DIGIT_ANSWERS = ["0 1 2 3 4 5 6 7 8 9 10", "Count: 1 2 3 4 5.", "The answer is 42.", "It costs 19 dollars, thank you."]
WORD_ANSWERS = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris.",
    "Thank you, that is helpful!",
    "Please answer politely and briefly.",
]
TOPICS = ["numbers", "animals", "cities", "manners", "prices", "colours", "weather", "counting"]
PROMPTS = [
    f"{verb} about {topic}."
    for verb in ("Tell me something", "Say a line", "Write briefly", "Answer")
    for topic in TOPICS
]  # 32 prompts


def has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def bench_settings(args) -> dict:
    """The fixed settings of the tiny and small comparisons (see the header)."""
    return {
        "rollout_batch_size": 16,
        "minibatch_size": 8,
        "ppo_epochs": 4,
        "forward_batch_size": 16,
        "learning_rate": args.lr,
        "kl_coef": 0.1,
        "cliprange": 0.2,
        "cliprange_value": 0.2,
        "vf_coef": 0.1,
        "gamma": 1.0,
        "lam": 0.95,
        "temperature": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "missing_eos_penalty": 1.0,
        "precision": "fp32",
        "total_episodes": args.episodes,
        "seed": args.seed,
    }


SHARED = ("rollout_batch_size", "minibatch_size", "ppo_epochs", "forward_batch_size", "learning_rate", "kl_coef",
          "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "temperature", "max_new_tokens",
          "missing_eos_penalty", "precision")  # fmt: skip
"""The settings both sides take; the others (LoRA, top_p...) have no counterpart or stay at their defaults."""


def settings_for(name: str, args) -> dict:
    """bench: the fixed comparison settings; demo: `instructloop demo`'s PPO (runconfig.PRESETS["cpu"]);
    form: the run form's defaults (PPOConfig()). Precision "auto" is fp32 on the CPU."""
    if name == "bench":
        return bench_settings(args)
    from runconfig import PRESETS, PPOConfig

    config = PPOConfig(**PRESETS["cpu"]["ppo"]) if name == "demo" else PPOConfig()
    s = {k: getattr(config, k) for k in SHARED}
    if s["precision"] == "auto":
        s["precision"] = "bf16" if args.device.startswith("cuda") else "fp32"
    steps = args.steps or (4 if name == "demo" else 1)  # the form's defaults take minutes per step on a CPU
    return {**s, "total_episodes": steps * config.rollout_batch_size, "seed": args.seed}


# --- 1. models, built once ------------------------------------------------------------------------


SIZES: dict[str, dict | None] = {  # the tiny Llama-style models (trainer.tiny), about 0.7M and 9.7M parameters;
    # "default": SmolLM2-135M-Instruct, the embedded default model, as the SFT policy.
    "tiny": dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    ),
    "small": dict(
        hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2
    ),
    "default": None,
}


def prepare(out: Path, device: str, size: str) -> dict:
    import torch
    import transformers
    from transformers import LlamaForSequenceClassification

    from runconfig import RewardConfig, SFTConfig
    from trainer.data import RankingExample, SFTExample
    from trainer.modeling import (
        DEFAULT_MODEL,
        ScalarHeadModel,
        encode_prompt,
        load_causal_lm,
        load_tokenizer,
        resolve_model_source,
    )
    from trainer.reward import train_reward
    from trainer.sft import train_sft
    from trainer.tiny import DEFAULT_TEXTS, make_tiny_model

    transformers.logging.set_verbosity_error()
    paths = {name: out / name for name in ("sft", "rm", "rm_seqcls")}
    if all((p / "config.json").is_file() for p in paths.values()) and (out / "prompts.json").is_file():
        return {k: str(v) for k, v in paths.items()}
    torch.manual_seed(0)
    if SIZES[size] is None:
        # The default model is already instruction-tuned: it is the SFT policy as it is.
        source = resolve_model_source(DEFAULT_MODEL, out)
        tokenizer = load_tokenizer(source)
        policy = load_causal_lm(source, device=device)
        sft: dict = {}
        rounds, rm_settings = 1, dict(learning_rate=3e-5, epochs=1)
    else:
        paths["base"] = out / "base"
        make_tiny_model(paths["base"], texts=DEFAULT_TEXTS + DIGIT_ANSWERS + WORD_ANSWERS + PROMPTS, **SIZES[size])
        tokenizer = load_tokenizer(str(paths["base"]))
        # SFT: every prompt answered by every answer (half with digits), so the policy says either.
        policy = load_causal_lm(str(paths["base"]), device=device)
        demos = [SFTExample(p, a) for p in PROMPTS for a in DIGIT_ANSWERS + WORD_ANSWERS]
        sft = train_sft(
            policy,
            tokenizer,
            demos,
            demos[:32],
            SFTConfig(learning_rate=3e-3, epochs=12, batch_size=32, micro_batch_size=32, warmup_ratio=0.1),
        )
        rounds, rm_settings = 4, dict(learning_rate=1e-3, epochs=4)
    policy.save_pretrained(paths["sft"])
    tokenizer.save_pretrained(paths["sft"])

    # Rankings of the SFT model's own samples by the checkable rule, as labelers would rank them.
    rankings, rng = [], random.Random(0)
    policy.eval()
    for _ in range(rounds):
        for prompt in PROMPTS:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
            outs = policy.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=0,
                num_return_sequences=4,
                max_new_tokens=24,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts = tokenizer.batch_decode(outs[:, ids.shape[1] :], skip_special_tokens=True)
            texts.append(rng.choice(DIGIT_ANSWERS if not any(map(has_digit, texts)) else WORD_ANSWERS))
            good = [i for i, t in enumerate(texts) if has_digit(t)]
            bad = [i for i, t in enumerate(texts) if not has_digit(t)]
            if good and bad:
                rankings.append(RankingExample(prompt, texts, [good, bad]))
    rng.shuffle(rankings)
    split = len(rankings) * 4 // 5
    rm = ScalarHeadModel.from_causal_lm(str(paths["sft"]), device=device)
    rm_result = train_reward(
        rm,
        tokenizer,
        rankings[:split],
        rankings[split:],
        RewardConfig(batch_size=8, micro_batch_size=8, max_length=128, normalize_bias=False, **rm_settings),
    )
    with torch.no_grad():
        rm.head.bias.zero_()  # TRL's score head has no bias; a constant shift changes nothing in PPO
    rm.save_pretrained(paths["rm"], tokenizer=tokenizer)

    # The same reward model as TRL reads it: LlamaForSequenceClassification with the head as `score`.
    config = rm.backbone.config
    config.num_labels = 1
    seqcls = LlamaForSequenceClassification(config)
    seqcls.model.load_state_dict(rm.backbone.state_dict())
    with torch.no_grad():
        seqcls.score.weight.copy_(rm.head.weight)
    seqcls.save_pretrained(paths["rm_seqcls"])
    tokenizer.save_pretrained(paths["rm_seqcls"])
    check = ScalarHeadModel.from_pretrained(paths["rm"], device="cpu")
    ids = torch.tensor([encode_prompt(tokenizer, PROMPTS[0]) + tokenizer("The answer is 42.").input_ids])
    mask = torch.ones_like(ids)
    seq = LlamaForSequenceClassification.from_pretrained(paths["rm_seqcls"]).eval()
    with torch.no_grad():
        ours, theirs = float(check(ids, mask)), float(seq(input_ids=ids, attention_mask=mask).logits[0, 0])
    assert abs(ours - theirs) < 1e-4, (ours, theirs)
    (out / "prompts.json").write_text(
        json.dumps(
            {
                "prompt_ids": [encode_prompt(tokenizer, p) for p in PROMPTS],
                "sft_train_loss": sft.get("train_loss", float("nan")),
                "rm_valid_accuracy": rm_result.get("valid_accuracy"),
                "rankings": len(rankings),
            }
        )
    )
    return {k: str(v) for k, v in paths.items()}


# --- 2. the two sides, each in its own process --------------------------------------------------------


def peak_memory_mb(device: str) -> float:
    """Torch's peak allocation on a GPU; on the CPU the process's peak RSS (VmHWM: unlike ru_maxrss it
    is not inherited from the parent that forked this process)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_ours(paths: dict, s: dict, device: str) -> dict:
    import torch
    import transformers

    from runconfig import PPOConfig
    from trainer.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
    from trainer.ppo import train_ppo

    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer(paths["sft"])
    policy = load_causal_lm(paths["sft"], device=device, dtype=torch.float32)
    ref = load_causal_lm(paths["sft"], device=device, dtype=torch.float32)
    reward = ScalarHeadModel.from_pretrained(paths["rm"], device=device, dtype=torch.float32)
    value = ScalarHeadModel.from_pretrained(paths["rm"], device=device, dtype=torch.float32)
    config = PPOConfig(**{k: v for k, v in s.items()})
    curve, kls = [], []

    def record(step, total, m):
        curve.append(m["score"] - config.missing_eos_penalty * (1 - m["eos_fraction"]))
        kls.append(m["kl"])

    memory_before = peak_memory_mb(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train_ppo(policy, ref, reward, value, tokenizer, PROMPTS, config, on_metrics=record)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "episodes": result["episodes"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "curve": curve,
        "kl": kls,
        "memory_before_mb": memory_before,
        "peak_mb": peak_memory_mb(device),
    }


def side_trl(paths: dict, s: dict, device: str, prompt_ids: list[list[int]]) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(paths["sft"])
    tokenizer.padding_side = "left"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    policy = AutoModelForCausalLM.from_pretrained(paths["sft"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(paths["sft"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(paths["rm_seqcls"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(paths["rm_seqcls"], num_labels=1, dtype=torch.float32)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    curve, kls = [], []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "objective/scores" in logs:
                curve.append(logs["objective/scores"])
                kls.append(logs["objective/kl"])

    out = tempfile.mkdtemp(prefix="trl-ppo-")
    args = PPOConfig(
        output_dir=out,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not device.startswith("cuda"),
        bf16=s["precision"] == "bf16",  # mixed: fp32 weights under bf16 autocast, as ours
        gradient_checkpointing=False,
        per_device_train_batch_size=s["rollout_batch_size"],
        gradient_accumulation_steps=1,
        num_mini_batches=s["rollout_batch_size"] // s["minibatch_size"],
        num_ppo_epochs=s["ppo_epochs"],
        local_rollout_forward_batch_size=s["forward_batch_size"],
        total_episodes=s["total_episodes"],
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        adam_epsilon=1e-5,
        kl_coef=s["kl_coef"],
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        temperature=s["temperature"],
        response_length=s["max_new_tokens"],
        stop_token="eos",
        missing_eos_penalty=s["missing_eos_penalty"],
        num_sample_generations=0,
        seed=s["seed"],
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
        eval_dataset=dataset,
        callbacks=[Record()],
    )
    memory_before = peak_memory_mb(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "episodes": trainer.state.episode,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "curve": curve,
        "kl": kls,
        "memory_before_mb": memory_before,
        "peak_mb": peak_memory_mb(device),
    }


def run_side(side: str, work: Path, args, settings: dict) -> dict:
    python = sys.executable if side == "ours" else str(TRL_PYTHON)
    cmd = [python, __file__, "--side", side, "--work", str(work), "--device", args.device]
    cmd += ["--threads", str(args.threads), "--settings-json", json.dumps(settings)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# --- 3. the comparison ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=256, help="episodes per run with the bench settings")
    parser.add_argument("--steps", type=int, default=0, help="PPO steps per run with the demo/form settings (4/1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating which goes first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=1e-4, help="bench settings only")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="bench settings only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat (repeat r uses seed + r)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model size (see SIZES)")
    parser.add_argument(
        "--settings",
        help="comma-separated: bench (the fixed settings above), demo (instructloop demo's PPO), form (the run "
        "form's defaults); default: bench for the tiny models, demo,form for the default model",
    )
    parser.add_argument("--work", help="where the models are built (default bench/out/ppo-SIZE)")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or ROOT / "bench" / "out" / f"ppo-{args.size}")

    if args.side:
        import torch

        torch.set_num_threads(args.threads)
        paths = {name: str(work / name) for name in ("sft", "rm", "rm_seqcls")}
        prompt_ids = json.loads((work / "prompts.json").read_text())["prompt_ids"]
        s = json.loads(args.settings_json)
        result = (
            side_ours(paths, s, args.device) if args.side == "ours" else side_trl(paths, s, args.device, prompt_ids)
        )
        print("RESULT " + json.dumps(result))
        return

    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON} is missing: make the TRL 1.12 virtualenv first (see this file's header).")
    import torch

    torch.set_num_threads(args.threads)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare(work, args.device, args.size)
    info = json.loads((work / "prompts.json").read_text())
    print(
        f"models ready in {time.perf_counter() - t0:.0f}s: SFT train loss {info['sft_train_loss']:.3f}, reward "
        f"model held-out accuracy {info['rm_valid_accuracy']:.3f} on rankings of SFT samples "
        f"({info['rankings']} rankings)"
    )
    names = (args.settings or ("demo,form" if SIZES[args.size] is None else "bench")).split(",")
    speeds = {}
    for name in names:
        s = settings_for(name, args)
        print(f"\n## settings {name}: {json.dumps(s)} (seed + repeat)")
        print(f"model {args.size} {SIZES[args.size] or 'SmolLM2-135M-Instruct'}, threads {args.threads}, {args.device}")
        ours, trl = compare(work, args, s)
        speeds[name] = ours["eps"]
    if len(speeds) > 1:
        first, *rest = names
        for name in rest:
            print(
                f"ours with {first} settings / ours with {name} settings: {speeds[first] / speeds[name]:.1f}x episodes/s"
            )


def compare(work: Path, args, s: dict) -> tuple[dict, dict]:
    """Runs both sides --repeats times with settings s, prints the table; returns both summaries."""
    load = os.getloadavg()
    runs = {"ours": [], "trl": []}
    for repeat in range(args.repeats):
        for side in ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours"):
            result = run_side(side, work, args, {**s, "seed": s["seed"] + repeat})
            runs[side].append(result)
            print(
                f"  run {repeat + 1} {side:4s}: {result['episodes'] / result['seconds']:.3f} episodes/s, "
                f"{result['episodes'] / result['cpu_seconds']:.3f} episodes per CPU-second, "
                f"peak {result['peak_mb']:.0f} MB, final score {result['curve'][-1]:+.3f}",
                flush=True,
            )
    print(f"load average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}")

    def summary(side):
        rs = runs[side]
        eps = [r["episodes"] / r["seconds"] for r in rs]
        eps_cpu = [r["episodes"] / r["cpu_seconds"] for r in rs]
        steps = min(len(r["curve"]) for r in rs)
        curve = [statistics.mean(r["curve"][i] for r in rs) for i in range(steps)]
        kl = [statistics.mean(r["kl"][i] for r in rs) for i in range(steps)]
        tail = curve[-max(1, steps // 4) :]
        return {
            "eps": statistics.median(eps),
            "eps_all": eps,
            "eps_cpu": statistics.median(eps_cpu),
            "peak": max(r["peak_mb"] for r in rs),
            "before": max(r["memory_before_mb"] for r in rs),
            "curve": curve,
            "kl": kl,
            "first": curve[0],
            "last_quarter": statistics.mean(tail),
            "mean": statistics.mean(curve),
        }

    ours, trl = summary("ours"), summary("trl")
    unit = "peak RSS MB" if args.device == "cpu" else "peak GPU MB"
    print()
    print(
        f"| side | episodes/s (median of {args.repeats}) | runs | episodes per CPU-s | {unit} (after loading) | "
        f"score step 1 | score last quarter | score mean | KL last |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in (("instructloop trainer/ppo.py", ours), ("TRL 1.12 PPOTrainer", trl)):
        runs_text = ", ".join(f"{e:.3f}" for e in r["eps_all"])
        print(
            f"| {name} | {r['eps']:.3f} | {runs_text} | {r['eps_cpu']:.3f} | {r['peak']:.0f} ({r['before']:.0f}) | "
            f"{r['first']:+.3f} | "
            f"{r['last_quarter']:+.3f} | {r['mean']:+.3f} | {r['kl'][-1]:.3f} |"
        )
    print()
    print(
        f"speed ratio ours/TRL: {ours['eps'] / trl['eps']:.2f}x episodes/s, "
        f"{ours['eps_cpu'] / trl['eps_cpu']:.2f}x episodes per CPU-second; "
        f"reward last quarter ours {ours['last_quarter']:+.3f} vs TRL {trl['last_quarter']:+.3f}"
    )
    print("reward curve (mean score - missing-EOS penalty per step, mean over runs):")
    print("  ours: " + " ".join(f"{v:+.2f}" for v in ours["curve"]))
    print("  TRL:  " + " ".join(f"{v:+.2f}" for v in trl["curve"]))
    return ours, trl


if __name__ == "__main__":
    main()
