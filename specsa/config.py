"""Configuration dataclasses. Every field is validated on construction, so a bad
value fails at the boundary with a sentence that names the field and the rule."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Combine(str, Enum):
    """How the three NSA branches become one output (DESIGN.md, "Combination")."""

    GATED = "gated"  # native NSA checkpoints: sigmoid gates per head and branch
    MERGED = "merged"  # training-free adaptation: one softmax over selected ∪ window


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class NSAConfig:
    """NSA hyper-parameters. Defaults are the NSA paper's."""

    cmp_block: int = 32  # l: tokens summarised by one compressed token
    cmp_stride: int = 16  # d: distance between the starts of compressed tokens
    sel_block: int = 64  # l': selection block (also the KV cache page size)
    num_selected: int = 16  # n: selected blocks per query, forced blocks included
    window: int = 512  # w: sliding window length
    combine: Combine = Combine.MERGED

    def __post_init__(self) -> None:
        for name in ("cmp_block", "cmp_stride", "sel_block", "num_selected", "window"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value > 0,
                f"NSAConfig.{name} must be a positive integer, got {value!r}.",
            )
        _require(
            self.cmp_block % self.cmp_stride == 0,
            f"NSAConfig.cmp_stride ({self.cmp_stride}) must divide cmp_block "
            f"({self.cmp_block}).",
        )
        _require(
            self.sel_block % self.cmp_stride == 0,
            f"NSAConfig.cmp_stride ({self.cmp_stride}) must divide sel_block "
            f"({self.sel_block}).",
        )
        _require(
            self.cmp_block <= self.sel_block,
            f"NSAConfig.cmp_block ({self.cmp_block}) must not exceed sel_block "
            f"({self.sel_block}).",
        )
        _require(
            self.num_selected >= 3,
            f"NSAConfig.num_selected must be at least 3 (block 0 and the two local "
            f"blocks are always selected), got {self.num_selected}.",
        )
        try:
            object.__setattr__(self, "combine", Combine(self.combine))
        except ValueError:
            raise ValueError(
                f"NSAConfig.combine must be one of {[c.value for c in Combine]}, "
                f"got {self.combine!r}."
            ) from None

    def num_cmp_tokens(self, length: int) -> int:
        """Compressed tokens complete within `length` raw tokens."""
        if length < self.cmp_block:
            return 0
        return (length - self.cmp_block) // self.cmp_stride + 1

    def num_sel_blocks(self, length: int) -> int:
        """Selection blocks touched by `length` raw tokens."""
        return -(-length // self.sel_block)


def check_heads(num_q_heads: int, num_kv_heads: int) -> int:
    """Validate a GQA head layout and return the group size G = Hq / Hkv."""
    _require(
        num_q_heads > 0 and num_kv_heads > 0,
        f"Head counts must be positive, got {num_q_heads} query and {num_kv_heads} KV heads.",
    )
    _require(
        num_q_heads % num_kv_heads == 0,
        f"The number of query heads ({num_q_heads}) must be a multiple of the number "
        f"of KV heads ({num_kv_heads}).",
    )
    return num_q_heads // num_kv_heads


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling (`rope_type: llama3`) or plain linear scaling."""

    kind: str  # "llama3" | "linear"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """A Llama/Qwen2-family decoder. Field names follow the common meaning, not one library."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    max_position: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    eos_token_ids: tuple[int, ...] = ()
    # NSA parts a native checkpoint carries; a dense checkpoint has neither.
    nsa: NSAConfig | None = None  # hyper-parameters fixed by the checkpoint (gated)
    cmp_mlp_hidden: int = 0  # learned compression φ; 0 means mean pooling

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "head_dim", "max_position"):
            value = getattr(self, name)
            _require(value > 0, f"ModelConfig.{name} must be positive, got {value}.")
        check_heads(self.num_q_heads, self.num_kv_heads)
