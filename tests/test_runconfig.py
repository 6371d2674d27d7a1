"""Run settings validated by pydantic itself (field bounds, Literal choices, rules across fields),
worded for people by config_from_dict, and a run's data selection (DataFilter) as stored JSON."""

import pytest
from pydantic import ValidationError

from app.models import TrainingRun
from app.services import runs
from runconfig import (
    PRESETS,
    RUN_CONFIGS,
    DataFilter,
    EvaluateConfig,
    GenerateConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    config_from_dict,
    data_filter_from_dict,
)


def problems_of(kind: str, values: dict) -> str:
    with pytest.raises(ValueError) as info:
        config_from_dict(kind, values)
    return str(info.value)


@pytest.mark.parametrize(
    "kind, values, message",
    [
        ("sft", {"epochs": 0}, "epochs must be at least 1, got 0."),
        ("sft", {"epochs": 1001}, "epochs must be at most 1,000, got 1001."),
        ("sft", {"learning_rate": 1}, "learning_rate must be in (0, 1), got 1.0."),
        ("sft", {"warmup_ratio": 1.0}, "warmup_ratio must be in [0, 1), got 1.0."),
        ("reward", {"min_lr_ratio": -0.5}, "min_lr_ratio must be between 0 and 1, got -0.5."),
        ("sft", {"weight_decay": -1}, "weight_decay must be 0 or more, got -1.0."),
        ("sft", {"max_grad_norm": 0}, "max_grad_norm must be above 0, got 0.0."),
        ("sft", {"eval_every": -1}, "eval_every must be 0 (once per epoch) or positive, got -1."),
        ("sft", {"lora_r": 4097}, "lora_r must be at most 4,096, got 4097."),
        ("sft", {"max_length": 32769}, "max_length must be between 8 and 32768 tokens, got 32769."),
        ("sft", {"micro_batch_size": 0}, "micro_batch_size must be at least 1, got 0."),
        ("sft", {"seed": -(2**31)}, "seed must be an integer within ±2,147,483,647, got -2147483648."),
        ("generate", {"top_p": 1.5}, "top_p must be in (0, 1], got 1.5."),
        ("generate", {"max_new_tokens": 5000}, "max_new_tokens must be between 1 and 4096, got 5000."),
        ("generate", {"limit": -1}, "limit must be 0 (all prompts) or positive, got -1."),
        ("evaluate", {"num_prompts": -5}, "num_prompts must be 0 (all) or positive, got -5."),
        ("ppo", {"gamma": 0}, "gamma must be in (0, 1], got 0.0."),
        ("ppo", {"cliprange_value": 101}, "cliprange_value must be in (0, 100], got 101.0."),
        ("ppo", {"kl_coef": 2}, "kl_coef (beta) must be between 0 and 1 (paper: 0.02), got 2.0."),
        ("ppo", {"ppo_epochs": 0}, "ppo_epochs must be at least 1, got 0."),
        ("ppo", {"value_lora_r": -1}, "value_lora_r must be 0 (all weights) or positive, got -1."),
    ],
)
def test_bounds_are_pydantic_fields_worded_for_people(kind, values, message):
    assert problems_of(kind, values) == message
    with pytest.raises(ValidationError):  # the model refuses them too, not only config_from_dict
        RUN_CONFIGS[kind](**values)


def test_bounds_are_in_the_json_schema():
    properties = SFTConfig.model_json_schema()["properties"]
    assert properties["epochs"]["minimum"] == 1 and properties["epochs"]["maximum"] == 1000
    assert properties["learning_rate"]["exclusiveMinimum"] == 0
    assert properties["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16", "bf16-pure"]
    assert EvaluateConfig.model_json_schema()["properties"]["split"]["enum"] == ["valid", "test"]


def test_choices_are_literals():
    assert problems_of("sft", {"precision": "fp8"}) == (
        "precision must be one of auto, fp32, bf16, fp16, bf16-pure, got 'fp8'."
    )
    assert problems_of("ppo", {"sharding": "zero3"}) == "sharding must be one of ddp, fsdp, got 'zero3'."
    assert problems_of("generate", {"split": "dev"}) == "split must be one of train, valid, test, got 'dev'."
    assert problems_of("evaluate", {"split": "train"}) == (
        "split must be a held-out split (valid or test), got 'train'."
    )
    assert problems_of("sft", {"precision": 16}) == (
        "precision must be one of auto, fp32, bf16, fp16, bf16-pure, got 16."
    )
    assert SFTConfig(precision="bf16-pure", sharding="fsdp").precision == "bf16-pure"
    with pytest.raises(ValidationError):
        GenerateConfig(split="dev")  # type: ignore[arg-type]


def test_k_is_the_projects_or_two_to_nine():
    assert [config_from_dict("generate", {"k": k}).k for k in (0, 2, 9)] == [0, 2, 9]
    for k in (1, 10, -1):
        assert problems_of("generate", {"k": k}) == f"k must be 0 (the project's K) or between 2 and 9, got {k}."


def test_types_stay_strict_and_json_numbers_are_read_as_json_means_them():
    assert config_from_dict("sft", {"epochs": 2.0}).epochs == 2
    assert problems_of("sft", {"epochs": 2.5}).startswith("epochs must be an integer within")
    assert problems_of("sft", {"gradient_checkpointing": 1}) == "gradient_checkpointing must be true or false, got 1."
    assert problems_of("sft", {"learning_rate": True}) == "learning_rate must be a finite number, got True."
    assert problems_of("sft", {"epochs": 10**18}).startswith("epochs must be an integer within ±2,147,483,647")


def test_rules_across_settings_are_a_model_validator():
    with pytest.raises(ValidationError, match=r"micro_batch_size \(3\) must divide batch_size \(8\)"):
        SFTConfig(batch_size=8, micro_batch_size=3)
    with pytest.raises(ValidationError, match="max_prompt_length must be below max_length"):
        SFTConfig(max_length=64, max_prompt_length=64)
    with pytest.raises(ValidationError, match="sharding=fsdp splits fully fine-tuned models"):
        PPOConfig(sharding="fsdp", value_lora_r=8)
    with pytest.raises(ValidationError, match=r"total_episodes \(8\) must be at least rollout_batch_size \(16\)"):
        PPOConfig(total_episodes=8)
    config = RewardConfig(batch_size=8, micro_batch_size=4)
    with pytest.raises(ValidationError, match=r"micro_batch_size \(3\) must divide batch_size \(8\)"):
        config.micro_batch_size = 3  # assignments are validated too
    assert config.micro_batch_size == 4 and config.problems() == []


def test_every_problem_is_listed_at_once_but_rules_skip_invalid_settings():
    message = problems_of("ppo", {"kl_coef": -0.1, "rollout_batch_size": 16, "minibatch_size": 5})
    assert message == (
        "kl_coef (beta) must be between 0 and 1 (paper: 0.02), got -0.1. "
        "minibatch_size (5) must divide rollout_batch_size (16)."
    )
    # minibatch_size is invalid itself: the rule about it says nothing (no division by zero)
    assert problems_of("ppo", {"minibatch_size": 0, "total_episodes": 8}) == (
        "minibatch_size must be at least 1, got 0. total_episodes (8) must be at least rollout_batch_size (16)."
    )
    message = problems_of("sft", {"epochs": 0, "nope": 1, "max_prompt_length": 2048})
    assert message.startswith("epochs must be at least 1, got 0. Unknown setting 'nope' for a sft run")
    assert message.endswith("max_prompt_length must be below max_length (1024), got 2048.")


def test_defaults_and_presets_are_valid():
    for kind, cls in RUN_CONFIGS.items():
        assert cls().problems() == []
        for preset in PRESETS.values():
            config_from_dict(kind, preset[kind])


# ---- DataFilter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        {},
        {"exclude_labelers": [3]},
        {"splits": ["train"], "valid_splits": ["test"]},  # a row from before min_agreement
        {"exclude_labelers": [2, 5], "min_agreement": 85, "below_agreement": [5], "left_out_by_admin": [2]},
        {"exclude_labelers": [], "min_agreement": 65.5},
    ],
)
def test_a_stored_data_filter_loads_typed_and_is_stored_as_it_was(row):
    selection = DataFilter.model_validate(row)
    assert selection.stored() == row
    assert runs.data_filter_of(TrainingRun(data_filter=row)) == selection
    assert DataFilter.model_validate(selection.stored()) == selection


def test_data_filter_defaults_are_typed():
    selection = runs.data_filter_of(TrainingRun(data_filter={"exclude_labelers": [7]}))
    assert selection.splits == ["train"] and selection.valid_splits == ["valid"]
    assert selection.exclude_labelers == [7] and selection.min_agreement is None and selection.below_agreement == []
    resolved = selection.model_copy(update={"exclude_labelers": [7, 8], "below_agreement": [8]})
    assert resolved.stored() == {"exclude_labelers": [7, 8], "below_agreement": [8]}


@pytest.mark.parametrize(
    "values, message",
    [
        ([], "data_filter must be an object."),
        (
            {"labelers": [1]},
            "Unknown data_filter keys: labelers; known: exclude_labelers, min_agreement, splits, valid_splits, sources.",
        ),
        ({"below_agreement": [1]}, "Unknown data_filter keys: below_agreement"),  # resolved, never asked for
        ({"exclude_labelers": [True]}, "data_filter.exclude_labelers must be a list of user ids."),
        ({"exclude_labelers": 3}, "data_filter.exclude_labelers must be a list of user ids."),
        ({"min_agreement": 150}, "data_filter.min_agreement is a percentage between 0 and 100, e.g. 65; got 150."),
        ({"min_agreement": "65"}, "data_filter.min_agreement is a percentage between 0 and 100, e.g. 65; got '65'."),
        ({"splits": []}, "data_filter.splits must be a non-empty list of splits (train, valid, test)."),
        (
            {"valid_splits": ["dev"]},
            "data_filter.valid_splits must be a non-empty list of splits (train, valid, test).",
        ),
    ],
)
def test_a_data_filter_asked_for_is_checked_with_clear_messages(values, message):
    with pytest.raises(ValueError) as info:
        data_filter_from_dict(values)
    assert str(info.value).startswith(message)


def test_a_data_filter_asked_for_keeps_its_keys():
    values = {"exclude_labelers": [1], "min_agreement": 80, "splits": ["train", "valid"], "valid_splits": ["test"]}
    assert data_filter_from_dict(values).stored() == values
