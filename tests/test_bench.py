"""`specsa bench` end to end on a tiny checkpoint: every strategy runs, matches the
autoregressive tokens, and the JSON, Markdown and PNG reports are written."""

from __future__ import annotations

import json

import pytest
import torch

from specsa.cli import main
from specsa.orchestrate.bench import default_num_prompts, parse_strategies

SPARSE_FLAGS = ["--nsa-cmp-block", "8", "--nsa-cmp-stride", "4", "--nsa-sel-block", "16", "--nsa-num-selected", "3",
                "--nsa-window", "16"]  # fmt: skip


def test_bench_writes_json_markdown_and_plot(tiny_llama, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["bench", "--model", str(tiny_llama), "--contexts", "40,70", "--batches", "1,2", "--max-new-tokens", "6",
                 "--strategies", "ngram:2,auto,oracle:0.9:3", "--num-prompts", "2", "--out", str(out), *SPARSE_FLAGS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * 4  # the AR baseline is always added
    assert {r["strategy"] for r in rows} == {"ar", "ngram:2", "auto", "ORACLE rate 0.9 γ=3"}
    assert all(r["token_match"] == 1.0 and r["tokens_per_s"] > 0 for r in rows)  # float32 on the CPU: identical
    auto = [r for r in rows if r["strategy"] == "auto"]
    assert [len(r["auto_by_group"]) for r in auto] == [2, 1, 2, 1]  # 2 prompts: 2 batches of 1, 1 batch of 2
    assert all(p["steps_by_gamma"].keys() == {"0"} for r in auto for p in r["auto_by_group"])  # no profile: plain
    oracle = [r for r in rows if r["strategy"].startswith("ORACLE")]
    assert all(r["drafting_share"] > 0 and len(r["acceptance_by_position"]) == 3 for r in oracle)
    assert "ORACLE" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_repeats_report_the_median_run(tiny_llama, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["bench", "--model", str(tiny_llama), "--contexts", "40", "--batches", "1", "--max-new-tokens", "4",
                 "--strategies", "ngram:2", "--repeats", "3", "--num-prompts", "1", "--out", str(out), *SPARSE_FLAGS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    for row in rows:
        assert len(row["decode_s_runs"]) == 3
        assert row["tokens_per_s"] == pytest.approx(4 / sorted(row["decode_s_runs"])[1])  # 4 new tokens, median run
    assert main(["bench", "--model", str(tiny_llama), "--repeats", "0", "--out", str(out)]) != 0
    assert "--repeats must be at least 1" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_llama), "--contexts", "40", "--batches", "2", "--num-prompts", "3",
                 "--out", str(out), *SPARSE_FLAGS]) != 0  # fmt: skip
    assert "--num-prompts 3 must be a multiple of every batch size" in capsys.readouterr().err


def test_bench_prefills_a_batch_once_for_every_strategy(tiny_llama, tmp_path, capsys, monkeypatch):
    """Strategies start from a prompt cache: each feeds only the prompts' last tokens again."""
    import specsa.generate

    fed = []  # tokens of each prefill call
    prefill = specsa.generate.prefill

    def counting_prefill(model, cache, slot, tokens, *args, **kwargs):
        fed.append(len(tokens))
        return prefill(model, cache, slot, tokens, *args, **kwargs)

    monkeypatch.setattr(specsa.generate, "prefill", counting_prefill)
    code = main(["bench", "--model", str(tiny_llama), "--contexts", "40", "--batches", "2", "--max-new-tokens", "4",
                 "--strategies", "ngram:2,oracle:0.9:3", "--repeats", "2", "--num-prompts", "2", "--out",
                 str(tmp_path / "report"), *SPARSE_FLAGS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(fed, reverse=True)[:2] == [40, 40] and fed.count(40) == 2  # the 2 prompts, once over both runs
    # 3 strategies (the AR baseline added) x 2 runs x 2 prompts, and run 2's prefill call finding them cached
    assert fed.count(1) == len(fed) - 2 == 3 * 2 * 2 + 2
    rows = json.loads((tmp_path / "report" / "bench.json").read_text())["rows"]
    assert all(r["token_match"] == 1.0 for r in rows)  # float32: what a fresh cache gives


def test_bench_with_a_draft_model(tiny_llama, tmp_path, capsys):
    """draft:γ drafts with the model; auto has it beside prompt lookup."""
    out = tmp_path / "report"
    code = main(["bench", "--model", str(tiny_llama), "--draft-model", str(tiny_llama), "--contexts", "40",
                 "--batches", "2", "--max-new-tokens", "5", "--strategies", "draft:3,auto", "--num-prompts", "2", "--out", str(out),
                 *SPARSE_FLAGS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = {r["strategy"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["draft:3"]["token_match"] == 1.0 and rows["draft:3"]["acceptance_by_position"][0] == 1.0  # itself
    assert rows["auto"]["token_match"] == 1.0  # lossless, whichever drafter it used
    if not torch.cuda.is_available():  # no profile on the CPU: plain decoding, the draft model never runs
        assert rows["auto"]["auto_by_group"][0]["draft_model_steps_by_gamma"] == {}
    assert "draft model" in (out / "bench.md").read_text()
    assert main(["bench", "--model", str(tiny_llama), "--strategies", "draft:3", "--contexts", "40", "--out", str(out)]) != 0
    assert "draft:γ strategy needs --draft-model" in capsys.readouterr().err


def test_strategy_errors_are_clear():
    with pytest.raises(ValueError, match="ngram:γ"):
        parse_strategies("ngram", 4)
    assert parse_strategies("auto", 6)[0].name == "ar" and parse_strategies("auto", 6)[1].gamma == 6


def test_report_marks_points_a_strategy_did_not_run(tmp_path):
    """A report pooled from several runs: a strategy missing at a point is a dash, not a crash."""
    from specsa.orchestrate.bench import write_report

    rows = [dict(strategy="ar", context=c, batch=1, tokens_per_s=10.0, speedup=1.0) for c in (100, 200)]
    rows.append(dict(strategy="auto", context=200, batch=1, tokens_per_s=20.0, speedup=2.0))
    write_report(rows, {"title": "pooled"}, tmp_path)
    table = (tmp_path / "bench.md").read_text()
    assert "| auto | — | 20.0 tok/s (2.00×) |" in table
    assert (tmp_path / "bench.png").exists()


def test_same_text_takes_the_steps_prompt_lookup_takes_on_the_autoregressive_text(tiny_llama, tmp_path, capsys):
    """On the CPU in float32 the speculative runs keep the autoregressive text, so lookup
    on that text (--same-text) must take exactly the steps real prompt lookup takes."""
    rows = {}
    for same_text in (False, True):
        out = tmp_path / str(same_text)
        flags = ["--same-text"] if same_text else []
        code = main(["bench", "--model", str(tiny_llama), "--contexts", "60", "--batches", "1,2", "--max-new-tokens", "24",
                     "--strategies", "ngram:3,auto", "--num-prompts", "2", "--out", str(out), *flags, *SPARSE_FLAGS])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        report = json.loads((out / "bench.json").read_text())
        assert report["same_text"] == same_text and ("SAME TEXT" in report["title"]) == same_text
        rows[same_text] = {(r["strategy"], r["batch"]): r for r in report["rows"]}
    for key, row in rows[True].items():
        assert row["token_match"] == 1.0
        if key[0] != "ar":
            assert row["reached_at"] == rows[False][key]["reached_at"] and row["accepted_at"] == rows[False][key]["accepted_at"]
    assert main(["bench", "--model", str(tiny_llama), "--draft-model", str(tiny_llama), "--same-text", "--contexts", "60",
                 "--out", str(tmp_path / "refused"), *SPARSE_FLAGS]) != 0  # fmt: skip
    assert "it does not judge a draft model" in capsys.readouterr().err


def test_a_point_decodes_at_least_eight_prompts_unless_told():
    assert default_num_prompts([1]) == 8
    assert default_num_prompts([1, 2, 8]) == 8
    assert default_num_prompts([3]) == 9  # every batch size divides it
    assert default_num_prompts([16]) == 16
