"""Next-token agreement of NSA-adapted vs dense attention on real text.

A dense checkpoint runs NSA without training (`merged`, mean-pooled compression). This
measures how often its greedy next token equals the dense model's, at positions past the
NSA budget (n·l' tokens) where the selection is really sparse, on a long public-domain
text every Python install has: the standard library's own source.

    python benchmarks/nsa_agreement.py --tokens 4096 --out benchmarks/results/cpu/nsa_agreement_smollm2.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import time

import torch

from specsa.config import NSAConfig
from specsa.model.loader import load_model, load_tokenizer


def position_logits(model, ids: list[int], chunk: int) -> torch.Tensor:
    cache = model.new_cache(1, len(ids))
    hidden = [model(torch.tensor(ids[i : i + chunk]), [0], [len(ids[i : i + chunk])], cache) for i in range(0, len(ids), chunk)]
    return model.logits(torch.cat(hidden))  # [T, V]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import argparse as text_source  # a long, real, offline text

    tokenizer = load_tokenizer(args.model)
    ids = tokenizer.encode(inspect.getsource(text_source))[: args.tokens]
    nsa = NSAConfig()
    budget = nsa.num_selected * nsa.sel_block
    started = time.time()
    dense = position_logits(load_model(args.model, attention="dense"), ids, args.chunk)
    sparse = position_logits(load_model(args.model, attention="nsa"), ids, args.chunk)
    past = slice(budget, len(ids) - 1)  # positions whose context exceeds the NSA budget
    truth = torch.tensor(ids[1:])[past]
    log_dense, log_sparse = dense[past].log_softmax(-1), sparse[past].log_softmax(-1)
    result = {
        "model": args.model,
        "text": f"Python {platform.python_version()} Lib/argparse.py, first {len(ids)} tokens",
        "nsa": {k: str(v) if not isinstance(v, int) else v for k, v in vars(nsa).items()},
        "positions": int(truth.numel()),
        "first_position": budget,
        "greedy_agreement": float((dense[past].argmax(-1) == sparse[past].argmax(-1)).float().mean()),
        "mean_kl_dense_to_nsa": float((log_dense.exp() * (log_dense - log_sparse)).sum(-1).mean()),
        "next_token_accuracy_dense": float((dense[past].argmax(-1) == truth).float().mean()),
        "next_token_accuracy_nsa": float((sparse[past].argmax(-1) == truth).float().mean()),
        "mean_nll_dense": float(-log_dense.gather(-1, truth[:, None]).mean()),
        "mean_nll_nsa": float(-log_sparse.gather(-1, truth[:, None]).mean()),
        "seconds": round(time.time() - started, 1),
        "device": "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/nsa_agreement.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
