"""Dataset preparation: nanoGPT's splits and counts, JSON meta, clear one-line failures."""

import json
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from nanoloop_jax.data import prepare
from nanoloop_jax.data.batches import BatchSampler, DataError
from nanoloop_jax.data.tokenizer import gpt2_encoding, load_tokenizer

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def enc():
    """tiktoken's gpt2 encoding, or a skip when its files can be neither found nor downloaded."""
    try:
        return gpt2_encoding()
    except DataError as e:
        pytest.skip(f"tiktoken gpt2 files unavailable offline: {e}")


@pytest.fixture
def text_file(tmp_path, shakespeare_text) -> pathlib.Path:
    path = tmp_path / "input.txt"
    path.write_text(shakespeare_text)
    return path


def read_bin(path: pathlib.Path) -> list[int]:
    return np.fromfile(path, dtype=np.uint16).tolist()


def test_shakespeare_char(tmp_path, text_file, shakespeare_text, capsys):
    out = tmp_path / "shakespeare_char"
    counts = prepare.prepare_shakespeare_char(out, text_file)
    n = len(shakespeare_text)
    assert counts["train_tokens"] == int(n * 0.9) and counts["val_tokens"] == n - int(n * 0.9)
    assert "vocab size: " in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())  # plain JSON; no pickle is written at all
    assert not (out / "meta.pkl").exists()
    assert meta["vocab_size"] == len(set(shakespeare_text)) == counts["vocab_size"]
    assert "".join(meta["itos"][str(i)] for i in range(meta["vocab_size"])) == "".join(sorted(set(shakespeare_text)))
    tok = load_tokenizer(out)
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    assert tok.decode(train) + tok.decode(val) == shakespeare_text
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no .tmp left


def test_shakespeare_bpe(tmp_path, text_file, shakespeare_text, enc):
    out = tmp_path / "shakespeare"
    counts = prepare.prepare_shakespeare(out, text_file)
    cut = int(len(shakespeare_text) * 0.9)  # nanoGPT splits the text, then tokenizes each part
    assert read_bin(out / "train.bin") == enc.encode_ordinary(shakespeare_text[:cut])
    assert counts["val_tokens"] == len(enc.encode_ordinary(shakespeare_text[cut:]))
    assert json.loads((out / "meta.json").read_text()) == {"tokenizer": "gpt2", "vocab_size": 50257}
    tok = load_tokenizer(out)
    assert tok.decode(read_bin(out / "train.bin") + read_bin(out / "val.bin")) == shakespeare_text


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_openwebtext_local_corpus(tmp_path, enc, kind):
    docs = [f"Document {i}: to be, or not to be{'!' * i}\nthat is the question {i * 7}." for i in range(40)]
    docs[3] = ""  # an empty document still gets its end-of-text token
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if kind == "txt":  # one file per document
        for i, doc in enumerate(docs):
            (corpus / f"doc{i:02d}.txt").write_text(doc)
    else:  # one JSON object per line, the text under a non-default field
        lines = [json.dumps({"body": doc, "id": i}) for i, doc in enumerate(docs)]
        (corpus / "part0.jsonl").write_text("\n".join(lines[:25]) + "\n")
        (corpus / "part1.jsonl").write_text("\n".join(lines[25:]) + "\n")
    out = tmp_path / "owt"
    counts = prepare.prepare_openwebtext(
        out,
        dataset=str(corpus),
        num_proc=2,
        val_fraction=0.1,
        text_field="body" if kind == "jsonl" else "text",
        cache_dir=tmp_path / "hf_cache",
    )
    expected = sum(len(enc.encode_ordinary(doc)) + 1 for doc in docs)
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    assert counts["train_tokens"] + counts["val_tokens"] == len(train) + len(val) == expected
    assert val.count(enc.eot_token) == 4 and train.count(enc.eot_token) == 36  # ceil(0.1 * 40) held out
    # Every document comes back whole, each followed by end-of-text, across both splits.
    decoded = [enc.decode(ids) for ids in (train, val)]
    got = [doc for text in decoded for doc in text.split("<|endoftext|>")[:-1]]
    assert sorted(got) == sorted(docs)
    assert json.loads((out / "meta.json").read_text()) == {"tokenizer": "gpt2", "vocab_size": 50257}
    assert not list(out.glob("*.tmp"))


def test_openwebtext_missing_text_field(tmp_path, enc):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"body": "a"}\n{"body": "b"}\n')
    with pytest.raises(prepare.PrepareError, match=r"no column 'text' .*pass --text_field"):
        prepare.prepare_openwebtext(tmp_path / "out", dataset=str(corpus), num_proc=1, cache_dir=tmp_path / "hf")


def test_openwebtext_never_passes_trust_remote_code(monkeypatch, tmp_path, enc):
    import datasets

    seen = {}

    def fake_load_dataset(*args, **kwargs):
        seen.update(kwargs)
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(prepare.PrepareError, match="could not load dataset 'openwebtext'"):
        prepare.prepare_openwebtext(tmp_path / "out", num_proc=1)
    assert seen and "trust_remote_code" not in seen


def test_download_failure_names_the_env_var_and_the_prepare_command(monkeypatch, tmp_path):
    def offline(url, timeout):
        assert timeout is not None  # a hung connection must not hang prepare forever
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(prepare.PrepareError) as excinfo:
        prepare.prepare_shakespeare_char(tmp_path / "out")
    message = str(excinfo.value)
    assert message.startswith("could not download tiny-shakespeare (")
    assert "\n" not in message and "--input PATH" not in message  # train.py has no --input flag
    assert "NANOLOOP_SHAKESPEARE_PATH" in message
    assert message.endswith(
        f"run: python data/shakespeare_char/prepare.py --input=/path/to/input.txt --out_dir={tmp_path / 'out'}"
    )
    assert not (tmp_path / "out" / "input.txt").exists()


def test_download_is_used_and_kept(monkeypatch, tmp_path, shakespeare_text):
    calls = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return shakespeare_text.encode()

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: calls.append(url) or Response())
    out = tmp_path / "shakespeare_char"
    prepare.prepare_shakespeare_char(out)
    prepare.prepare_shakespeare_char(out)  # the second run reuses out/input.txt
    assert calls == [prepare.SHAKESPEARE_URL]
    assert (out / "input.txt").read_text() == shakespeare_text
    assert not list(out.glob("*.tmp"))


def test_ensure_prepared(monkeypatch, tmp_path, text_file):
    monkeypatch.setenv("NANOLOOP_SHAKESPEARE_PATH", str(text_file))
    data_dir = tmp_path / "data" / "shakespeare_char"
    prepare.ensure_prepared("shakespeare_char", data_dir)
    x, y = BatchSampler(data_dir, "train", 2, 16, seed=0).get(0)
    assert x.shape == (2, 16)
    mtime = (data_dir / "train.bin").stat().st_mtime_ns
    prepare.ensure_prepared("shakespeare_char", data_dir)  # already there: untouched
    assert (data_dir / "train.bin").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match=r"train\.bin not found; run: python data/openwebtext/prepare\.py$"):
        monkeypatch.chdir(tmp_path)
        prepare.ensure_prepared("openwebtext", pathlib.Path("data", "openwebtext"))  # the default location
    elsewhere = tmp_path / "data" / "addition4"
    with pytest.raises(DataError, match=rf"not found; run: python data/addition/prepare\.py --out_dir={elsewhere} "):
        prepare.ensure_prepared("addition", elsewhere)


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    script = REPO_ROOT / "data" / name / "prepare.py"
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_char_script(tmp_path, text_file, shakespeare_text):
    out = tmp_path / "out"
    result = run_script("shakespeare_char", "--input", str(text_file), "--out_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert f"train has {int(len(shakespeare_text) * 0.9):,} tokens" in result.stdout
    assert (out / "train.bin").stat().st_size == 2 * int(len(shakespeare_text) * 0.9)


def test_script_bad_input_is_one_line_exit_1(tmp_path):
    result = run_script("shakespeare_char", "--input", str(tmp_path / "nope.txt"), "--out_dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "nope.txt not found" in result.stderr
