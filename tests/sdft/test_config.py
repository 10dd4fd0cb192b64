import pytest

from sdft.config import DEFAULT_TARGET_MODULES, ConfigError, SDFTConfig, parse_overrides


def test_defaults_match_reference_run():
    config = SDFTConfig()

    assert config.max_seq_length == 65536
    assert config.max_teacher_prompt_tokens == 57344
    assert config.max_rollout_tokens == 8192
    assert config.max_steps == 600
    assert config.learning_rate == 1e-5
    assert config.warmup_steps == 20
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout) == (64, 128, 0.0)
    assert config.lora_target_modules == DEFAULT_TARGET_MODULES
    assert (config.rollout_temperature, config.rollout_top_p) == (0.8, 0.95)
    assert config.loss == "reverse_kl"


def test_every_bad_option_is_reported():
    with pytest.raises(ConfigError) as info:
        SDFTConfig.from_dict({"learning_rate": -1.0, "rollout_top_p": 1.5, "warmup_steps": -2})

    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("warmup_steps=-2")
    assert problems[1].startswith("learning_rate=-1.0")
    assert problems[2].startswith("rollout_top_p=1.5")


def test_type_and_range_errors_reported_together():
    with pytest.raises(ConfigError) as info:
        SDFTConfig.from_dict({"learning_rate": "fast", "lora_rank": -1, "max_steps": 0})

    problems = info.value.problems
    assert problems[0] == "learning_rate='fast': expected a number"
    assert "max_steps=0: must be a positive integer" in problems
    assert "lora_rank=-1: must be a positive integer" in problems
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_steps": "10"}, "max_steps='10': expected an integer"),
        ({"gradient_checkpointing": 1}, "expected true or false"),
        ({"lora_target_modules": "q_proj"}, "expected a list of module names"),
        ({"top_k_logits": 0}, "top_k_logits=0"),
        ({"teacher_instruction": "no placeholder"}, "{reference}"),
        ({"max_teacher_prompt_tokens": 70000}, "must not exceed max_seq_length"),
        ({"device": "cpu", "dtype": "bfloat16"}, "use float32 on CPU"),
    ],
)
def test_invalid_option_message(options, fragment):
    with pytest.raises(ConfigError) as info:
        SDFTConfig.from_dict(options)

    assert fragment in str(info.value)


def test_unknown_option_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        SDFTConfig.from_dict({"lr": 1e-4})

    assert "lr: unknown option" in str(info.value)
    assert "learning_rate" in str(info.value)


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 5\nlora_rank: 8\n")

    config = SDFTConfig.from_yaml(
        path, ["learning_rate=1e-4", "lora_target_modules=[q_proj, v_proj]", "top_k_logits=null"]
    )

    assert config.max_steps == 5
    assert config.lora_rank == 8
    assert config.learning_rate == 1e-4
    assert config.lora_target_modules == ("q_proj", "v_proj")
    assert config.top_k_logits is None


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["max_steps"])


def test_round_trip_through_dict():
    config = SDFTConfig(max_steps=3, lora_target_modules=("q_proj",))

    assert SDFTConfig.from_dict(config.to_dict()) == config
