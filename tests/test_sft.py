"""SFT on tiny models on the CPU: it learns, it is deterministic, it refuses bad input."""

import math
import random

import pytest
import torch

from runconfig import SFTConfig, config_from_dict
from trainer.data import SFTExample
from trainer.errors import TrainingDiverged
from trainer.modeling import load_causal_lm, load_tokenizer
from trainer.sft import IGNORE, encode_example, train_sft
from trainer.tiny import make_tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and much faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = "red green blue cat dog fish sun moon tree rock bird star".split()


def reverse_task(n: int, seed: int) -> list[SFTExample]:
    """A learnable task: answer with the prompt's three words in reverse order."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        examples.append(SFTExample(prompt="Reverse: " + " ".join(words), completion=" ".join(reversed(words))))
    return examples


TRAIN, VALID = reverse_task(64, seed=0), reverse_task(16, seed=1)
FAST = SFTConfig(learning_rate=1e-2, epochs=3, batch_size=16, micro_batch_size=8, eval_every=4, warmup_ratio=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [f"{ex.prompt} {ex.completion}" for ex in TRAIN]
    return str(make_tiny_model(tmp_path_factory.mktemp("sft") / "model", texts=texts))


def fresh(tiny, seed=0):
    torch.manual_seed(seed)
    return load_causal_lm(tiny, device="cpu"), load_tokenizer(tiny)


def test_sft_lowers_the_held_out_loss_on_a_learnable_task(tiny):
    model, tok = fresh(tiny)
    seen = []
    result = train_sft(model, tok, TRAIN, VALID, FAST, on_metrics=lambda step, total, m: seen.append((step, total, m)))
    assert result["steps"] == 12 and seen[-1][:2] == (12, 12)
    assert result["valid_loss"] < 0.7 * result["initial_valid_loss"], result
    valid_losses = [m["valid_loss"] for _, _, m in seen if "valid_loss" in m]
    assert len(valid_losses) == 1 + 3  # before training, then every 4 steps
    assert seen[-1][2]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine decays to min_lr_ratio = 0


def test_labels_cover_the_response_and_its_eos_only(tiny):
    tok = load_tokenizer(tiny)
    ids, labels = encode_example(tok, SFTExample("Reverse: a b c", "c b a"), FAST)
    response = [t for t in labels if t != IGNORE]
    assert tok.decode(response) == "c b a</s>"
    # The ids are the chat template's: the template's newline after the end token is context, unlabelled.
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert ids[start : start + len(response)] == response
    assert labels[:start] == [IGNORE] * start and tok.decode(ids[start + len(response) :]) == "\n"
    assert (
        ids
        == tok.apply_chat_template(
            [{"role": "user", "content": "Reverse: a b c"}, {"role": "assistant", "content": "c b a"}], tokenize=True
        )["input_ids"]
    )
    # A budget under the template's own frame keeps the prompt's last ids, as it always did.
    cut = SFTConfig(max_length=12, max_prompt_length=4)
    ids, labels = encode_example(tok, SFTExample("Reverse: " + " ".join(WORDS), " ".join(WORDS)), cut)
    assert len(ids) == 12 and labels[:4] == [IGNORE] * 4 and labels[4] != IGNORE


def test_gradient_accumulation_equals_one_big_batch(tiny):
    results = []
    for micro in (16, 2):
        model, tok = fresh(tiny)
        config = SFTConfig(learning_rate=1e-3, epochs=1, batch_size=16, micro_batch_size=micro, max_steps=2)
        results.append(train_sft(model, tok, TRAIN, [], config))
    assert results[0]["train_loss"] == pytest.approx(results[1]["train_loss"], rel=1e-5)


def test_same_seed_gives_the_same_metrics(tiny):
    def run(seed):
        model, tok = fresh(tiny)
        seen = []
        config = SFTConfig(**{**FAST.__dict__, "seed": seed, "max_steps": 4})
        train_sft(model, tok, TRAIN, VALID, config, on_metrics=lambda step, total, m: seen.append((step, m)))
        return seen

    first = run(0)
    assert run(0) == first
    assert run(1) != first  # another seed shuffles differently


def test_should_stop_ends_at_a_safe_point(tiny):
    model, tok = fresh(tiny)
    # Polled before the first held-out pass's one batch, then (FAST has 2 micro-batches per step)
    # between the micro-batches and after each step.
    polls = []
    result = train_sft(model, tok, TRAIN, VALID, FAST, should_stop=lambda: polls.append(1) or len(polls) >= 5)
    assert result["steps"] == 2 and result["stopped_early"] == 1.0
    assert math.isfinite(result["initial_valid_loss"]) and "valid_loss" not in result  # a stop runs no held-out pass


def test_nan_weights_raise_training_diverged(tiny):
    model, tok = fresh(tiny)
    with torch.no_grad():
        model.get_input_embeddings().weight[:] = float("nan")
    with pytest.raises(TrainingDiverged, match="lower learning_rate"):
        train_sft(model, tok, TRAIN, [], FAST)


def test_bad_configs_and_data_are_refused_with_clear_messages(tiny):
    model, tok = fresh(tiny)
    with pytest.raises(ValueError, match=r"micro_batch_size \(3\) must divide batch_size \(8\)"):
        train_sft(model, tok, TRAIN, [], SFTConfig(batch_size=8, micro_batch_size=3))
    with pytest.raises(ValueError, match="at least one training demonstration"):
        train_sft(model, tok, [], VALID, FAST)
    with pytest.raises(ValueError, match="empty response"):
        train_sft(model, tok, [SFTExample("hi", "  ")], [], FAST)
    with pytest.raises(ValueError) as info:
        config_from_dict("sft", {"learning_rate": 0, "epochs": 0, "max_prompt_length": 2048, "batch_size": "8"})
    assert "batch_size must be an integer" in str(info.value)
    with pytest.raises(ValueError) as info:
        config_from_dict("sft", {"learning_rate": 0, "epochs": 0, "max_prompt_length": 2048, "warmup_ratio": 1.5})
    message = str(info.value)
    for part in (
        "learning_rate must be in (0, 1)",
        "epochs must be at least 1",
        "max_prompt_length must be",
        "warmup_ratio must be in [0, 1)",
    ):
        assert part in message


def test_lora_with_gradient_checkpointing_trains_only_the_adapters(tiny):
    torch.manual_seed(0)
    model = load_causal_lm(tiny, device="cpu", lora_r=8, gradient_checkpointing=True)
    tok = load_tokenizer(tiny)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = train_sft(model, tok, TRAIN, VALID, FAST)
    assert result["valid_loss"] < result["initial_valid_loss"]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_should_stop_is_polled_between_micro_batches_too(tiny):
    model, tok = fresh(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_sft(model, tok, TRAIN, [], FAST, should_stop=lambda: True)  # 2 micro-batches per step
    assert result["steps"] == 0 and result["stopped_early"] == 1.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # partial gradients dropped
