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


class PrecisionClass(str, Enum):
    """What speculative verification may change against autoregressive NSA (DESIGN.md)."""

    EXACT = "exact"  # nothing but float rounding
    SHARED = "shared"  # groups of adjacent verifier queries share one ranking
    REUSE = "reuse"  # only refresh layers select; the layers after them reuse it


@dataclass(frozen=True)
class Precision:
    """A precision class and its knobs. `share_group` is C for `shared`; `refresh_layers`
    are the layers that compute a selection under `reuse` (the first layer always does)."""

    kind: PrecisionClass = PrecisionClass.EXACT
    share_group: int = 4
    refresh_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PrecisionClass(self.kind))
        _require(self.share_group >= 1, f"Precision.share_group must be at least 1, got {self.share_group}.")
        _require(all(layer >= 0 for layer in self.refresh_layers),
                 f"Precision.refresh_layers must be layer indices, got {self.refresh_layers}.")  # fmt: skip

    @property
    def query_share_group(self) -> int:
        """C for the kernels and the reference: 1 unless the class is `shared`."""
        return self.share_group if self.kind is PrecisionClass.SHARED else 1

    def refreshes(self, layer: int, first_layer: int) -> bool:
        """Whether `layer` computes its own selection (the first layer of a pass always does)."""
        return self.kind is not PrecisionClass.REUSE or layer == first_layer or layer in self.refresh_layers

    @staticmethod
    def every(num_layers: int, period: int) -> tuple[int, ...]:
        """Refresh layers 0, period, 2·period, …"""
        _require(period >= 1, f"The refresh period must be at least 1, got {period}.")
        return tuple(range(0, num_layers, period))


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
class StepVariant:
    """How the target's step of one shape runs where a profile found a better way than
    the defaults (`orchestrate/profile.py`)."""

    query_group: int | None = None  # C, verifier queries per sparse-attention program; None: the kernel's rule
    exact: bool = False  # exact selection although the precision class allows less: it was as fast

    def __str__(self) -> str:
        return ", ".join(([f"C={self.query_group}"] if self.query_group else []) + (["exact"] if self.exact else []))


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
