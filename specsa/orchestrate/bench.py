"""`specsa bench`: autoregressive decoding vs fixed speculative strategies vs `auto`, over
context lengths and batch sizes, on real text that is available offline (the Python
standard library's own sources). Writes bench.json, bench.md and bench.png.

Strategies: `ar`; `ngram:γ` (prompt lookup drafting γ tokens); `auto` (prompt lookup, γ
chosen per step by the planner); `oracle:RATE:γ` (the target's own continuation, each
position right with probability RATE: for random-weight models, labelled as an oracle).
Every strategy's tokens are compared with the autoregressive run's (`token_match`).
"""

from __future__ import annotations

import json
import statistics
import platform
import sysconfig
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch


from specsa.generate import generate
from specsa.model.decoder import CausalLM
from specsa.orchestrate.profile import planner_for
from specsa.sampling import SamplingParams
from specsa.spec.engine import SpecGeneration, generate_speculative
from specsa.spec.ngram import NgramDrafter
from specsa.spec.oracle import OracleDrafter

SOURCES = ["argparse.py", "typing.py", "inspect.py", "subprocess.py", "dataclasses.py", "pathlib.py",
           "functools.py", "collections/__init__.py"]  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # "ar" | "ngram" | "auto" | "oracle"
    gamma: int = 0
    rate: float = 0.0


def parse_strategies(text: str, max_gamma: int) -> list[Strategy]:
    """'ar,ngram:4,auto,oracle:0.8:4' -> strategies; `auto` drafts at most max_gamma."""
    strategies = []
    for item in text.split(","):
        kind, *fields = item.strip().split(":")
        try:
            if kind == "ar" and not fields:
                strategies.append(Strategy("ar", "ar"))
            elif kind == "auto" and not fields:
                strategies.append(Strategy("auto", "auto", max_gamma))
            elif kind == "ngram" and len(fields) == 1:
                strategies.append(Strategy(item, "ngram", int(fields[0])))
            elif kind == "oracle" and len(fields) == 2:
                strategies.append(Strategy(f"ORACLE rate {fields[0]} γ={fields[1]}", "oracle", int(fields[1]), float(fields[0])))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"Unknown strategy {item!r}: use ar, auto, ngram:γ or oracle:RATE:γ.") from None
    if "ar" not in [s.kind for s in strategies]:
        strategies.insert(0, Strategy("ar", "ar"))  # the baseline every speed-up is measured against
    return strategies


def real_text_prompts(tokenizer, context: int, batch: int) -> list[list[int]]:
    """`batch` prompts of exactly `context` tokens of Python source, each from another file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    tokens = [tokenizer.encode((root / name).read_text(encoding="utf-8")) for name in SOURCES]
    prompts = []
    for i in range(batch):
        text = []
        for j in range(len(SOURCES) * 8):  # cycle through the files until there is enough text
            text += tokens[(i + j) % len(SOURCES)]
            if len(text) >= context:
                break
        prompts.append(text[:context])
    return prompts


def token_match(results, reference: list[list[int]]) -> float:
    """Fraction of generated tokens equal to the autoregressive run's, up to each sequence's
    first difference (1.0: identical; bf16 may round a near-tie differently)."""
    matched = 0
    for result, expected in zip(results, reference):
        for got, want in zip(result.token_ids, expected):
            if got != want:
                break
            matched += 1
    return matched / max(sum(map(len, reference)), 1)


def acceptance_report(results: list[SpecGeneration]) -> dict:
    """Over all sequences: the share of target passes that verified drafts, and the chance
    that each draft position was accepted once reached (what an oracle is set to), with
    the counts behind it so that points can be pooled."""
    reached = [sum(column) for column in zip(*(r.stats.reached_at for r in results))]
    accepted = [sum(column) for column in zip(*(r.stats.accepted_at for r in results))]
    passes = sum(r.stats.target_forwards for r in results)
    return {"drafting_share": reached[0] / passes if passes else 0.0, "target_passes": passes,
            "reached_at": reached, "accepted_at": accepted,
            "acceptance_by_position": [round(a / r, 4) if r else None for a, r in zip(accepted, reached)]}  # fmt: skip


def run_bench(model: CausalLM, tokenizer, strategies: list[Strategy], contexts: list[int], batches: list[int],
              max_new_tokens: int, repeats: int = 1) -> list[dict]:  # fmt: skip
    """A row per (context, batch, strategy). With `repeats` > 1 every strategy, the
    autoregressive baseline (always first) included, runs that many times in turn, and a
    row reports the median decode time (each run's in `decode_s_runs`): on a GPU the same
    tokens move by ±12% from run to run, more than the differences worth measuring."""
    params = SamplingParams(max_new_tokens=max_new_tokens)
    vocab = model.config.vocab_size
    rows = []
    for context in contexts:
        for batch in batches:
            prompts = real_text_prompts(tokenizer, context, batch)
            decode_s: dict[str, list[float]] = {strategy.name: [] for strategy in strategies}
            runs: dict[str, tuple] = {}  # strategy -> (generations, planner) of its last run
            reference = None
            for _ in range(repeats):
                for strategy in strategies:
                    planner = None
                    if strategy.kind == "ar":
                        results = generate(model, prompts, params, frozenset())
                        reference = reference or [g.token_ids for g in results]
                    else:
                        if strategy.kind == "oracle":
                            factory = lambda cache, g, s=strategy: OracleDrafter(prompts, reference, [s.rate], vocab)  # noqa: E731
                        else:
                            factory = lambda cache, g: NgramDrafter()  # noqa: E731
                        if strategy.kind == "auto":
                            planner = planner_for(model, context + max_new_tokens + strategy.gamma, batch, strategy.gamma)
                        results = generate_speculative(model, prompts, params, frozenset(), factory, strategy.gamma,
                                                       planner=planner)  # fmt: skip
                    decode_s[strategy.name].append(results[0].decode_s)
                    runs[strategy.name] = (results, planner)
            ar_s = statistics.median(decode_s[strategies[0].name])
            for strategy in strategies:
                results, planner = runs[strategy.name]
                median_s = statistics.median(decode_s[strategy.name])
                row = dict(context=context, batch=batch, strategy=strategy.name,
                           tokens_per_s=sum(len(r.token_ids) for r in results) / median_s, speedup=ar_s / median_s,
                           decode_s_runs=decode_s[strategy.name], token_match=token_match(results, reference))  # fmt: skip
                if strategy.kind != "ar":
                    row.update(acceptance_length=sum(r.stats.acceptance_length for r in results) / batch,
                               **acceptance_report(results))  # fmt: skip
                if planner is not None:
                    row.update(steps_by_gamma=planner.chosen, mean_step_ms_by_gamma=planner.loop.mean_step_ms(),
                               learnt_correction_ms_by_gamma=planner.loop.corrections_ms(),
                               query_group_by_batch_and_T={f"{b}:{t}": c for (b, t), c in planner.query_groups.items()})
                rows.append(row)
    return rows


def write_report(rows: list[dict], meta: dict, out: Path) -> None:
    """bench.json (rows + how they were made), bench.md (speed-ups) and bench.png. The
    versions and date are this machine's and today's unless `meta` names those of the
    run the rows came from."""
    out.mkdir(parents=True, exist_ok=True)
    versions = {"torch": torch.__version__, "python": platform.python_version(),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}  # fmt: skip
    (out / "bench.json").write_text(json.dumps({**versions, "date": time.strftime("%Y-%m-%d"), **meta, "rows": rows}, indent=1))
    points = sorted({(r["context"], r["batch"]) for r in rows})
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    value = {(r["strategy"], r["context"], r["batch"]): r for r in rows}
    lines = ["| strategy | " + " | ".join(f"{c} tok, batch {b}" for c, b in points) + " |",
             "|---|" + "---|" * len(points)]  # fmt: skip
    for name in names:  # a strategy not run at a point (a report pooled from several runs) shows "—"
        cells = [f"{value[name, c, b]['tokens_per_s']:.1f} tok/s ({value[name, c, b]['speedup']:.2f}×)"
                 if (name, c, b) in value else "—" for c, b in points]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "bench.md").write_text(f"{meta['title']}\n\n" + "\n".join(lines) + "\n")

    try:
        import matplotlib
    except ImportError:
        raise ValueError(f"bench.json and bench.md are in {out}; the plot needs matplotlib: "
                         "pip install 'specsa[bench]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({b for _, b in points})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches):
        contexts = sorted({c for c, b in points if b == batch})
        for name in names:
            ran = [c for c in contexts if (name, c, batch) in value]
            if ran:
                axis.plot(ran, [value[name, c, batch]["tokens_per_s"] for c in ran], marker="o", label=name)
        axis.set(xscale="log", xlabel="context (tokens)", ylabel="decode tokens/s", title=f"batch {batch}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(textwrap.fill(meta["title"], 70), fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "bench.png", dpi=120)
    plt.close(figure)
