"""One definition of "the answer ended": a model whose generation config lists two end ids (one of
them not the tokenizer's EOS) stops at either in generate, evaluate's sampling and PPO, and PPO
applies no missing-EOS penalty to such answers."""

import pytest
import torch

from runconfig import PPOConfig
from trainer import modeling
from trainer.generate import sample_batches
from trainer.ppo import train_ppo
from trainer.tiny import make_tiny_model


def _always_says(model, token_id: int):
    """The model's next token is always `token_id` (an LM head whose bias decides alone)."""
    head = torch.nn.Linear(model.config.hidden_size, model.get_input_embeddings().weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)
        head.bias[token_id] = 30.0
    model.lm_head = head
    return model


@pytest.fixture
def two_ends(tmp_path):
    folder = str(make_tiny_model(tmp_path / "m"))
    tokenizer = modeling.load_tokenizer(folder)
    other_end = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("great")[0])
    assert other_end != tokenizer.eos_token_id

    def load():
        model = modeling.load_causal_lm(folder, device="cpu")
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, other_end]
        return _always_says(model, other_end)

    return folder, tokenizer, other_end, load


def test_end_ids_gather_the_template_the_tokenizer_and_the_generation_config(two_ends):
    _, tokenizer, other_end, load = two_ends
    assert modeling.end_ids(tokenizer, load().generation_config) == [tokenizer.eos_token_id, other_end]
    # SFT targets end with the chat template's end of turn (here the template writes EOS after an answer).
    assert modeling.encode_completion(tokenizer, "hi")[-1] == modeling.template_end_id(tokenizer)
    assert modeling.encode_completion(tokenizer, "hi", ended=False)[-1] != tokenizer.eos_token_id


def test_generate_and_evaluate_sampling_stop_at_the_other_end_id(two_ends):
    _, tokenizer, _, load = two_ends
    ((_, samples),) = sample_batches(
        load(), tokenizer, ["Say it"], k=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0, batch_size=4
    )
    assert all(s.ended_with_eos and s.num_tokens == 1 for s in samples[0])


def test_ppo_stops_at_the_other_end_id_without_a_penalty(two_ends):
    folder, tokenizer, _, load = two_ends
    value = modeling.ScalarHeadModel.from_causal_lm(folder, device="cpu")
    history = []
    config = PPOConfig(
        total_episodes=8,
        rollout_batch_size=8,
        minibatch_size=4,
        ppo_epochs=1,
        max_new_tokens=6,
        missing_eos_penalty=1.0,
        learning_rate=1e-6,
    )
    train_ppo(
        load(),
        load(),
        None,
        value,
        tokenizer,
        ["Say it", "Go on"],
        config,
        reward_fn=lambda prompts, answers: [1.0] * len(answers),
        on_metrics=lambda s, t, m: history.append(m),
    )
    assert history[0]["eos_fraction"] == 1.0 and history[0]["response_length"] == 1.0
    assert history[0]["reward"] == pytest.approx(1.0, abs=1e-3)  # the score, with no missing-EOS penalty


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_no_dropout_is_left_in_train_mode(family):
    """Two train-mode forward passes agree after disable_dropout, also where dropout is a float
    attribute that layers pass to F.dropout (OPT's `dropout`, Llama's `attention_dropout`)."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from trainer.ppo import disable_dropout

    torch.manual_seed(0)
    if family == "opt":
        model = OPTForCausalLM(
            OPTConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=2,
                ffn_dim=64,
                num_attention_heads=4,
                max_position_embeddings=32,
                word_embed_proj_dim=32,
                dropout=0.3,
                attention_dropout=0.3,
                activation_dropout=0.3,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                attention_dropout=0.3,
            )
        )
    ids = torch.randint(0, 64, (2, 12))
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)  # dropout is on before
    disable_dropout(model)
    model.train()
    torch.testing.assert_close(model(ids).logits, model(ids).logits, atol=0, rtol=0)
