"""Loading Hugging Face checkpoints: safetensors directories and GGUF files.

`transformers` reads the configuration, the tokenizer and (for GGUF) dequantises the
weights; specsa's own decoder then takes the state dict, whose names match Hugging Face's.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from specsa.config import Combine, ModelConfig, NSAConfig, RopeScaling
from specsa.model.decoder import CausalLM, pack_checkpoint
from specsa.model.rope import Rotary
from specsa.errors import ModelLoadError
from specsa.model.registry import cache_dir, resolve_model

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")


def checkpoint_directory(name_or_path: str) -> Path:
    """A directory with config.json, tokenizer and *.safetensors for a name, a directory
    or a GGUF file. A GGUF file is converted once into the cache: reading and dequantising
    it through transformers takes most of a minute, the converted copy a second."""
    path = resolve_model(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir() and len(ggufs := sorted(path.glob("*.gguf"))) == 1:
        path = ggufs[0]
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    raise ModelLoadError(
        f"{name_or_path!r} is neither a model directory with a config.json nor a .gguf file. "
        f"Pass --model with a Hugging Face checkpoint directory, a .gguf file, or a known name."
    )


def convert_gguf(gguf: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    target = cache_dir() / "converted" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    done_marker = target / ".complete"
    if done_marker.is_file():
        return target
    print(f"specsa: converting {gguf.name} once into {target}…", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        raise ModelLoadError(f"Could not read the GGUF file {gguf}: {error}") from error
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    config = hf_model.config
    config.quantization_config = None  # the weights are saved dequantised
    config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, target / "model.safetensors")
    done_marker.touch()
    return target


def rope_from(hf: Any) -> tuple[float, RopeScaling | None]:
    """(theta, scaling). transformers 5 keeps both in `rope_parameters`; 4.x in
    `rope_theta` and `rope_scaling`."""
    params = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = float(params.get("rope_theta", getattr(hf, "rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(params["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3",
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    raise ModelLoadError(f"RoPE scaling {kind!r} is not supported; specsa supports linear and llama3 scaling.")


def model_config_from(hf: Any) -> ModelConfig:
    """specsa's ModelConfig from a transformers config. A checkpoint trained with NSA carries
    an `nsa` dict (NSAConfig fields, plus `cmp_mlp_hidden` for a learned compression)."""
    if hf.model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"Architecture {hf.model_type!r} is not supported; specsa runs the Llama/Qwen2 family "
            f"({', '.join(SUPPORTED_ARCHITECTURES)})."
        )
    if getattr(hf, "sliding_window", None) and getattr(hf, "use_sliding_window", hf.model_type == "mistral"):
        raise ModelLoadError("Checkpoints trained with sliding-window attention are not supported.")
    eos = hf.eos_token_id
    nsa_fields = dict(getattr(hf, "nsa", None) or {})
    cmp_mlp_hidden = int(nsa_fields.pop("cmp_mlp_hidden", 0))
    rope_theta, rope_scaling = rope_from(hf)
    return ModelConfig(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_q_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        max_position=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        qkv_bias=hf.model_type == "qwen2" or bool(getattr(hf, "attention_bias", False)),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
        nsa=NSAConfig(**nsa_fields) if nsa_fields else None,
        cmp_mlp_hidden=cmp_mlp_hidden,
    )


def choose_nsa(cfg: ModelConfig, attention: str, overrides: dict[str, Any]) -> NSAConfig | None:
    """The NSA configuration to run: the checkpoint's own if it was trained with NSA
    (gated), else the dense checkpoint adapted with `merged` and the given parameters."""
    if attention == "dense":
        if cfg.nsa is not None:
            raise ModelLoadError("This checkpoint was trained with NSA; it cannot run with dense attention.")
        return None
    if attention != "nsa":
        raise ModelLoadError(f"--attention must be 'nsa' or 'dense', got {attention!r}.")
    if cfg.nsa is not None:
        return dataclasses.replace(cfg.nsa, **overrides) if overrides else cfg.nsa
    return NSAConfig(**{"combine": Combine.MERGED, **overrides})


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory} has no *.safetensors weight files.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    directory = checkpoint_directory(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(directory)
    except (ValueError, OSError) as error:
        raise ModelLoadError(f"Could not load a tokenizer from {directory}: {error}") from error


def load_model(
    name_or_path: str,
    *,
    attention: str = "nsa",
    nsa_overrides: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CausalLM:
    """Errors are ModelLoadError, or ValueError for a bad NSA parameter, with a message
    meant for the user."""
    from transformers import AutoConfig

    directory = checkpoint_directory(name_or_path)
    try:
        hf_config = AutoConfig.from_pretrained(directory)
    except (ValueError, KeyError, OSError) as error:
        raise ModelLoadError(f"Could not read the model configuration in {directory}: {error}") from error
    cfg = model_config_from(hf_config)
    nsa = choose_nsa(cfg, attention, nsa_overrides or {})

    with torch.device("meta"):
        model = CausalLM(cfg, nsa)
    state = pack_checkpoint(read_state_dict(directory))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    expected = set(shapes)
    if cfg.tie_embeddings:
        expected.discard("lm_head.weight")
        state.pop("lm_head.weight", None)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - {k for k in state if k.endswith("rotary_emb.inv_freq")})
    if missing or unexpected:
        raise ModelLoadError(
            f"The checkpoint's weights do not match a {hf_config.model_type} decoder: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}."
        )
    wrong = [f"{k} {list(v.shape)}, expected {list(shapes[k])}"
             for k, v in state.items() if k in expected and v.shape != shapes[k]]  # fmt: skip
    if wrong:
        raise ModelLoadError(f"The checkpoint's weights do not fit its configuration: {', '.join(wrong[:3])}.")
    state = {k: v.to(dtype) for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = Rotary(cfg)  # its buffer was made on meta; rebuild it for real
    return model.to(device).eval()
