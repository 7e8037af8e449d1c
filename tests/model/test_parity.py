"""specsa's decoder against transformers on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import make_checkpoint

from specsa.config import NSAConfig
from specsa.model.loader import load_model

# NSA whose selection covers the whole (short) context: exactly dense attention.
COVERING = dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=8, window=16)
SPARSE = dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)


def our_logits(model, ids: list[int], chunk: int | None = None) -> torch.Tensor:
    """Logits at every position, prefilling in chunks of `chunk` tokens."""
    cache = model.new_cache(1, len(ids))
    chunk = chunk or len(ids)
    hidden = [model(torch.tensor(ids[i : i + chunk]), [0], [len(ids[i : i + chunk])], cache) for i in range(0, len(ids), chunk)]
    return model.logits(torch.cat(hidden))


def hf_logits(directory, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


ARCHS = {  # id -> (architecture, config overrides)
    "llama": ("llama", {}),
    "llama3-rope": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                    "rope_theta": 500000.0}),  # fmt: skip
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
}


@pytest.mark.parametrize("name", ARCHS)
def test_dense_and_covering_nsa_match_transformers(tmp_path, name):
    arch, overrides = ARCHS[name]
    directory = make_checkpoint(tmp_path, arch, **overrides)
    ids = torch.randint(2, 128, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = hf_logits(directory, ids)
    dense = our_logits(load_model(str(directory), attention="dense"), ids, chunk=37)
    torch.testing.assert_close(dense, reference, atol=2e-4, rtol=1e-4)
    nsa = our_logits(load_model(str(directory), attention="nsa", nsa_overrides=COVERING), ids, chunk=37)
    torch.testing.assert_close(nsa, reference, atol=2e-4, rtol=1e-4)


def test_sparse_nsa_differs_from_dense(tiny_llama):
    ids = torch.randint(2, 128, (200,), generator=torch.Generator().manual_seed(2)).tolist()
    dense = our_logits(load_model(str(tiny_llama), attention="dense"), ids)
    sparse = our_logits(load_model(str(tiny_llama), attention="nsa", nsa_overrides=SPARSE), ids)
    assert (dense[:48] - sparse[:48]).abs().max() < 1e-4  # within n·l' = 48 tokens NSA is dense
    assert (dense[100:] - sparse[100:]).abs().max() > 1e-3


def test_prefill_chunking_does_not_change_nsa(tiny_llama):
    model = load_model(str(tiny_llama), attention="nsa", nsa_overrides=SPARSE)
    ids = torch.randint(2, 128, (150,), generator=torch.Generator().manual_seed(3)).tolist()
    torch.testing.assert_close(our_logits(model, ids, chunk=7), our_logits(model, ids), atol=1e-5, rtol=1e-5)


def test_native_gated_checkpoint_loads_its_nsa_weights(tmp_path):
    """A checkpoint trained with NSA carries `nsa` in its config plus gate and compression weights."""
    import json

    from safetensors.torch import load_file, save_file

    directory = make_checkpoint(tmp_path, "llama")
    config = json.loads((directory / "config.json").read_text())
    config["nsa"] = {**SPARSE, "combine": "gated", "cmp_mlp_hidden": 32}
    (directory / "config.json").write_text(json.dumps(config))
    state = load_file(directory / "model.safetensors")
    generator = torch.Generator().manual_seed(4)
    for layer in range(2):
        prefix = f"model.layers.{layer}.self_attn."
        state[prefix + "g_proj.weight"] = torch.randn(12, 64, generator=generator) * 0.1
        for branch in ("compress_k", "compress_v"):
            state[f"{prefix}{branch}.pos"] = torch.randn(8, 16, generator=generator) * 0.1
            state[f"{prefix}{branch}.fc1.weight"] = torch.randn(32, 128, generator=generator) * 0.1
            state[f"{prefix}{branch}.fc1.bias"] = torch.zeros(32)
            state[f"{prefix}{branch}.fc2.weight"] = torch.randn(16, 32, generator=generator) * 0.1
            state[f"{prefix}{branch}.fc2.bias"] = torch.zeros(16)
    save_file(state, directory / "model.safetensors")

    model = load_model(str(directory))
    assert model.nsa == NSAConfig(**SPARSE, combine="gated")
    attn = model.model.layers[1].self_attn
    gate_rows = attn.qkv_proj.weight[-12:]  # stacked after q, k, v
    torch.testing.assert_close(gate_rows, state["model.layers.1.self_attn.g_proj.weight"])
    torch.testing.assert_close(attn.compress_v.fc2.weight, state["model.layers.1.self_attn.compress_v.fc2.weight"])
    ids = torch.randint(2, 128, (90,), generator=generator).tolist()
    logits = our_logits(model, ids, chunk=20)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, our_logits(model, ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="trained with NSA"):
        load_model(str(directory), attention="dense")
