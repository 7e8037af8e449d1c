"""`benchmarks/kernel_resources.py` compiles every kernel of an `nsa_paged` call for the
H100's architecture on this machine and reads back its registers and spills."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "kernel_resources.py"


RANKING = ["_cmp_partial_kernel", "_block_candidates_kernel"]
ATTENDING = ["_sparse_attention_kernel", "_merge_kernel"]


@pytest.mark.skipif(sys.platform != "linux", reason="Triton's wheel carries ptxas and cuobjdump on Linux")
@pytest.mark.parametrize(
    "batch, queries, kernels",
    [
        (2, 3, RANKING + ATTENDING),  # a program a query: the sparse kernel takes the top n itself
        (32, 8, RANKING + ["_select_kernel"] + ATTENDING),  # groups of 8 queries
    ],
    ids=["query-centric", "grouped"],
)
def test_every_kernel_of_a_verification_step_is_compiled_for_sm90(batch, queries, kernels):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    shape = ["--context", "4096", "--batch", str(batch), "--queries", str(queries), "--hq", "8", "--hkv", "2",
             "--d", "64"]  # fmt: skip
    run = subprocess.run([sys.executable, str(SCRIPT), *shape], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line.split() for line in run.stdout.splitlines()[1:]]
    assert [line[0] for line in lines] == kernels
    assert all(line[1].startswith("REG:") and line[2].startswith("STACK:") for line in lines)
