"""Training batches: random token windows from `train.bin`/`val.bin`, deterministic per step.

The `.bin` files are flat uint16 token ids written by `data/<name>/prepare.py` (nanoGPT's format).
A batch is `batch_size` windows of `block_size + 1` tokens starting at uniform random offsets, like
nanoGPT's `get_batch`; x is the window without its last token, y without its first.

Unlike nanoGPT the offsets come from a generator seeded by (seed, split, step, process_index), not
from a global RNG stream. A run resumed at step k therefore sees exactly the batches an
uninterrupted run sees from step k, with no sampler state in the checkpoint, and each process of a
multi-host job draws its own windows for its share of the global batch.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import threading
from collections.abc import Iterator

import numpy as np

from nanoloop_jax.errors import UserError

# Part of the seed, so train and val batches at the same step are unrelated draws.
SPLIT_IDS = {"train": 0, "val": 1}
# Evaluation windows come from seed + this offset: unrelated to the training batches, the same in every eval.
EVAL_SEED_OFFSET = 1_000_003


class DataError(UserError):
    """A data problem the user can fix; the message is one line saying how."""


def data_dir_of(data) -> str | None:
    """The dataset directory a run config's `data` section (ConfigDict or its JSON dict) names, if any."""
    return data["data_dir"] or (os.path.join("data", data["dataset"]) if data["dataset"] else None)


def load_meta(data_dir: str | os.PathLike) -> dict | None:
    """The dataset's meta.json (vocab size, tokenizer, char tables), or None if there is none."""
    data_dir = pathlib.Path(data_dir)
    path = data_dir / "meta.json"
    if not path.exists():
        if (data_dir / "meta.pkl").exists():
            # A nanoGPT data dir: we never unpickle (pickle runs code), so ask for a re-prepare.
            raise DataError(
                f"{data_dir / 'meta.pkl'} is a pickle and is not loaded; "
                f"re-run: python data/{data_dir.name}/prepare.py (it writes meta.json)"
            )
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-run: python data/{data_dir.name}/prepare.py") from e


class BatchSampler:
    """Draws (x, y) int32 batches of random windows from one split, a pure function of the step."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        batch_size: int,
        block_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.path = pathlib.Path(data_dir) / f"{split}.bin"
        if not self.path.exists():
            name = pathlib.Path(data_dir).name
            raise DataError(f"{self.path} not found; run: python data/{name}/prepare.py")
        self.split = split
        self.mask_path = pathlib.Path(data_dir) / f"{split}_mask.bin"
        self.batch_size = batch_size  # per process: the global batch is batch_size * process_count
        self.block_size = block_size
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.num_tokens = self.path.stat().st_size // np.dtype(np.uint16).itemsize
        if self.num_tokens < block_size + 1:
            raise DataError(
                f"{self.path} has {self.num_tokens:,} tokens, fewer than block_size + 1 = {block_size + 1}; "
                "use a smaller block_size or more data"
            )

    def get(self, step: int) -> tuple[np.ndarray, ...]:
        """The batch for `step`: x, y of shape (batch_size, block_size), int32, y = x shifted by one.

        Datasets with a `<split>_mask.bin` (uint8, one flag per token: does this token count as a
        target?) also return the mask of y, so only e.g. answer tokens enter the loss.
        """
        # Each row r of the *global* batch has its own stream [seed, split, step, r]; this process
        # draws rows [process_index * batch_size, ...). So the global batch, and with it every loss,
        # is the same whether 1 process or 16 draw it, and a resumed run replays the same batches.
        first = self.process_index * self.batch_size
        split_id = SPLIT_IDS[self.split]
        # Starts in [0, len - block_size), as nanoGPT's torch.randint(len(data) - block_size).
        ix = np.array(
            [
                np.random.default_rng([self.seed, split_id, step, row]).integers(0, self.num_tokens - self.block_size)
                for row in range(first, first + self.batch_size)
            ]
        )
        # Re-open the memmap on every call, as nanoGPT does: a long-lived memmap keeps every page
        # it has touched mapped, so the process's resident memory grows towards the size of the
        # (possibly 17 GB) file. Opening costs one mmap call, nothing next to a training step.
        data = np.memmap(self.path, dtype=np.uint16, mode="r")
        offsets = ix[:, None] + np.arange(self.block_size + 1)
        window = data[offsets].astype(np.int32)
        del data
        if not self.mask_path.exists():
            return window[:, :-1], window[:, 1:]
        mask = np.memmap(self.mask_path, dtype=np.uint8, mode="r")[offsets[:, 1:]].astype(np.int32)
        return window[:, :-1], window[:, 1:], mask


_DONE = object()  # queue sentinel: the producer reached stop_step


class _Failure:
    """Carries an exception from the producer thread to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class AccumSampler:
    """(accum, B_local, T) batches: micro-step m of step s is the sampler's step s·accum + m."""

    def __init__(self, sampler: BatchSampler, accum: int) -> None:
        self.sampler, self.accum = sampler, accum

    def get(self, step: int) -> tuple[np.ndarray, ...]:
        parts = zip(*(self.sampler.get(step * self.accum + m) for m in range(self.accum)), strict=True)
        return tuple(np.stack(p) for p in parts)


class Prefetcher:
    """Yields (step, x, y[, mask]) from `start_step` on, with the next batches prepared on a background thread."""

    def __init__(
        self, sampler: BatchSampler, start_step: int = 0, ahead: int = 2, stop_step: int | None = None
    ) -> None:
        self.sampler = sampler
        self.step = start_step  # the step of the next batch handed to the consumer
        self.stop_step = stop_step  # exclusive; None means batches forever
        # Bounded, so the thread stays `ahead` batches in front instead of filling memory.
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._finished = False
        # Daemon: a consumer that forgets close() must not keep the interpreter alive at exit.
        self._thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True)
        self._thread.start()

    def _produce(self, step: int) -> None:
        """Thread body: put batches in step order until stopped, stop_step is reached or get() fails."""
        try:
            while not self._stop.is_set() and (self.stop_step is None or step < self.stop_step):
                if not self._put((step, *self.sampler.get(step))):
                    return
                step += 1
            self._put(_DONE)
        except BaseException as e:  # noqa: B036 -- anything, so the consumer never waits forever
            self._put(_Failure(e))

    def _put(self, item: object) -> bool:
        """Put, waking up now and then to see whether close() was called; False if it was."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[int, np.ndarray, np.ndarray]:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        self.step = item[0] + 1
        return item

    def close(self) -> None:
        """Stop the background thread and wait for it."""
        self._stop.set()
        self._finished = True
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
