"""Dataset preparation: text -> flat uint16 `train.bin`/`val.bin` plus a JSON `meta.json`.

The logic behind `data/<name>/prepare.py`, with nanoGPT's semantics so token counts match its
README: tiny-shakespeare as characters (65 symbols) or GPT-2 BPE (301,966 / 36,059 tokens), and
openwebtext (or any text corpus) as GPT-2 BPE with an end-of-text token after every document.

Every output is written to `X.tmp` and renamed, and `train.bin` is written last, so an interrupted
run never leaves a `train.bin` that `ensure_prepared` would mistake for a finished dataset.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import sys
import urllib.request
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from nanoloop_jax.data.batches import DataError
from nanoloop_jax.data.tokenizer import gpt2_encoding
from nanoloop_jax.fileio import write_atomic

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DOWNLOAD_TIMEOUT_S = 60
# Local corpus files and the HF `datasets` builder that reads each kind.
LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class PrepareError(DataError):
    """Preparation failed for a reason the user can fix; the message is one line."""


def _one_line(error: BaseException) -> str:
    """An exception as a single line, for messages that must stay one line."""
    return " ".join(str(error).split()) or type(error).__name__


def _write_meta(out_dir: pathlib.Path, meta: dict) -> None:
    """meta.json: JSON rather than nanoGPT's meta.pkl, because unpickling can run arbitrary code."""
    write_atomic(out_dir / "meta.json", json.dumps(meta).encode())


def _write_splits(out_dir: pathlib.Path, train_ids: list[int], val_ids: list[int], meta: dict) -> None:
    """val.bin, meta.json, then train.bin: train.bin last marks the dataset complete."""
    write_atomic(out_dir / "val.bin", np.asarray(val_ids, dtype=np.uint16).tobytes())
    _write_meta(out_dir, meta)
    write_atomic(out_dir / "train.bin", np.asarray(train_ids, dtype=np.uint16).tobytes())


def prepare_command(dataset: str, data_dir: str | os.PathLike, *options: str) -> str:
    """`python data/<dataset>/prepare.py [options]`, with --out_dir when data_dir is not the script's default."""
    command = " ".join([f"python data/{dataset}/prepare.py", *options])
    if pathlib.Path(data_dir).resolve() != pathlib.Path("data", dataset).resolve():
        command += f" --out_dir={data_dir}"
    return command


def run_script(prepare: Callable[[], object], errors: tuple[type[Exception], ...] = (DataError,)) -> None:
    """app.run a data/<name>/prepare.py: prepare() reads the flags and writes the files.

    A flag mistake is absl's `FATAL Flags parsing error` line; a stray positional argument or one of
    `errors` (a mistake the user can fix: bad values, a missing input) is one `error:` line, exit status 1.
    """

    def main(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)  # absl would print the libraries' INFO logs (datasets, jax)
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {' '.join(argv[1:])} (every option is a --flag)")
        try:
            prepare()
        except errors as e:
            sys.exit(f"error: {e}")

    app.run(main)


def run_shakespeare_script(
    prepare: Callable[[pathlib.Path | str, str | None], object], default_out_dir: pathlib.Path
) -> None:
    """data/shakespeare*/prepare.py: flags --input (a local copy of the text) and --out_dir, then prepare()."""
    flags.disclaim_key_flags()  # the flags below are the calling script's: its --help lists them
    input_path = flags.DEFINE_string("input", None, "local tiny-shakespeare text (default: download)")
    out_dir = flags.DEFINE_string("out_dir", str(default_out_dir), "where to write (default: next to this script)")
    run_script(lambda: prepare(out_dir.value, input_path.value))


def read_shakespeare(
    out_dir: str | os.PathLike, input_path: str | os.PathLike | None = None, dataset: str = "shakespeare_char"
) -> str:
    """The tiny-shakespeare text: from input_path, else out_dir/input.txt, downloading it if missing."""
    if input_path is not None:
        path = pathlib.Path(input_path)
        if not path.is_file():
            raise PrepareError(f"input file {path} not found")
    else:
        path = pathlib.Path(out_dir) / "input.txt"
        if not path.exists():
            try:
                with urllib.request.urlopen(SHAKESPEARE_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    data = response.read()
            except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
                # train.py prepares on first use and has no --input flag: name both offline routes
                raise PrepareError(
                    f"could not download tiny-shakespeare ({_one_line(e)}); offline, point "
                    "NANOLOOP_SHAKESPEARE_PATH at a local copy of input.txt, or run: "
                    + prepare_command(dataset, out_dir, "--input=/path/to/input.txt")
                ) from e
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"could not read {path} ({_one_line(e)})") from e


def prepare_shakespeare_char(out_dir: str | os.PathLike, input_path: str | os.PathLike | None = None) -> dict[str, int]:
    """Character-level tiny-shakespeare (nanoGPT data/shakespeare_char): vocab = every char in the text."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = read_shakespeare(out_dir, input_path)
    print(f"length of dataset in characters: {len(data):,}")
    chars = sorted(set(data))
    vocab_size = len(chars)
    if vocab_size > np.iinfo(np.uint16).max + 1:
        raise PrepareError(f"{vocab_size:,} distinct characters do not fit the uint16 .bin format")
    print("all the unique characters:", "".join(chars))
    print(f"vocab size: {vocab_size:,}")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {str(i): ch for i, ch in enumerate(chars)}  # JSON keys are strings
    n = len(data)
    train_ids = [stoi[c] for c in data[: int(n * 0.9)]]
    val_ids = [stoi[c] for c in data[int(n * 0.9) :]]
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")
    _write_splits(out_dir, train_ids, val_ids, {"vocab_size": vocab_size, "itos": itos, "stoi": stoi})
    return {"train_tokens": len(train_ids), "val_tokens": len(val_ids), "vocab_size": vocab_size}


def prepare_shakespeare(out_dir: str | os.PathLike, input_path: str | os.PathLike | None = None) -> dict[str, int]:
    """GPT-2 BPE tiny-shakespeare (nanoGPT data/shakespeare): the first 90% of the text is train."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = read_shakespeare(out_dir, input_path, dataset="shakespeare")
    enc = gpt2_encoding()
    n = len(data)
    # Split the text, not the tokens, as nanoGPT does, so the counts match its README.
    train_ids = enc.encode_ordinary(data[: int(n * 0.9)])
    val_ids = enc.encode_ordinary(data[int(n * 0.9) :])
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")
    _write_splits(out_dir, train_ids, val_ids, {"tokenizer": "gpt2", "vocab_size": enc.n_vocab})
    return {"train_tokens": len(train_ids), "val_tokens": len(val_ids), "vocab_size": enc.n_vocab}


def _tokenize_batch(batch: dict, text_field: str) -> dict[str, list]:
    """datasets.map body: GPT-2 ids of each document followed by end-of-text, and their count."""
    enc = gpt2_encoding()  # cached per process; map's workers inherit it when forked
    ids = [enc.encode_ordinary(text or "") + [enc.eot_token] for text in batch[text_field]]
    return {"ids": ids, "len": [len(x) for x in ids]}


def _load_corpus(dataset: str, num_proc: int, cache_dir: str | None):
    """The corpus as a datasets.Dataset: a hub name, or a local file/dir of .txt/.json/.jsonl/.parquet."""
    from datasets import load_dataset  # slow import, only needed here

    path = pathlib.Path(dataset)
    if not path.exists():
        # Hub datasets are data files only: trust_remote_code is never passed, so no repo code runs.
        try:
            loaded = load_dataset(dataset, num_proc=num_proc, cache_dir=cache_dir)
        except Exception as e:  # hub, network and format errors: all reported as one line
            raise PrepareError(f"could not load dataset {dataset!r} ({_one_line(e)})") from e
        if "train" in loaded:
            return loaded["train"]
        if len(loaded) == 1:
            return next(iter(loaded.values()))
        raise PrepareError(f"dataset {dataset!r} has splits {sorted(loaded)} and no 'train' split")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    files = [f for f in files if f.suffix in LOCAL_BUILDERS]
    builders = {LOCAL_BUILDERS[f.suffix] for f in files}
    if len(builders) != 1:
        kinds = "no" if not builders else "mixed"
        raise PrepareError(f"{path} has {kinds} corpus files; expected one kind of {sorted(LOCAL_BUILDERS)}")
    (builder,) = builders
    # One .txt file is one document (not one row per line), so each file ends with end-of-text.
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    data_files = {"train": [str(f) for f in files]}
    return load_dataset(builder, data_files=data_files, split="train", cache_dir=cache_dir, **kwargs)


def _write_memmap(dset, path: pathlib.Path) -> int:
    """Concatenate the tokenized documents into a uint16 memmap, in shards, as nanoGPT does."""
    from nanoloop_jax import progress

    arr_len = int(np.sum(dset.with_format("numpy")[:]["len"], dtype=np.uint64))
    tmp = path.with_name(path.name + ".tmp")
    arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(arr_len,))
    # Shards bound memory: one shard's ids are materialised at a time. No more shards than rows.
    total_batches = min(1024, len(dset))
    idx = 0
    for batch_idx in progress.bar(range(total_batches), desc=f"writing {path}"):
        shard = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
        arr_batch = np.concatenate(list(shard[:]["ids"]))
        arr[idx : idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    del arr
    os.replace(tmp, path)
    return arr_len


def prepare_openwebtext(
    out_dir: str | os.PathLike,
    dataset: str = "openwebtext",
    num_proc: int = max(1, (os.cpu_count() or 2) // 2),
    val_fraction: float = 0.0005,
    seed: int = 2357,
    text_field: str = "text",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """GPT-2 BPE of a document corpus (nanoGPT data/openwebtext), eot after each document."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = str(cache_dir) if cache_dir is not None else None
    enc = gpt2_encoding()  # fail fast, before the slow load, if the BPE files are unavailable
    corpus = _load_corpus(dataset, num_proc, cache_dir)
    if text_field not in corpus.column_names:
        raise PrepareError(
            f"{dataset} has no column {text_field!r} (columns: {corpus.column_names}); pass --text_field"
        )
    if len(corpus) < 2:
        raise PrepareError(f"{dataset} has {len(corpus)} documents; a train/val split needs at least 2")
    split_dataset = corpus.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    split_dataset["val"] = split_dataset.pop("test")  # nanoGPT's name for the held-out split
    tokenized = split_dataset.map(
        _tokenize_batch,
        batched=True,
        fn_kwargs={"text_field": text_field},
        remove_columns=corpus.column_names,
        desc="tokenizing the splits",
        num_proc=num_proc,
    )
    # val first and train last: train.bin's presence marks a finished dataset.
    counts = {"val_tokens": _write_memmap(tokenized["val"], out_dir / "val.bin")}
    _write_meta(out_dir, {"tokenizer": "gpt2", "vocab_size": enc.n_vocab})
    counts["train_tokens"] = _write_memmap(tokenized["train"], out_dir / "train.bin")
    for split in ("train", "val"):
        print(f"{split} has {counts[f'{split}_tokens']:,} tokens")
    return {**counts, "vocab_size": enc.n_vocab}


def ensure_prepared(dataset: str, data_dir: str | os.PathLike) -> None:
    """Prepare tiny-shakespeare on first use; for other datasets, say which command prepares them."""
    data_dir = pathlib.Path(data_dir)
    if (data_dir / "train.bin").exists():
        return
    prepare = {"shakespeare_char": prepare_shakespeare_char, "shakespeare": prepare_shakespeare}.get(dataset)
    if prepare is None:
        command = prepare_command(dataset, data_dir)
        if data_dir.resolve() != pathlib.Path("data", dataset).resolve():  # not the script's default output
            command += " (plus the options your config's docstring gives)"
        raise DataError(f"{data_dir / 'train.bin'} not found; run: {command}")
    # A local copy for offline machines and CI; otherwise prepare downloads the text.
    input_path = os.environ.get("NANOLOOP_SHAKESPEARE_PATH") or None
    source = input_path or "a download"
    print(f"{data_dir / 'train.bin'} not found; preparing {dataset} from {source}")
    prepare(data_dir, input_path)
