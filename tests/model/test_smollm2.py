"""The embedded default model, SmolLM2-135M-Instruct (fetched from PyPI once)."""

from __future__ import annotations

import json

import torch

from specsa.cli import main

PROMPT = "What is the capital of France? Answer in one sentence."


def test_greedy_nsa_generation_equals_transformers(gguf_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code = main(["generate", "--prompt", PROMPT, "--max-new-tokens", "40", "--attention", "nsa", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    ours = json.loads(out)

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids) :].tolist()
    assert ours["prompt_tokens"] == len(ids)
    assert ours["token_ids"] == expected
    assert "Paris" in ours["text"]
