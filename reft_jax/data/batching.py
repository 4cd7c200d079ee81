"""Static-shape batches: length buckets, padding rows, optional packing, per-process rows, resumable order.

Batch format (numpy, right padding), B = per-process batch size, T = a bucket length:
    input_ids       int32   [B, T]  pad id after the example
    attention_mask  int32   [B, T]  1 on real tokens
    loss_mask       float32 [B, T]  1.0 where the TOKEN is a trained response token (EOS included; a
                                    multi-turn chat's user turns inside the response are 0); the CE uses
                                    logits[:, :-1] against input_ids[:, 1:] weighted by loss_mask[:, 1:]
    prompt_end      int32   [B]     index of the last prompt token (where the refusal feature is read)
    example_weight  float32 [B]     1 for an example, 0 for a padding row filling the last batch
    harmful         int32   [B]     1 harmful prompt, 0 harmless, -1 unknown or padding row
    index           int32   [B]     the example's position in its dataset, -1 for a padding row

Packing (`pack=True`) lays several examples in a row of the largest bucket length and adds
    segment_ids     int32   [B, T]  1, 2, ... per example in the row, 0 on padding
    positions       int32   [B, T]  position within its example (0 on padding)
and makes the per-example fields per segment, [B, S] with S = max_segments: prompt_end (position in
the row, 0 for an empty slot), example_weight (0 for an empty slot), harmful and index (-1 for an
empty slot). Attention must then be block-diagonal by segment_ids.

Order: epoch e is a permutation of the examples seeded by (seed, e) (or the dataset order when
shuffle=False), cut into global batches of `batch_size`; the last one is filled with padding rows.
Batch k of the run is a pure function of (seed, k), so a run resumes from its step index. Every
process builds the same global order; process i takes rows [i*B/P, (i+1)*B/P) of every global batch,
so the global batch is the same whatever the process count, and the bucket is chosen from the longest
example of the GLOBAL batch, so every process pads to the same T.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized

import jax
import numpy as np

from reft_jax.data.tokenization import TokenizedDataset
from reft_jax.errors import ConfigError

# One batch in the format above: numpy arrays on the host, jax arrays once placed on the devices.
Batch = dict[str, np.ndarray | jax.Array]


def process_slice(num_examples: int | Sized, process_index: int, process_count: int) -> slice:
    """The contiguous part of `num_examples` (a count or anything with a length) that process
    `process_index` reads: the parts of all processes are disjoint, cover everything, and differ in size
    by at most one. For passes where the order does not matter (scoring, evaluation); training batches
    come from `Batches`, whose per-process rows also partition the data."""
    num_examples = len(num_examples) if hasattr(num_examples, "__len__") else int(num_examples)
    if not 0 <= process_index < process_count:
        raise ConfigError(f"distributed.process_id: {process_index} is not in [0, {process_count})")
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return slice(start, start + base + (process_index < extra))


def pick_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n tokens."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"{n} tokens do not fit the largest bucket {max(buckets)}")


def make_batch(ds: TokenizedDataset, rows: Sequence[int], length: int) -> Batch:
    """One row per entry of `rows` (a position in ds, or -1 for a padding row), padded to `length`."""
    b = len(rows)
    batch = _empty(b, length, ds.pad_id)
    batch.update(
        prompt_end=np.zeros([b], np.int32),
        example_weight=np.zeros([b], np.float32),
        harmful=np.full([b], -1, np.int32),
        index=np.full([b], -1, np.int32),
    )
    for row, i in enumerate(rows):
        if i < 0:
            continue
        _place(batch, row, 0, ds, i)
        batch["prompt_end"][row] = len(ds.prompt_ids[i]) - 1
        batch["example_weight"][row] = 1.0
        batch["harmful"][row] = ds.harmful[i]
        batch["index"][row] = ds.index[i]
    return batch


def pack_rows(lengths: np.ndarray, order: Sequence[int], length: int, max_segments: int) -> list[list[int]]:
    """Greedy next-fit packing in `order`: an example goes into the current row if it fits (in tokens
    and segments), else starts a new row. Keeps the order, so it stays a pure function of the seed."""
    rows: list[list[int]] = []
    used = length + 1  # forces a new row for the first example
    for i in order:
        n = int(lengths[i])
        if used + n > length or len(rows[-1]) >= max_segments:
            rows.append([])
            used = 0
        rows[-1].append(int(i))
        used += n
    return rows


def make_packed_batch(ds: TokenizedDataset, rows: Sequence[Sequence[int]], length: int, max_segments: int) -> Batch:
    """One row per entry of `rows` (a list of positions in ds; empty for a padding row)."""
    b, s = len(rows), max_segments
    batch = _empty(b, length, ds.pad_id)
    batch.update(
        segment_ids=np.zeros([b, length], np.int32),
        positions=np.zeros([b, length], np.int32),
        prompt_end=np.zeros([b, s], np.int32),
        example_weight=np.zeros([b, s], np.float32),
        harmful=np.full([b, s], -1, np.int32),
        index=np.full([b, s], -1, np.int32),
    )
    for row, members in enumerate(rows):
        start = 0
        for seg, i in enumerate(members):
            end = _place(batch, row, start, ds, i)
            batch["segment_ids"][row, start:end] = seg + 1
            batch["positions"][row, start:end] = np.arange(end - start)
            batch["prompt_end"][row, seg] = start + len(ds.prompt_ids[i]) - 1
            batch["example_weight"][row, seg] = 1.0
            batch["harmful"][row, seg] = ds.harmful[i]
            batch["index"][row, seg] = ds.index[i]
            start = end
    return batch


def _empty(b: int, length: int, pad_id: int) -> Batch:
    return dict(
        input_ids=np.full([b, length], pad_id, np.int32),
        attention_mask=np.zeros([b, length], np.int32),
        loss_mask=np.zeros([b, length], np.float32),
    )


def _place(batch: Batch, row: int, start: int, ds: TokenizedDataset, i: int) -> int:
    """Example i of ds at `start` of the row; returns where it ends."""
    p, r = ds.prompt_ids[i], ds.response_ids[i]
    mid, end = start + len(p), start + len(p) + len(r)
    batch["input_ids"][row, start:mid] = p
    batch["input_ids"][row, mid:end] = r
    batch["attention_mask"][row, start:end] = 1
    batch["loss_mask"][row, mid:end] = 1.0 if ds.response_weights is None else ds.response_weights[i]
    return end


class Batches:
    """Deterministic, resumable, per-process batches of a tokenized dataset (see the module docstring).

        batches = Batches(ds, batch_size=32, buckets=[64, 128, 256], seed=0)
        for step, batch in enumerate(batches.iterate(start_step), start_step): ...

    batch_size: the GLOBAL batch size; each process gets batch_size // process_count rows.
    num_epochs: None for an endless stream; else the stream ends after that many passes.
    """

    def __init__(
        self,
        ds: TokenizedDataset,
        batch_size: int,
        buckets: Sequence[int],
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
        pack: bool = False,
        max_segments: int = 16,
    ):
        if not buckets or min(buckets) < 1:
            raise ConfigError(f"data.buckets: {list(buckets)} should be a non-empty list of positive lengths")
        if batch_size < 1 or batch_size % process_count:
            raise ConfigError(f"batch_size: {batch_size} is not a positive multiple of the {process_count} processes")
        process_slice(0, process_index, process_count)  # validates the process index
        if len(ds) == 0:
            raise ConfigError("data: no examples to batch")
        if ds.lengths.max() > max(buckets):
            raise ConfigError(
                f"data.buckets: the largest bucket {max(buckets)} is shorter than the longest example "
                f"({ds.lengths.max()} tokens); tokenize with max_length = {max(buckets)}"
            )
        self.ds, self.batch_size, self.buckets = ds, batch_size, sorted(buckets)
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = batch_size // process_count
        self.pack, self.max_segments = pack, max_segments
        self._lengths = ds.lengths
        self._plans: dict[int, list[list[int]]] = {}

    # -- order ----------------------------------------------------------------------------------------

    def order(self, epoch: int) -> np.ndarray:
        """The example positions of an epoch, in the order they are batched."""
        if not self.shuffle:
            return np.arange(len(self.ds))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.ds))

    def _rows(self, epoch: int) -> list[list[int]]:
        """Global rows of an epoch: one example each, or packed examples."""
        if epoch not in self._plans:
            order = self.order(epoch)
            if self.pack:
                rows = pack_rows(self._lengths, order, self.buckets[-1], self.max_segments)
            else:
                rows = [[int(i)] for i in order]
            self._plans = {epoch: rows}  # one epoch cached: resuming walks epochs forward only
        return self._plans[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        if not self.pack:  # no need to build the order
            return -(-len(self.ds) // self.batch_size)
        return -(-len(self._rows(epoch)) // self.batch_size)

    @property
    def num_steps(self) -> int | None:
        if self.num_epochs is None:
            return None
        return sum(self.steps_in_epoch(e) for e in range(self.num_epochs))

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of a global step."""
        if not self.pack:
            return divmod(step, self.steps_in_epoch(0))
        epoch = 0
        while step >= (n := self.steps_in_epoch(epoch)):
            step -= n
            epoch += 1
        return epoch, step

    def global_rows(self, step: int) -> list[list[int]]:
        """The rows of the GLOBAL batch at `step` (empty lists are padding rows)."""
        epoch, k = self.locate(step)
        rows = self._rows(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        return rows + [[]] * (self.batch_size - len(rows))

    def process_indices(self, epoch: int) -> np.ndarray:
        """Positions of the examples this process reads in an epoch (disjoint across processes)."""
        out = []
        for k in range(self.steps_in_epoch(epoch)):
            rows = self._rows(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
            lo = self.process_index * self.local_batch_size
            out += [i for row in rows[lo : lo + self.local_batch_size] for i in row]
        return np.array(out, np.int64)

    # -- batches --------------------------------------------------------------------------------------

    def batch(self, step: int) -> Batch:
        """This process's part of the global batch at `step`."""
        rows = self.global_rows(step)
        lo = self.process_index * self.local_batch_size
        mine = rows[lo : lo + self.local_batch_size]
        if self.pack:
            return make_packed_batch(self.ds, mine, self.buckets[-1], self.max_segments)
        longest = max((int(self._lengths[r[0]]) for r in rows if r), default=1)
        return make_batch(self.ds, [r[0] if r else -1 for r in mine], pick_length(longest, self.buckets))

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        step = start_step
        end = self.num_steps
        while end is None or step < end:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)
