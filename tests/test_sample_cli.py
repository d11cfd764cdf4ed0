"""sample.py end to end: a tiny checkpoint and char vocabulary, streaming, a nanoLOOP ckpt.pt, bad inputs."""

import functools
import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import tiny_config

from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.data.tokenizer import Tokenizer
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.model.looped import init_params

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyz"  # 35 characters
FIXTURE_PT = REPO_ROOT / "tests" / "fixtures" / "prc_inject_bptt" / "ckpt.pt"
TINY = tiny_config(vocab_size=40)  # padded past the 35 characters: ids 35..39 must never be sampled
SEPARATOR = "---------------"


def _write_meta(data_dir: pathlib.Path, chars: str) -> pathlib.Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return data_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(out_dir with a nanoloop-jax checkpoint, char-level data dir)."""
    root = tmp_path_factory.mktemp("sample")
    out_dir = root / "out"
    params = init_params(TINY, jax.random.PRNGKey(0))
    checkpoint.write_params_only(str(out_dir), TINY, params, step=3, best_val_loss=2.5, source={"test": "tiny"})
    return out_dir, _write_meta(root / "data", CHARS)


def _start(*flags: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "sample.py"), *flags],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict[str, subprocess.Popen]:
    """Every sample.py subprocess of this file, started together: most of their time is start-up and compiling."""
    out_dir, data_dir = tiny_run
    root = tmp_path_factory.mktemp("runs")
    common = [f"--out_dir={out_dir}", f"--data_dir={data_dir}"]
    prompt_file = root / "prompt.txt"
    prompt_file.write_text("to be, or not")
    procs = {
        "plain": _start(
            *common,
            "--start=hello there",
            "--num_samples=3",
            "--max_new_tokens=40",
            "--top_k=5",
            "--device=cpu",  # nanoLOOP's device/dtype/compile flags are accepted too
            "--dtype=float32",
            "--compile=True",
        ),
        "deep": _start(
            *common,
            f"--start=FILE:{prompt_file}",
            "--num_samples=2",
            "--max_new_tokens=20",
            "--n_loop=5",
            "--top_p=0.9",
            "--exit_threshold=0.5",
            "--seed=7",
        ),
        "empty": _start(*common, "--start=", "--num_samples=1", "--max_new_tokens=5", "--temperature=0"),
        "bad_chars": _start(*common, "--start=Hi Zorro #1"),
    }
    # the fixture's model has a 37-token vocabulary and names no dataset: give it 37 characters (no torch needed)
    data37 = _write_meta(root / "data37", CHARS + "0\t")
    procs["ckpt_pt"] = _start(
        f"--ckpt={FIXTURE_PT}", f"--data_dir={data37}", "--start=hi", "--num_samples=2", "--max_new_tokens=30"
    )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _samples(stdout: str) -> list[str]:
    parts = stdout.split(SEPARATOR + "\n")
    return [p[:-1] for p in parts[:-1]]  # each sample ends with the newline printed before the separator


def test_sample_py_end_to_end(runs):
    results = {name: _finish(runs[name]) for name in ("plain", "deep", "empty")}

    rc, out, err = results["plain"]
    assert rc == 0, err
    samples = _samples(out)
    assert len(samples) == 3 and out.endswith(SEPARATOR + "\n")
    for s in samples:
        assert s.startswith("hello there") and len(s) == len("hello there") + 40
        assert set(s) <= set(CHARS)  # decodable: the padded ids 35..39 were never drawn
    assert len(set(samples)) > 1  # the samples of one batch differ
    assert "loaded" in err and "char (35 tokens)" in err and "Traceback" not in err

    rc, out, err = results["deep"]
    assert rc == 0, err
    samples = _samples(out.split("mean loop iterations")[0])
    assert len(samples) == 2 and all(s.startswith("to be, or not") for s in samples)
    assert all(len(s) == len("to be, or not") + 20 for s in samples)
    mean_line = out.strip().splitlines()[-1]
    assert mean_line.startswith("mean loop iterations per token:") and mean_line.endswith("of n_loop 5")
    assert 1.0 <= float(mean_line.split(":")[1].split()[0]) <= 5.0

    rc, out, err = results["empty"]
    assert rc == 0, err
    (sample,) = _samples(out)
    assert sample.startswith("\n") and len(sample) == 1 + 5  # an empty prompt starts from a newline


def test_sample_py_reads_a_nanoloop_ckpt_pt(runs, tmp_path, capsys):
    rc, out, err = _finish(runs["ckpt_pt"])
    assert rc == 0, err
    samples = _samples(out)
    assert len(samples) == 2 and all(s.startswith("hi") and len(s) == 2 + 30 for s in samples)
    assert "(nanoLOOP)" in err
    # and a ckpt.pt found in --out_dir, the way nanoLOOP's own sample.py looks for it
    out_dir = tmp_path / "nanoloop_out"
    out_dir.mkdir()
    (out_dir / "ckpt.pt").write_bytes(FIXTURE_PT.read_bytes())
    data37 = _write_meta(tmp_path / "data37", CHARS + "0\t")
    assert _main(f"--out_dir={out_dir}", f"--data_dir={data37}", "--num_samples=1", "--max_new_tokens=10") == 0
    (sample,) = _samples(capsys.readouterr().out)
    assert sample.startswith("\n") and len(sample) == 1 + 10


def test_bad_inputs_are_one_line_and_exit_1(runs, tiny_run, tmp_path, capsys):
    rc, out, err = _finish(runs["bad_chars"])  # the real process: exit code 1, one line, no traceback
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.strip() == (
        "error: characters not in the model's vocabulary: 'H', 'Z', '#', '1' "
        "(the 35-character vocabulary comes from the dataset's meta.json)"
    )
    out_dir, data_dir = tiny_run
    common = [f"--out_dir={out_dir}", f"--data_dir={data_dir}"]
    cases = {
        "--max_new_tokens must be positive, got 0": [*common, "--max_new_tokens=0"],
        "--top_k=500 is larger than the 35-token vocabulary": [*common, "--top_k=500"],
        "--top_p must be in (0, 1], got 1.5": [*common, "--top_p=1.5"],
        "--temperature must be >= 0": [*common, "--temperature=-1"],
        "--num_samples must be positive": [*common, "--num_samples=0"],
        "no checkpoint in": [f"--out_dir={tmp_path / 'missing'}"],
        "missing.pt does not exist": [f"--ckpt={tmp_path / 'missing.pt'}"],
        "cannot read the prompt file": [*common, f"--start=FILE:{tmp_path / 'nope.txt'}"],
        # checked before the model loads: this out_dir has no checkpoint
        "cannot read the prompt file 'missing.txt'": [f"--out_dir={tmp_path / 'missing'}", "--start=FILE:missing.txt"],
        # this process's JAX has only the CPU (conftest): rc 1, not a run on the CPU
        "--device=cuda but JAX finds no GPU (its backend is cpu)": [*common, "--device=cuda"],
        "--device='cuda:x' is not supported": [*common, "--device=cuda:x"],
        "unexpected arguments": [*common, "positional"],
        "--device='mps' is not supported": [*common, "--device=mps"],
        "--init_from='gpt2' is not supported": [*common, "--init_from=gpt2"],
        "kv_share (5) must be in 0..n_loop (3)": [*common, "--kv_share=5"],
        "draft_n_loop (3) must be in 1..n_loop-1": [*common, "--draft_n_loop=3"],
        "draft_n_loop (4) must be in 1..n_loop (3)": [*common, "--draft_n_loop=4", "--draft_exit=kl:0.01"],
        "--draft_exit='kl' must be CRITERION:THRESHOLD": [*common, "--draft_exit=kl"],
        "--exit_criterion=kl needs --exit_threshold": [*common, "--exit_criterion=kl"],
        "verifies drafts in one parallel pass": [*common, "--draft_n_loop=1", "--warm_start"],
    }
    for message, flags in cases.items():
        rc = _main(*flags)
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert rc == 1, (message, captured.err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (message, captured.err)
        assert captured.out == ""


@functools.cache
def _sample_module():
    """sample.py imported once (its absl flags are process-wide)."""
    spec = importlib.util.spec_from_file_location("sample_cli", REPO_ROOT / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(*argv: str) -> int:
    """sample.py's main in this process: flags parsed afresh, the return value is the exit code."""
    sample = _sample_module()
    sample.FLAGS.unparse_flags()
    args = sample.FLAGS(["sample.py", *argv])
    return sample.main(args)


def test_samples_stream_chunk_by_chunk(tiny_run):
    """The first sample reaches the output in pieces while the batch is still being decoded."""
    sample = _sample_module()
    params = init_params(TINY, jax.random.PRNGKey(0))
    tokenizer = Tokenizer.char({c: i for i, c in enumerate(CHARS)})
    decoder = KVDecoder(TINY, SampleConfig(temperature=1.0, top_k=None, vocab_limit=len(CHARS)), chunk_size=8)

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushes: list[str] = []

        def flush(self):
            self.flushes.append(self.getvalue())

    out = Recorder()
    prompt_ids = tokenizer.encode("abc")
    t0 = time.perf_counter()
    gen, seconds = sample.write_samples(
        decoder,
        params,
        tokenizer,
        prompt_ids,
        num_samples=2,
        max_new_tokens=30,
        key=jax.random.PRNGKey(0),
        exit_threshold=None,
        out=out,
    )
    text = out.getvalue()
    first, second = _samples(text)
    assert len(first) == len(second) == 3 + 30 and first.startswith("abc")
    # one flush per piece: the prefill's token, then chunks cut at 8 tokens and at the window restarts
    before_separator = [f for f in out.flushes if SEPARATOR not in f]
    assert len(before_separator) >= 4
    assert all(first.startswith(f) for f in before_separator)
    assert np.all(np.diff([len(f) for f in before_separator]) > 0)
    assert (gen.iters_BxN == TINY.n_loop).all()
    # every program compiled in this call, ahead of its run: the decoding seconds leave the compile time out
    assert decoder.compilations() >= 2 and decoder.compile_seconds() > 0
    assert 0 < seconds < time.perf_counter() - t0 - decoder.compile_seconds()
    assert "tokens/s nan" not in sample.format_stats(gen, seconds, 0)
