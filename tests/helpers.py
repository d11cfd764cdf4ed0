"""Shared test helpers: the tiny model, perturbed params, a tiny prepared dataset and tiny train.py command lines."""

import json
import os
import pathlib
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE_TEXT = REPO_ROOT / "tests" / "fixtures" / "tinyshakespeare_head.txt"


def tiny_data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A char-level dataset prepared from the 60k-character fixture."""
    from nanoloop_jax.data.prepare import prepare_shakespeare_char

    data_dir = tmp_path / "data" / "tiny_char"
    data_dir.mkdir(parents=True)
    prepare_shakespeare_char(data_dir, input_path=FIXTURE_TEXT)
    return data_dir


# config.model overrides of a ~20k-parameter looped model that trains in well under a second per step
TINY_RUN_MODEL = {
    "model.block_size": 32,
    "model.n_embd": 32,
    "model.n_head": 2,
    "model.n_prelude": 1,
    "model.n_block": 1,
    "model.n_coda": 1,
    "model.n_loop": 3,
    "model.bptt_k": 2,
}


def tiny_overrides(data_dir, out_dir, **extra) -> list[str]:
    """train.py flags for TINY_RUN_MODEL on a tiny dataset: 8 steps, evaluated and checkpointed every 4."""
    flags = {
        "data.dataset": "tiny_char",
        "data.data_dir": str(data_dir),
        "out_dir": str(out_dir),
        "data.batch_size": 8,
        **TINY_RUN_MODEL,
        "model.dropout": 0.1,
        "train.max_iters": 8,
        "train.eval_interval": 4,
        "train.eval_iters": 2,
        "train.log_interval": 1,
        "train.always_save_checkpoint": True,
        "opt.warmup_iters": 2,
        "opt.lr_decay_iters": 8,
    }
    flags.update(extra)
    return [f"--config.{k}={v}" for k, v in flags.items()]


def train_cmd(config="configs/shakespeare_char_looped.py:cpu", *overrides) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), f"--config={REPO_ROOT / config}", *overrides]


def run(cmd, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout
    )


def train_losses(out_dir) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (the last record wins if a step was logged twice)."""
    losses = {}
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "train":
            losses[rec["step"]] = rec["loss"]
    return losses


def wait_for(predicate, timeout=240, proc=None):
    """Poll until predicate() is true; fail early if the process died."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited early ({proc.returncode}):\n{out}\n{err}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


# The suite's tiny looped model: 1 prelude + 2 recurrent blocks x 3 loops + 1 coda, width 32, vocab 20.
TINY_MODEL = dict(
    block_size=16, vocab_size=20, n_prelude=1, n_block=2, n_coda=1, n_loop=3, n_head=2, n_embd=32, bptt_k=2
)


def tiny_config(**overrides):
    """TINY_MODEL as a ModelConfig, with the fields a test varies overridden."""
    from nanoloop_jax.model.config import ModelConfig

    return ModelConfig(**{**TINY_MODEL, **overrides})


def perturbed_params(config, scale: float = 0.3, seed: int = 0, noise_seed: int = 100):
    """init_params(config, seed), perturbed (see `perturbed`)."""
    import jax

    from nanoloop_jax.model.looped import init_params

    return perturbed(init_params(config, jax.random.PRNGKey(seed)), scale, noise_seed)


def perturbed(params, scale: float, seed: int = 100):
    """params with every leaf nudged by scale·N(0, 1), so identity-like inits (inject, norms) hide no bug."""
    import jax

    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def tiny_checkpoint(tmp_path: pathlib.Path):
    """(ModelConfig, params, out_dir): a perturbed 1+1x2+1 char model (vocab 59) saved as an orbax checkpoint."""
    from nanoloop_jax.ckpt import checkpoint

    config = tiny_config(block_size=32, vocab_size=59, n_block=1, n_loop=2, bptt_k=1)
    params = perturbed_params(config, 0.1)
    out = tmp_path / "out"
    checkpoint.write_params_only(str(out), config, params, step=7, best_val_loss=9.0)
    return config, params, out


def tensorboard_scalars(logdir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the TensorBoard event files under logdir, read back from the
    TFRecord framing (u64 length, u32 crc, the Event proto, u32 crc) with tensorboardX's own Event proto."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    files = sorted(pathlib.Path(logdir).glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars
