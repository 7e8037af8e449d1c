"""Fidelity of the approximate precision classes (`shared`, `reuse`) against `exact`.

DESIGN.md: every approximate class is measured, never assumed. At each position of real
text (contexts past the NSA budget n·l' = 1024 tokens, where selection is really sparse)
the context is prefilled once (exact), then every class runs the same teacher-forced
verification step of the real next γ+1 tokens and is rolled back. Its next-token
distributions are compared with exact's at all γ+1 positions: greedy agreement and
KL(exact ‖ class). `exact` itself is run twice as a check that the rollback is clean.
Selection match is the mean fraction of exact's selected blocks the class also attends
(per layer, query and KV head): it shows how much a class changes what is attended.

    python benchmarks/precision_fidelity.py --out benchmarks/results/cpu/precision_fidelity_smollm2.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import torch

from specsa.config import Precision
from specsa.generate import prefill
from specsa.model.loader import load_model, load_tokenizer
from specsa.model.registry import DEFAULT_MODEL
from specsa.nsa.layout import to_bitmap


def classes(num_layers: int) -> dict[str, Precision]:
    return {
        "exact": Precision(),
        **{f"shared C={c}": Precision("shared", share_group=c) for c in (2, 4, 8)},
        **{f"reuse every {k}": Precision("reuse", refresh_layers=Precision.every(num_layers, k)) for k in (2, 4, 8)},
    }


def verify(model, cache, slot: int, tokens: list[int], precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """One verification step, rolled back: log-probabilities [T, V] and selections [layers, T, Hkv, n]."""
    model.precision = precision
    start = cache.lengths[slot]
    record: list = []
    hidden = model(torch.tensor(tokens), [slot], [len(tokens)], cache, record=record)
    cache.truncate(slot, start)
    return model.logits(hidden).log_softmax(-1), torch.stack([per_sequence[0] for per_sequence in record])


def selection_match(selected: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over layers, queries and heads of |S ∩ S_exact| / |S_exact|."""
    num_blocks = int(max(selected.max(), exact.max())) + 1
    mine = to_bitmap(selected.flatten(0, 1), num_blocks)  # [layers·T, H, Nb]
    ref = to_bitmap(exact.flatten(0, 1), num_blocks)
    return float(((mine & ref).sum(-1) / ref.sum(-1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--gamma", type=int, default=7, help="draft length: γ+1 tokens are verified per step")
    parser.add_argument("--texts", default="argparse,typing", help="standard-library modules to read")
    parser.add_argument("--first", type=int, default=1536, help="first context length")
    parser.add_argument("--last", type=int, default=4088, help="last context length (at most)")
    parser.add_argument("--step", type=int, default=200, help="distance between context lengths")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = load_model(args.model, attention="nsa", dtype=torch.float32, device="cpu")
    model.use_kernels = False
    tokenizer = load_tokenizer(args.model)
    budget = model.nsa.num_selected * model.nsa.sel_block
    if args.first <= budget:
        parser.error(f"--first must exceed the NSA budget of {budget} tokens, or no class changes anything.")
    precisions = classes(model.config.num_layers)
    contexts = list(range(args.first, args.last + 1, args.step))
    kl = {name: [] for name in precisions}  # per class: [T] tensors, one per position
    agree = {name: [] for name in precisions}
    match = {name: [] for name in precisions}

    started = time.time()
    for text in args.texts.split(","):
        ids = tokenizer.encode(inspect.getsource(__import__(text)))
        if contexts[-1] + args.gamma + 1 > len(ids):
            parser.error(f"Lib/{text}.py has {len(ids)} tokens, fewer than --last + γ + 1.")
        cache = model.new_cache(1, contexts[-1] + args.gamma + 1)
        slot = cache.allocate()
        for context in contexts:
            prefill(model, cache, slot, ids[cache.lengths[slot] : context], chunk=args.chunk)
            tokens = ids[context : context + args.gamma + 1]
            exact_logp, exact_sel = verify(model, cache, slot, tokens, Precision())
            for name, precision in precisions.items():
                logp, sel = verify(model, cache, slot, tokens, precision)
                kl[name].append((exact_logp.exp() * (exact_logp - logp)).sum(-1))
                agree[name].append((exact_logp.argmax(-1) == logp.argmax(-1)).float())
                match[name].append(selection_match(sel, exact_sel))
            print(f"Lib/{text}.py context {context} ({time.time() - started:.0f} s)", flush=True)

    results = {
        name: {
            "greedy_agreement": float(torch.cat(agree[name]).mean()),
            "mean_kl_exact_to_class": float(torch.cat(kl[name]).mean()),
            "max_kl_exact_to_class": float(torch.cat(kl[name]).max()),
            "selection_match": sum(match[name]) / len(match[name]),
            "positions": int(torch.cat(agree[name]).numel()),
            "precision": {"kind": p.kind.value, "share_group": p.query_share_group, "refresh_layers": list(p.refresh_layers)},
        }
        for name, p in precisions.items()
    }
    report = {
        "model": args.model,
        "texts": [f"Lib/{t}.py" for t in args.texts.split(",")],
        "contexts": contexts,
        "verified_tokens_per_step": args.gamma + 1,
        "nsa": {k: str(v) if not isinstance(v, int) else v for k, v in vars(model.nsa).items()},
        "classes": results,
        "seconds": round(time.time() - started, 1),
        "device": "cpu",
        "dtype": "float32",
        "torch": str(torch.__version__),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/precision_fidelity.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)

    print(f"\n{'class':16} {'agreement':>9} {'mean KL':>10} {'max KL':>9} {'sel. match':>10} {'positions':>9}")
    for name, r in results.items():
        print(f"{name:16} {r['greedy_agreement']:9.4f} {r['mean_kl_exact_to_class']:10.2e} "
              f"{r['max_kl_exact_to_class']:9.2e} {r['selection_match']:10.3f} {r['positions']:9}")  # fmt: skip


if __name__ == "__main__":
    main()
