"""What the algorithms' own command lines share (`python -m trainer.sft|reward|ppo`):
the common flags, JSONL reading, config from --set KEY=JSON, and printing metrics."""

import argparse
import json
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
    return p


def config(kind: str, sets: list[str], **overrides: Any):
    from runconfig import config_from_dict

    values = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in sets)}
    return config_from_dict(kind, {**values, **overrides})


def read_jsonl(path: Path | None) -> list[dict]:
    if path is None:
        return []
    with open(path, encoding="utf-8") as f:
        return [row for row in map(json.loads, f) if row]


def print_metrics(step: int, total: int, metrics: dict) -> None:
    print(step, total, json.dumps(metrics), flush=True)
