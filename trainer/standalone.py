"""What the algorithms' own command lines share (`python -m trainer.sft|reward|ppo`):
the common flags, JSONL reading, config from --set KEY=JSON, and printing metrics."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    """A parser with --out, --cache and --set; each algorithm adds its data and model flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".local/share/instructloop",
        help="where the default model is converted and cached",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a config field")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on from the newest checkpoint in the checkpoint folder (a run stopped or killed part-way)",
    )
    p.add_argument(
        "--checkpoints",
        type=Path,
        help="where checkpoints go (every save_every steps; default: next to --out, OUT.checkpoints)",
    )
    return p


def checkpoints(args: argparse.Namespace):
    from trainer.checkpoints import Checkpoints

    return Checkpoints(args.checkpoints or args.out.with_name(args.out.name + ".checkpoints"), resume=args.resume)


def device():
    """This process's device: under accelerate launch / torchrun its own GPU (or the CPU), else the best one."""
    from trainer.distributed import Team
    from trainer.modeling import pick_device

    team = Team()
    return team.device if team.size > 1 else pick_device()


def is_main() -> bool:
    from trainer.distributed import Team

    return Team().is_main


def config(kind: str, sets: list[str], **overrides: Any):
    from runconfig import config_from_dict

    values = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in sets)}
    return config_from_dict(kind, {**values, **overrides})


def read_jsonl(path: Path | None) -> list[dict]:
    if path is None:
        return []
    with open(path, encoding="utf-8") as f:
        return [row for row in map(json.loads, f) if row]


def answer_text(value: Any) -> str:
    """A completion as a string: as is, or the assistant turn of TRL's conversational form
    ([{"role": "assistant", "content": ...}], what the conversational SFT export writes). A prompt
    needs no such step: the trainers take a string or the message list as it is."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1]["content"])
    return str(value)


def stop_on_signals():
    """A should_stop for the command line: SIGTERM (a scheduler preempting the job) or Ctrl-C makes the
    run stop at its next step, with a checkpoint, so that `--resume` goes on from there."""
    import signal

    asked: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    return lambda: bool(asked)


def print_metrics(step: int, total: int, metrics: dict) -> None:
    if metrics and is_main():  # one line per step, not one per process (and none for progress alone)
        print(step, total, json.dumps(metrics), flush=True)


def train_and_save(
    train_fn, model, tokenizer, train: list, valid: list, config, args: argparse.Namespace, save
) -> None:
    """Runs `train_fn` with printed metrics and the checkpoint folder of `args`; process 0 then saves
    the model with save(model, tokenizer, args.out, whole) and prints the final figures as one JSON
    line (whole: the gathered weights of a sharded model, else None)."""
    result = train_fn(
        model,
        tokenizer,
        train,
        valid,
        config,
        on_metrics=print_metrics,
        should_stop=stop_on_signals(),
        checkpoints=checkpoints(args),
    )
    finish(result, model, lambda whole: save(model, tokenizer, args.out, whole), args)


def finish(result: dict, model, save, args: argparse.Namespace) -> None:
    """After training: process 0 calls save(whole) (unless a signal stopped the run: no half-trained
    model at --out) and prints the final figures as one JSON line; every process then leaves
    together. whole: the weights of a model sharded across the processes, gathered (else None)."""
    from trainer.distributed import Team, full_state_dict

    team = Team()
    stopped = bool(result.get("stopped_early"))
    whole = None if stopped else full_state_dict(model)
    if team.is_main and not stopped:
        save(whole)
    if team.is_main:
        print(json.dumps(result))
        if stopped:
            print(
                f"Stopped at step {result['steps']:.0f}; the checkpoint is in "
                f"{checkpoints(args).folder}. Run the same command with --resume to go on.",
                file=sys.stderr,
            )
    team.leave(1 if stopped else 0)  # several processes end here
    if stopped:
        raise SystemExit(1)
