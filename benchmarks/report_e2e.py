"""The docs' report of an `e2e_spec.py` run: its JSON turned into the table and plot that
`specsa bench` writes (throughput against context, one line per strategy, a panel per
batch size), with the run's own GPU, versions and date.

    python benchmarks/report_e2e.py benchmarks/results/h100/e2e_spec_1b.json --out docs/results/e2e_spec_1b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specsa.orchestrate.bench import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="e2e_spec.py JSON files (rows of one model)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = [json.loads(Path(path).read_text()) for path in args.results]
    rows = [{**row, "speedup": row["speedup_vs_ar_nsa"]} for run in runs for row in run["rows"] if "tokens_per_s" in row]
    first = runs[0]
    model = rows[0]["model"]
    title = (f"{model}, RANDOM weights, ORACLE drafter at set acceptance rates ({first['gpu']}, CUDA graphs, "
             f"bf16): decode tokens/s by strategy; speed-ups over autoregressive NSA")  # fmt: skip
    meta = {"title": title, "sources": args.results, "gpu": first["gpu"], "torch": first["torch"],
            "triton": first["triton"], "python": first.get("python", "not recorded"), "date": first["date"],
            "commands": [run["command"] for run in runs]}  # fmt: skip
    write_report(rows, meta, Path(args.out))


if __name__ == "__main__":
    main()
