"""BatchSampler and Prefetcher: deterministic per-step windows, correct shifts, clear errors."""

import json
import pathlib
import threading

import numpy as np
import pytest

from nanoloop_jax.data.batches import BatchSampler, DataError, Prefetcher, load_meta

N_TOKENS = 5_000  # tokens 0..N-1, so every window is a run of consecutive integers


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A data dir whose train.bin holds 0..N-1 and val.bin holds N-1..0."""
    d = tmp_path / "toy"
    d.mkdir()
    np.arange(N_TOKENS, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(N_TOKENS, dtype=np.uint16)[::-1].tofile(d / "val.bin")
    return d


def test_batch_is_window_and_shift(data_dir):
    x, y = BatchSampler(data_dir, "train", batch_size=8, block_size=16, seed=0).get(3)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == np.int32
    # Each row is data[i:i+T] with i in [0, N-T), and y is the same window one token later.
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(16))
    np.testing.assert_array_equal(y, x + 1)
    assert x[:, 0].min() >= 0 and x[:, 0].max() < N_TOKENS - 16


def test_same_step_same_batch_other_step_or_process_differs(data_dir):
    def batch(step, process_index=0, seed=0, split="train"):
        sampler = BatchSampler(data_dir, split, 4, 8, seed, process_index=process_index, process_count=2)
        return sampler.get(step)[0]

    # A fresh sampler (as after a restart) reproduces the batch exactly.
    np.testing.assert_array_equal(batch(7), batch(7))
    assert not np.array_equal(batch(7), batch(8))
    assert not np.array_equal(batch(7), batch(7, process_index=1))
    assert not np.array_equal(batch(7), batch(7, seed=1))
    # val reads its own file (N-1..0 here), so its windows count down.
    x, y = BatchSampler(data_dir, "val", 4, 8, seed=0).get(7)
    np.testing.assert_array_equal(x, x[:, :1] - np.arange(8))
    np.testing.assert_array_equal(y, x - 1)


def test_offsets_cover_exactly_the_valid_range(tmp_path):
    # len = T + 3: starts 0, 1, 2 are valid; 3 would need a target past the end.
    d = tmp_path / "tiny"
    d.mkdir()
    np.arange(11, dtype=np.uint16).tofile(d / "train.bin")
    sampler = BatchSampler(d, "train", batch_size=16, block_size=8, seed=0)
    starts = np.concatenate([sampler.get(s)[0][:, 0] for s in range(20)])
    assert set(starts.tolist()) == {0, 1, 2}


def test_data_of_exactly_block_size_plus_one(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    np.arange(9, dtype=np.uint16).tofile(d / "train.bin")
    x, y = BatchSampler(d, "train", batch_size=2, block_size=8, seed=0).get(0)
    np.testing.assert_array_equal(x, np.tile(np.arange(8), (2, 1)))
    np.testing.assert_array_equal(y, np.tile(np.arange(1, 9), (2, 1)))


def test_too_short_data_is_a_data_error(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    np.arange(8, dtype=np.uint16).tofile(d / "train.bin")
    with pytest.raises(DataError, match="fewer than block_size"):
        BatchSampler(d, "train", batch_size=2, block_size=8, seed=0)


def test_missing_bin_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError, match=r"not found; run: python data/openwebtext/prepare\.py$"):
        BatchSampler(tmp_path / "openwebtext", "train", 2, 8, 0)


def test_bad_split_and_process_index(data_dir):
    with pytest.raises(ValueError, match="split"):
        BatchSampler(data_dir, "test", 2, 8, 0)
    with pytest.raises(ValueError, match="process_index"):
        BatchSampler(data_dir, "train", 2, 8, 0, process_index=2, process_count=2)


def test_prefetcher_yields_what_get_returns(data_dir):
    sampler = BatchSampler(data_dir, "train", 4, 8, seed=5)
    with Prefetcher(sampler, start_step=10, ahead=2, stop_step=16) as prefetcher:
        got = list(prefetcher)
    assert [step for step, _, _ in got] == list(range(10, 16))
    for step, x, y in got:
        ex, ey = sampler.get(step)
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


def test_prefetcher_close_stops_the_thread(data_dir):
    before = threading.active_count()
    prefetcher = Prefetcher(BatchSampler(data_dir, "train", 2, 8, seed=0), start_step=0)
    assert next(prefetcher)[0] == 0 and next(prefetcher)[0] == 1
    prefetcher.close()  # the producer is blocked on a full queue; close must still end it
    assert not prefetcher._thread.is_alive()
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(prefetcher)


def test_prefetcher_reraises_sampler_errors(data_dir):
    class Failing(BatchSampler):
        def get(self, step):
            if step == 3:
                raise RuntimeError("disk on fire")
            return super().get(step)

    prefetcher = Prefetcher(Failing(data_dir, "train", 2, 8, seed=0), start_step=1)
    assert [next(prefetcher)[0], next(prefetcher)[0]] == [1, 2]
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(prefetcher)
    prefetcher.close()


def test_load_meta(tmp_path):
    assert load_meta(tmp_path) is None
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 3}))
    assert load_meta(tmp_path) == {"vocab_size": 3}
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_meta(tmp_path)


def test_nanogpt_meta_pkl_is_never_unpickled(tmp_path):
    (tmp_path / "meta.pkl").write_bytes(b"not even a pickle")
    with pytest.raises(DataError, match="meta.pkl is a pickle and is not loaded"):
        load_meta(tmp_path)


def test_mask_file_gives_the_mask_of_y(tmp_path):
    tokens = np.arange(200, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    (tokens % 3 == 0).astype(np.uint8).tofile(tmp_path / "train_mask.bin")
    x, y, mask = BatchSampler(tmp_path, "train", batch_size=4, block_size=8, seed=0).get(5)
    np.testing.assert_array_equal(mask, (y % 3 == 0).astype(np.int32))
    assert mask.shape == y.shape == x.shape
