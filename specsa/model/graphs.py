"""CUDA graphs for the target's fixed-shape steps: decode (T = 1) and uniform verification
(T = γ+1 tokens for every sequence).

A step's launches are recorded once per (batch bucket, T) and replayed; a batch is padded
to its bucket with rows that write to the cache's scratch slot. Only device work is
captured: the host reserves pages (`cache.step`) and copies the step's positions into the
graph's static inputs before each replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specsa.cache import PagedKVCache, StepBatch, step_positions
from specsa.config import StepVariant
from specsa.model.decoder import CausalLM

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    bucket: int  # sequences, the real ones first
    # [bucket·T] token ids, [bucket·T] token slots, [bucket·T] positions, [bucket] sequence
    # slots, [bucket] lengths after the step: the static inputs, int64 on the device …
    inputs: Tensor
    staged: Tensor  # … and their pinned host twin, copied in one transfer before each replay
    logits: Tensor  # [bucket·T, V] static output


class StepGraphs:
    def __init__(self, model: CausalLM, cache: PagedKVCache,
                 variants: dict[tuple[int, int], StepVariant] | None = None, **run):  # fmt: skip
        """`variants`: (batch bucket, T) -> how a step of that shape runs (from a profile;
        the defaults elsewhere). `run`: options of `CausalLM.run` every step is captured
        with (a self drafter's cheaper NSA and layers)."""
        if not model.lm_head.weight.is_cuda:
            raise ValueError("CUDA graphs need the model on a CUDA device; run eagerly on the CPU.")
        self.model, self.cache, self.run_options = model, cache, run
        self.variants = variants or {}
        self.pool = torch.cuda.graph_pool_handle()
        self.captured: dict[tuple[int, int], _Captured] = {}

    def logits(self, token_ids: Tensor | list[int], slots: list[int], query_len: int) -> Tensor:
        """Append query_len tokens to each sequence (token_ids [B·T], on the host or already
        on the device) and return the logits [B·T, V], as model.logits(model(...)) would."""
        num_seqs, rows = len(slots), len(slots) * query_len
        captured = self.prepare(num_seqs, query_len)
        bucket = captured.bucket
        starts = self.cache.reserve(slots, [query_len] * num_seqs)
        # Rows past the real sequences: sequences of query_len tokens in the scratch slot.
        padding = bucket - num_seqs
        slots = slots + [self.cache.scratch_slot] * padding
        token_slots, positions, seq_lens = step_positions(slots, starts + [0] * padding, [query_len] * bucket)
        host = token_slots + positions + slots + seq_lens
        on_host = isinstance(token_ids, list)
        if on_host:
            host = token_ids + [0] * (bucket * query_len - rows) + host
        first = len(captured.inputs) - len(host)
        captured.staged.numpy()[first:] = host  # numpy reads a list ~8x faster than torch.tensor
        # Blocking, so `staged` is free again on return; the device is idle between steps
        # anyway, except while a model drafter chains its steps.
        captured.inputs[first:].copy_(captured.staged[first:])
        if not on_host:
            captured.inputs[:rows] = token_ids
        captured.graph.replay()
        return captured.logits[:rows]

    def supports(self, num_seqs: int, query_len: int) -> bool:
        """Whether a step of this shape can be captured (others run eagerly)."""
        return num_seqs <= BATCH_BUCKETS[-1] and query_len <= self.cache.page_size

    def prepare(self, num_seqs: int, query_len: int) -> _Captured:
        """The graph for this step shape, captured now if it is not yet (a one-time cost
        worth paying before a timed decode loop starts)."""
        bucket = next((b for b in BATCH_BUCKETS if b >= num_seqs), None)
        if bucket is None:
            raise ValueError(f"A captured step takes at most {BATCH_BUCKETS[-1]} sequences, got {num_seqs}.")
        return self.captured.get((bucket, query_len)) or self._capture(bucket, query_len)

    def prepare_all(self, num_seqs: int, query_lens) -> None:
        """Every graph a loop starting with num_seqs sequences may replay (its batch shrinks
        as requests finish), so none is captured while a timed loop runs."""
        for bucket in BATCH_BUCKETS:
            for query_len in query_lens:
                if self.supports(bucket, query_len):
                    self.prepare(bucket, query_len)
            if bucket >= num_seqs:
                break

    def _batch(self, inputs: Tensor, bucket: int, query_len: int, variant: StepVariant) -> StepBatch:
        """The step as the captured forward pass reads it: views of the static inputs (the
        host lists are the scratch slot's; a captured step reads only the tensors)."""
        rows = bucket * query_len
        token_slots, positions, seq_slots, seq_lens = inputs[rows:].split([rows, rows, bucket, bucket])
        return StepBatch([self.cache.scratch_slot] * bucket, [0] * bucket, [query_len] * bucket, token_slots,
                         positions, seq_slots.int(), seq_lens.int(), query_group=variant.query_group)  # fmt: skip

    def _capture(self, bucket: int, query_len: int) -> _Captured:
        if query_len > self.cache.page_size:
            raise ValueError(f"A captured step appends at most {self.cache.page_size} tokens per sequence.")
        device = self.model.lm_head.weight.device
        rows = bucket * query_len
        variant = self.variants.get((bucket, query_len), StepVariant())
        run = dict(self.run_options, exact=variant.exact)
        # Until the first step writes them: a step of the scratch slot's (as padding rows are).
        scratch = [self.cache.scratch_slot] * bucket
        token_slots, positions, seq_lens = step_positions(scratch, [0] * bucket, [query_len] * bucket)
        inputs = torch.tensor([0] * rows + token_slots + positions + scratch + seq_lens, device=device)
        token_ids = inputs[:rows]
        side = torch.cuda.Stream()  # warm-up (Triton compiles) off the capturing stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            batch = self._batch(inputs, bucket, query_len, variant)
            self.model.logits(self.model.run(token_ids, batch, self.cache, **run))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            batch = self._batch(inputs, bucket, query_len, variant)
            logits = self.model.logits(self.model.run(token_ids, batch, self.cache, **run))
        graph.replay()  # the first launch uploads the graph (hundreds of nodes): pay it here, not in a timed step
        staged = torch.empty_like(inputs, device="cpu").pin_memory()
        captured = _Captured(graph, bucket, inputs, staged, logits)
        self.captured[(bucket, query_len)] = captured
        return captured
