"""The GPU check (bench/README.md, "GPU check"): on one GPU, within 8 minutes, the tests that need
CUDA, then SFT, reward and PPO steps on the default model (SmolLM2-135M-Instruct) in bf16, and a
2-process FSDP PPO step when 2+ GPUs exist; tokens/s, peak memory, the step-1 KL between equal policy
and reference (must be 0) and each phase's seconds go into one JSON file.

    bash bench/gpu_check.sh                          # on a GPU machine: bench/gpu_check.json
    bash bench/gpu_check.sh --device cpu out.json    # the same on the CPU, small sizes, fp32

Each phase runs in its own process (its peak memory its own: torch's peak allocation on a GPU, the
process's peak RSS on the CPU) and reuses the bench scripts: SFT is bench/sft_throughput.py's side
(train_sft, precision "auto": bf16 on a GPU with it, fp32 on the CPU), the reward model is trained
with train_reward on bench/rm_throughput.py's rankings, and PPO is bench/ppo_throughput.py's side
(train_ppo, the policy and the reference the same model, the value model from the reward model just
trained). The JSON is written after every phase, so a run stopped by its time budget keeps what it
measured; a phase that fails is recorded with the end of its output and the others still run."""

import argparse
import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for path in (ROOT, BENCH):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

SIZES = {
    # One GPU: a few steps of each at sizes a GPU run uses (the "gpu" preset's batches, shorter runs).
    "cuda": {
        "sft": {"batch_size": 16, "steps": 8, "max_length": 256},
        "reward": {
            "k": 4,
            "rankings": 128,
            "valid_rankings": 32,
            "batch_size": 16,
            "micro_batch_size": 8,
            "max_length": 256,
        },
        "ppo": {"rollout_batch_size": 64, "minibatch_size": 16, "ppo_epochs": 2, "max_new_tokens": 64, "steps": 3},
        "precision": "bf16",
    },
    # This 2-core CPU: the same code paths at sizes that finish in a few minutes.
    "cpu": {
        "sft": {"batch_size": 2, "steps": 2, "max_length": 48},
        "reward": {
            "k": 2,
            "rankings": 4,
            "valid_rankings": 2,
            "batch_size": 2,
            "micro_batch_size": 2,
            "max_length": 48,
        },
        "ppo": {"rollout_batch_size": 2, "minibatch_size": 2, "ppo_epochs": 1, "max_new_tokens": 8, "steps": 2},
        "precision": "fp32",
    },
}


# --- the phases, each in its own process ---------------------------------------------------------


def environment() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "bf16_native": bool(cuda and torch.cuda.is_bf16_supported(including_emulation=False)),
    }


def phase_sft(spec: dict) -> dict:
    from sft_throughput import our_side

    from trainer.precision import resolve

    result = our_side(
        {**spec["sft"], "model": spec["model"], "threads": spec["threads"], "learning_rate": 2e-5, "seed": 0}
    )
    return {**result, "precision": resolve("auto", result["device"]).name, "env": environment()}


def phase_reward(spec: dict) -> dict:
    import torch
    from ppo_throughput import peak_memory_mb
    from rm_throughput import make_rankings

    from runconfig import RewardConfig
    from trainer.modeling import ScalarHeadModel, load_tokenizer
    from trainer.precision import load_dtype
    from trainer.reward import encode_rankings, train_reward

    torch.set_num_threads(spec["threads"])
    sizes, device = spec["reward"], spec["device"]
    config = RewardConfig(
        learning_rate=1e-5,
        epochs=1,
        batch_size=sizes["batch_size"],
        micro_batch_size=sizes["micro_batch_size"],
        max_length=sizes["max_length"],
        warmup_ratio=0.0,
        precision=spec["precision"],
        save_every=0,
    )
    tokenizer = load_tokenizer(spec["model"])
    k = sizes["k"]
    train, valid = make_rankings(k, sizes["rankings"], seed=k), make_rankings(k, sizes["valid_rankings"], seed=100 + k)
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(spec["model"], device=device, dtype=load_dtype(config.precision))
    result = train_reward(model, tokenizer, train, valid, config)
    model.save_pretrained(spec["reward_out"], tokenizer=tokenizer)
    # Tokens through the model: each ranking's K sequences once per step (the K-way loss).
    tokens = sum(len(s) for r in encode_rankings(tokenizer, train, config.max_length) for s in r.sequences)
    seconds = result["train_pairs"] / result["pairs_per_s"]
    return {
        "steps": result["steps"],
        "tokens_per_s": tokens / seconds,
        "pairs_per_s": result["pairs_per_s"],
        "valid_accuracy": result["valid_accuracy"],
        "peak_memory_mb": peak_memory_mb(device),
        "precision": config.precision,
    }


def phase_ppo(spec: dict) -> dict:
    """bench/ppo_throughput.py's side_ours, with every step's metrics kept (train_ppo wrapped)."""
    import ppo_throughput
    import torch

    import trainer.ppo
    from trainer.distributed import Team

    torch.set_num_threads(spec["threads"])
    team = Team()  # under torchrun: this process's GPU (or the CPU), FSDP
    sizes = spec["ppo"]
    settings = {
        **ppo_throughput.bench_settings(
            argparse.Namespace(lr=1e-5, max_new_tokens=sizes["max_new_tokens"], episodes=0, seed=0)
        ),
        "rollout_batch_size": sizes["rollout_batch_size"],
        "minibatch_size": sizes["minibatch_size"],
        "forward_batch_size": sizes["rollout_batch_size"],
        "ppo_epochs": sizes["ppo_epochs"],
        "total_episodes": sizes["steps"] * sizes["rollout_batch_size"],
        "precision": spec["precision"],
        "seed": 0,
        **({"sharding": "fsdp"} if team.size > 1 else {}),
    }
    steps: list[dict] = []
    train_ppo = trainer.ppo.train_ppo

    def kept(*args, on_metrics, **kwargs):
        def both(step, total, metrics):
            steps.append(metrics)
            on_metrics(step, total, metrics)

        return train_ppo(*args, on_metrics=both, **kwargs)

    trainer.ppo.train_ppo = kept  # side_ours imports it when called
    paths = {"sft": spec["model"], "rm": spec["reward_out"]}
    device = str(team.device) if team.size > 1 else spec["device"]
    result = ppo_throughput.side_ours(paths, settings, device)
    sampled = sum(m["response_length"] * settings["rollout_batch_size"] for m in steps)
    phases = ("rollout_s", "scoring_s", "update_s", "checkpoint_s")
    out = {
        "processes": team.size,
        "steps": len(steps),
        "step1_kl": steps[0]["kl"],
        "kl_is_zero": steps[0]["kl"] == 0.0,
        "episodes_per_s": result["episodes"] / result["seconds"],
        "sampled_tokens_per_s": sampled / sum(m["rollout_s"] for m in steps),
        "peak_memory_mb": result["peak_mb"],
        "precision": settings["precision"],
        "step_seconds": [{k: round(m[k], 3) for k in phases} for m in steps],
    }
    if team.is_main:
        print("RESULT " + json.dumps(out), flush=True)
    team.leave()
    return out


def phase_cuda_tests(spec: dict) -> dict:
    """The tests that need CUDA: those skipped without it (a skipif on torch.cuda.is_available())."""
    ids = cuda_test_ids()
    if not ids:
        return {"skipped": "no test is marked as needing CUDA"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=spec["timeout"],
    )
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    return {"tests": ids, **counts, "exit": done.returncode, "output_tail": done.stdout[-1500:]}


def cuda_test_ids() -> list[str]:
    ids = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if any("cuda.is_available" in ast.unparse(d) for d in node.decorator_list):
                    ids.append(f"tests/{path.name}::{node.name}")
    return ids


def phase_model(spec: dict) -> dict:
    """The model's folder (the default model is converted from its GGUF once, into the cache)."""
    from trainer.modeling import resolve_model_source

    return {"folder": resolve_model_source(spec["model"], Path(spec["cache"]))}


PHASES = {
    "model": phase_model,
    "sft": phase_sft,
    "reward": phase_reward,
    "ppo": phase_ppo,
    "cuda_tests": phase_cuda_tests,
}


# --- the check: the phases one after another, the JSON after each ------------------------------


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def readable(value):
    """Floats to 4 significant digits (a KL of 1e-7 stays 1e-7), inside dicts and lists."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: readable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value


def write(path: Path, report: dict) -> None:
    """The report as JSON, one line per key."""
    lines = [f" {json.dumps(k)}: {json.dumps(readable(v))}" for k, v in report.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def run_phase(name: str, spec: dict, deadline: float, processes: int = 1) -> dict:
    """Runs phase `name` in a new process (under torchrun with `processes` > 1) within the time left."""
    left = deadline - time.monotonic()
    if left < 20:
        return {"skipped": "out of time (the check's budget)"}
    command = [sys.executable, __file__, "--phase", name, "--spec", json.dumps({**spec, "timeout": left - 10})]
    if processes > 1:
        launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", free_port()]
        command = [sys.executable, *launch, *command[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.monotonic()
    # A session of its own, so that running out of time ends torchrun's workers too, not torchrun alone.
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": "out of time (the check's budget)", "seconds": round(time.monotonic() - started, 1)}
    seconds = round(time.monotonic() - started, 1)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}", "seconds": seconds, "output_tail": stderr[-2000:]}
    return {**json.loads(lines[-1][len("RESULT ") :]), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(BENCH / "gpu_check.json"), help="the JSON file to write")
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check (8 minutes)")
    parser.add_argument("--fsdp", action="store_true", help="the 2-process FSDP PPO step with fewer than 2 GPUs too")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model folder, hub id or the default")
    parser.add_argument("--cache", default=str(Path.home() / ".local/share/instructloop"))
    parser.add_argument("--work", default=str(BENCH / "out" / "gpu-check"), help="where the reward model goes")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = PHASES[args.phase](json.loads(args.spec))
        if args.phase != "ppo":  # (ppo prints its own, from process 0 only)
            print("RESULT " + json.dumps(result), flush=True)
        return

    started, deadline = time.monotonic(), time.monotonic() + args.budget
    sizes = SIZES[args.device]
    spec = {
        **sizes,
        "device": args.device,
        "model": args.model,
        "cache": args.cache,
        # One torch thread on the CPU: on a busy 2-core machine two spin-waiting threads made a
        # forward and backward pass of SmolLM2 10x slower (40 s against 4 s).
        "threads": 1 if args.device == "cpu" else min(4, os.cpu_count() or 1),
        "reward_out": str(Path(args.work) / "reward-model"),
    }
    out = Path(args.out)
    report: dict = {"check": "bench/gpu_check.py", "device": args.device, "model": args.model, "sizes": sizes}

    def record(name: str, result: dict) -> None:
        report[name] = result
        report.pop("total_s", None)  # (last)
        report["total_s"] = round(time.monotonic() - started, 1)
        write(out, report)
        print(f"{name}: {json.dumps(readable(result))[:300]}", flush=True)

    model = run_phase("model", spec, deadline)  # (in a process of its own: this one stays small)
    if "folder" not in model:
        record("model", model)
        raise SystemExit(f"the model could not be loaded: {json.dumps(model)[:2000]}")
    spec["model"] = model["folder"]
    report["model_ready_s"] = model["seconds"]
    if args.device == "cuda":
        record("cuda_tests", run_phase("cuda_tests", spec, deadline))
    else:
        record("cuda_tests", {"skipped": "--device cpu"})
    sft = run_phase("sft", spec, deadline)
    report["environment"] = sft.pop("env", None)
    record("sft", sft)
    record("reward", run_phase("reward", spec, deadline))
    if "error" in report["reward"] or "skipped" in report["reward"]:
        record("ppo", {"skipped": "no reward model (the reward phase did not finish)"})
    else:
        record("ppo", run_phase("ppo", spec, deadline))
    gpus = (report["environment"] or {}).get("gpus", 0)
    if args.device == "cuda" and gpus < 2 and not args.fsdp:
        record("ppo_fsdp", {"skipped": f"{gpus} GPU(s): the FSDP step needs 2"})
    elif args.device == "cpu" and not args.fsdp:
        record("ppo_fsdp", {"skipped": "--device cpu (--fsdp runs it with 2 CPU processes)"})
    elif "error" in report["reward"] or "skipped" in report["reward"]:
        record("ppo_fsdp", {"skipped": "no reward model (the reward phase did not finish)"})
    else:
        record("ppo_fsdp", run_phase("ppo", spec, deadline, processes=2))

    ran = [report[name] for name in ("sft", "reward", "ppo", "ppo_fsdp", "cuda_tests")]
    failed = [r for r in ran if "error" in r or r.get("failed") or r.get("exit")]
    kl_zero = all(r.get("kl_is_zero", True) for r in (report["ppo"], report["ppo_fsdp"]))
    report.pop("total_s", None)
    report["ok"] = not failed and kl_zero and "step1_kl" in report["ppo"]
    report["total_s"] = round(time.monotonic() - started, 1)
    write(out, report)
    print(f"ok: {report['ok']} ({report['total_s']} s); {out}")
    raise SystemExit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
