"""`specsa generate` end to end on a tiny checkpoint: output, JSON, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from specsa.cli import main

SPARSE_FLAGS = ["--nsa-cmp-block", "8", "--nsa-cmp-stride", "4", "--nsa-sel-block", "16", "--nsa-num-selected", "3",
                "--nsa-window", "16"]  # fmt: skip


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output(capsys, tiny_llama):
    prompt = " ".join(f"w{i % 100}" for i in range(80))
    code, out, _ = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", prompt, "--max-new-tokens", "5",
                       "--json", "--prefill-chunk", "32", *SPARSE_FLAGS)  # fmt: skip
    assert code == 0
    record = json.loads(out)
    assert record["prompt_tokens"] == 80 and record["generated_tokens"] == len(record["token_ids"]) <= 5
    for key in ("text", "prefill_s", "decode_s", "decode_tokens_per_s", "finish_reason"):
        assert key in record


def test_plain_output_and_batch_from_files(capsys, tiny_llama, tmp_path):
    (tmp_path / "p.txt").write_text("w1 w2 w3")
    code, out, err = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", "w5 w6", "--prompt-file",
                         str(tmp_path / "p.txt"), "--max-new-tokens", "3", "--attention", "dense")  # fmt: skip
    assert code == 0
    assert err.count("tok/s") == 2 and "dense" in err
    assert len(out.strip().splitlines()) >= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "   "], "empty"),
        ([], "Give a prompt"),
        (["--prompt", "w1", "--max-new-tokens", "2000"], "context of 1024"),
        (["--prompt", "w1", "--max-new-tokens", "0"], "max_new_tokens"),
        (["--prompt", "w1", "--nsa-cmp-stride", "5"], "cmp_stride"),
        (["--prompt", "w1", "--nsa-num-selected", "2"], "num_selected"),
        (["--prompt", "w1", "--device", "quantum"], "--device"),
        (["--prompt", "w1", "--device", "cuda:7"], "cuda"),
        (["--prompt-file", "/no/such/file"], "prompt file"),
        (["--prompt", "w1", "--spec", "ngram", "--num-speculative-tokens", "0"], "at least 1"),
        (["--prompt", "w1", "--spec", "ngram", "--draft-model", "x"], "used with --spec draft or auto"),
        (["--prompt", "w1", "--spec", "draft"], "needs --draft-model"),
        (["--prompt", "w1", "--spec", "self", "--attention", "dense"], "--attention nsa"),
        (["--prompt", "w1", "--spec", "self", "--self-draft-layers", "0-x"], "--self-draft-layers"),
        (["--prompt", "w1", "--spec", "self", "--self-draft-layers", "0-5"], "layers must lie"),
        (["--prompt", "w1", "--precision", "reuse", "--attention", "dense"], "--attention nsa"),
        (["--prompt", "w1", "--refresh-layers", "0,1"], "only used with --precision reuse"),
        (["--prompt", "w1", "--precision", "reuse", "--refresh-layers", "0-9"], "must name layers 0 … 1"),
        (["--prompt", "w1", "--precision", "shared", "--share-group", "0"], "share_group"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, tiny_llama, argv, message):
    code, out, err = run(capsys, "generate", "--model", str(tiny_llama), *argv)
    assert code == 2 and out == ""
    assert err.startswith("specsa: error:") and message in err and "Traceback" not in err


def test_unknown_model_path_and_unsupported_architecture(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "missing"), "--prompt", "hi")
    assert code == 2 and "No model at" in err
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "gpt2"), "--prompt", "hi")
    assert code == 2 and "'gpt2' is not supported" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "empty"), "--prompt", "hi")
    assert code == 2 and "neither a model directory" in err


def test_offline_without_a_cached_default_model_says_how_to_pass_a_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSA_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there: offline
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    code, _, err = run(capsys, "generate", "--prompt", "hi")
    assert code == 2 and "--model PATH" in err


def test_speculative_json_reports_acceptance(capsys, tiny_llama):
    prompt = " ".join(f"w{i % 10}" for i in range(80))
    code, out, err = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", prompt, "--max-new-tokens", "12",
                         "--json", "--spec", "draft", "--draft-model", str(tiny_llama), "--num-speculative-tokens", "3",
                         *SPARSE_FLAGS)  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["spec"] == "draft" and record["num_speculative_tokens"] == 3
    assert record["acceptance_length"] > 1 and len(record["acceptance_rate_by_position"]) == 3
    for key in ("draft_s", "verify_s", "drafted", "accepted"):
        assert key in record


@pytest.mark.parametrize("spec, drafted_at_most", [("auto", 8), ("ngram", 4)])
def test_the_draft_length_defaults_by_strategy(capsys, tiny_llama, spec, drafted_at_most):
    """`auto` verifies fewer drafts where they do not pay, so it may reach further than a
    fixed drafter, which always drafts its K."""
    code, out, err = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", "w1 w2 w1 w2", "--max-new-tokens",
                         "2", "--json", "--spec", spec, *SPARSE_FLAGS)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["num_speculative_tokens"] == drafted_at_most


def test_auto_with_a_draft_model_runs_and_reports_it(capsys, tiny_llama):
    """`auto` runs with the draft model ready beside prompt lookup. On the CPU (no profile:
    a step of T tokens costs T decodes) it decodes plainly and takes none of its steps."""
    prompt = " ".join(f"w{i % 10}" for i in range(80))
    code, out, err = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", prompt, "--max-new-tokens", "12",
                         "--json", "--draft-model", str(tiny_llama), *SPARSE_FLAGS)  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["spec"] == "auto" and "draft_model_steps_by_gamma" in record["auto"]
    if not torch.cuda.is_available():
        assert record["auto"]["draft_model_steps_by_gamma"] == {}
        assert record["auto"]["step_variant_by_batch_and_T"] == {}  # no profile on the CPU
        assert record["auto"]["steps_by_gamma"] == {"0": 11}  # the first token comes from the prefill


def test_draft_model_with_another_vocabulary_is_refused(capsys, tiny_llama, tmp_path):
    from conftest import make_checkpoint

    other = make_checkpoint(tmp_path, "llama", vocab_size=100)
    code, _, err = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", "w1 w2", "--spec", "draft",
                       "--draft-model", str(other))  # fmt: skip
    assert code == 2 and "vocabulary" in err


@pytest.mark.parametrize("precision", [["--precision", "shared", "--share-group", "2"],
                                       ["--precision", "reuse", "--refresh-layers", "0-1:2"]])  # fmt: skip
def test_approximate_precision_classes_run_and_are_reported(capsys, tiny_llama, precision):
    prompt = " ".join(f"w{i % 50}" for i in range(70))
    code, out, err = run(capsys, "generate", "--model", str(tiny_llama), "--prompt", prompt, "--max-new-tokens", "6",
                         "--json", "--spec", "ngram", *precision, *SPARSE_FLAGS)  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["precision"] == precision[1] and record["generated_tokens"] == 6


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU refusal")
@pytest.mark.parametrize("argv, message", [([], "CUDA device"), (["--contexts", "4k"], "comma-separated numbers")])
def test_profile_needs_a_gpu_and_numbers(capsys, tiny_llama, argv, message):
    code, _, err = run(capsys, "profile", "--model", str(tiny_llama), *argv)
    assert code == 2 and message in err


@pytest.fixture(scope="module")
def tiny_chat_model(tiny_llama, tmp_path_factory):
    """The tiny checkpoint with a chat template: turns joined as plain words."""
    import shutil

    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("chat")
    shutil.copytree(tiny_llama, directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("spec", ["off", "ngram"])
def test_chat_keeps_the_conversations_cache_between_turns(capsys, tiny_chat_model, tmp_path, monkeypatch, spec):
    import io

    document = " ".join(f"w{(i * 7) % 100 + 2}" for i in range(70))
    (tmp_path / "doc.txt").write_text(document)
    long_question = " ".join(f"w{i % 90 + 5}" for i in range(150))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"w3 w4\n\nw5 w6\n{long_question}\nw7\n"))
    code, out, err = run(capsys, "chat", "--model", str(tiny_chat_model), "--document", str(tmp_path / "doc.txt"),
                         "--max-new-tokens", "4", "--spec", spec, "--json", *SPARSE_FLAGS)  # fmt: skip
    assert code == 0, err
    first, second, third, fourth = map(json.loads, out.splitlines())
    assert first["prompt_tokens"] == 72 and first["cached_tokens"] == 0  # the document and the first question
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["generated_tokens"]
    assert second["cached_tokens"] >= first["prompt_tokens"]  # the document is not prefilled again
    assert third["cached_tokens"] == 0  # it outgrew the cache, which was made anew, twice its size
    assert fourth["cached_tokens"] >= third["prompt_tokens"]


def test_chat_without_a_chat_template_or_document_is_a_clear_error(capsys, tiny_llama, tmp_path):
    code, _, err = run(capsys, "chat", "--model", str(tiny_llama))
    assert code == 2 and "has no chat template; use `specsa generate`" in err
    code, _, err = run(capsys, "chat", "--model", str(tiny_llama), "--document", str(tmp_path / "missing.txt"))
    assert code == 2 and "Cannot read the document" in err
