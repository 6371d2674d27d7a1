"""Reward model on real preferences: the hh-rlhf helpful splits in ../shared/data.

A reduced CPU setting (a tiny model built from a config with a tokenizer trained on the data,
2,000 training pairs, 256 tokens, one epoch: under a minute on one core); the held-out accuracy
is printed (run with -s to see it). On a GPU, train the default model instead (bench/README.md)."""

import gzip
import json
import random
import time

import pytest
import torch

from runconfig import RewardConfig
from tests.conftest import SHARED_DATA
from trainer.data import RankingExample
from trainer.modeling import ScalarHeadModel, load_tokenizer
from trainer.reward import train_reward
from trainer.tiny import make_tiny_model

HH = SHARED_DATA / "hh-rlhf"
HELPFUL = {
    "helpful-base": "test-first1554.jsonl.gz",
    "helpful-online": "test.jsonl.gz",
    "helpful-rejection-sampled": "test.jsonl.gz",
}
TURN = "\n\nAssistant:"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HH.is_dir(), reason=f"{HH} is absent: the hh-rlhf real-data test needs ../shared/data"),
]


def load_helpful() -> list[RankingExample]:
    """hh-rlhf pairs as K=2 rankings: the dialogue up to the last assistant turn is the prompt,
    the two last turns are the completions (chosen first). Identical pairs are dropped."""
    rankings = []
    for split, file in HELPFUL.items():
        with gzip.open(HH / split / file, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                chosen, rejected = row["chosen"], row["rejected"]
                cut = chosen.rfind(TURN)
                if chosen == rejected or cut < 0 or chosen[:cut] != rejected[:cut]:
                    continue
                rankings.append(
                    RankingExample(
                        prompt=chosen[:cut].strip(),
                        completions=[chosen[cut + len(TURN) :].strip(), rejected[cut + len(TURN) :].strip()],
                        order=[[0], [1]],
                        meta={"split": split},
                    )
                )
    return rankings


def test_reward_model_on_hh_rlhf_helpful_reports_held_out_accuracy(tmp_path):
    started = time.perf_counter()
    rankings = load_helpful()
    assert len(rankings) > 5000  # 1,554 + 1,137 + 2,749 pairs, less identical or malformed ones
    random.Random(0).shuffle(rankings)
    valid, train = rankings[:500], rankings[500:2500]
    texts = [r.prompt[-2000:] for r in train[:1000]] + [c for r in train for c in r.completions]
    folder = make_tiny_model(tmp_path / "tiny", texts=texts, vocab_size=2048, hidden_size=64, intermediate_size=128)
    tokenizer = load_tokenizer(str(folder))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: the same figure whatever the machine's load
    try:
        torch.manual_seed(0)
        model = ScalarHeadModel.from_causal_lm(str(folder), device="cpu")
        config = RewardConfig(
            learning_rate=1e-3, epochs=1, batch_size=32, micro_batch_size=16, max_length=256, eval_batch_size=64
        )
        result = train_reward(model, tokenizer, train, valid, config)
    finally:
        torch.set_num_threads(threads)
    print(
        f"\nhh-rlhf helpful: held-out accuracy {result['valid_accuracy']:.3f} on {result['valid_pairs']:.0f} pairs "
        f"(trained on {result['train_pairs']:.0f} pairs, {result['pairs_per_s']:.1f} pairs/s, "
        f"{time.perf_counter() - started:.1f} s in all)"
    )
    assert result["valid_pairs"] == 500
    assert result["valid_accuracy"] > 0.5, result  # better than chance; the length heuristic gets 0.52 here
