"""End-to-end training: configs, clear errors, checkpoint/resume (exact, after kill -9), SIGTERM, NaN guard."""

import importlib
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import optax
import pytest
from helpers import (
    REPO_ROOT,
    run,
    tensorboard_scalars,
    tiny_data_dir,
    tiny_overrides,
    train_cmd,
    train_losses,
    wait_for,
)

from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.config import model_config
from nanoloop_jax.train.optim import lr_schedule

CONFIGS = [
    ("shakespeare_char", ""),
    ("shakespeare_char", "cpu"),
    ("shakespeare_char_looped", ""),
    ("shakespeare_char_looped", "cpu"),
    ("shakespeare_looped", None),
    ("gpt2_owt_looped", None),
]


def _load_config(name, variant):
    module = importlib.import_module(f"configs.{name}")
    return module, (module.get_config() if variant is None else module.get_config(variant))


@pytest.mark.parametrize(("name", "variant"), CONFIGS)
def test_every_config_builds_and_validates(name, variant):
    module, config = _load_config(name, variant)
    mc = model_config(config.model)
    assert mc.n_loop >= 1 and config.data.dataset
    assert "python train.py --config=configs/" in module.__doc__  # the docstring gives the exact command
    if name == "shakespeare_char_looped" and variant == "cpu":
        # nanoLOOP README's CPU-only run with the looped architecture
        assert (mc.block_size, config.data.batch_size, mc.n_embd, mc.n_head, mc.dropout) == (64, 12, 128, 4, 0.0)
        assert (config.train.max_iters, mc.bptt_k, mc.n_loop) == (2000, 2, 4)


def test_bptt_k_zero_means_full_backprop():
    # `--config.model.bptt_k=None` cannot be parsed for an int field; 0 is the command-line spelling of None
    _, config = _load_config("shakespeare_char_looped", "cpu")
    assert model_config(config.model).bptt_k == 2
    config.model.bptt_k = 0
    assert model_config(config.model).bptt_k is None
    config.model.bptt_k = -1
    with pytest.raises(ValueError, match="bptt_k must be None"):
        model_config(config.model)


def test_lr_schedule_is_nanogpts():
    from ml_collections import ConfigDict

    opt = ConfigDict(dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=50, decay_lr=True))
    sched = lr_schedule(opt)

    def nanogpt(it):  # nanoGPT train.py get_lr
        if it < 10:
            return 1e-3 * (it + 1) / 11
        if it > 50:
            return 1e-4
        coeff = 0.5 * (1.0 + np.cos(np.pi * (it - 10) / 40))
        return 1e-4 + coeff * (1e-3 - 1e-4)

    for it in [0, 5, 9, 10, 11, 30, 49, 50, 51, 80]:
        np.testing.assert_allclose(float(sched(it)), nanogpt(it), rtol=1e-5)


def test_weight_decay_only_on_matrices():
    from nanoloop_jax.train.optim import decay_mask

    mask = decay_mask({"k": np.zeros((2, 3)), "scale": np.zeros(3), "emb": np.zeros((4, 2))})
    assert mask == {"k": True, "scale": False, "emb": True}
    assert optax  # optimizer built from optax (see optim.py)


def test_bad_override_and_bad_value_fail_with_one_line(tmp_path):
    typo = run(train_cmd("configs/shakespeare_char_looped.py", "--config.model.n_lop=8"))
    assert typo.returncode != 0 and "n_lop" in typo.stderr
    data_dir = tiny_data_dir(tmp_path)
    bad = run(
        train_cmd(
            "configs/shakespeare_char_looped.py",
            *tiny_overrides(data_dir, tmp_path / "o", **{"model.input_injection": "add"}),
        )
    )
    assert bad.returncode == 1
    assert "model.input_injection must be one of" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_data_names_the_prepare_command(tmp_path):
    res = run(
        train_cmd(
            "configs/gpt2_owt_looped.py",
            f"--config.data.data_dir={tmp_path}/openwebtext",
            f"--config.out_dir={tmp_path}/out",
        )
    )
    assert res.returncode == 1
    assert "run: python data/openwebtext/prepare.py" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(data_dir, out_dir) of one uninterrupted tiny run to step 8, checkpoints at 4 and 8; shared, never modified."""
    tmp_path = tmp_path_factory.mktemp("straight")
    data_dir = tiny_data_dir(tmp_path)
    out = tmp_path / "straight"
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, out)))
    assert res.returncode == 0, res.stderr
    assert "step 8: train loss" in res.stdout and checkpoint.all_steps(str(out)) == [8, 4]
    # a parameter count, not the ModelConfig repr; and one summary line at the end
    assert "ModelConfig(" not in res.stdout and "M parameters (" in res.stdout
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("done: steps 0 -> 8 (8 trained) in ") and "; best val loss " in last, last
    assert last.endswith(f"; checkpoint step 8 in {out / 'checkpoints'}"), last
    return data_dir, out


def _copy_run(src, dst, steps) -> None:
    """A copy of run src holding only the given checkpoint steps (as if the run had stopped there)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics.jsonl"))
    for step in checkpoint.all_steps(str(dst)):
        if step not in steps:
            shutil.rmtree(dst / "checkpoints" / str(step))


@pytest.mark.slow
def test_train_checkpoint_and_exact_resume_after_kill(straight, tmp_path):
    data_dir, straight = straight
    want = train_losses(straight)
    assert sorted(want) == list(range(8)) and want[7] < want[0]

    # same run, killed with SIGKILL once the step-4 checkpoint is on disk, then resumed
    killed = tmp_path / "killed"
    cmd = train_cmd(
        "configs/shakespeare_char_looped.py",
        *tiny_overrides(data_dir, killed, **{"train.max_iters": 2000, "opt.lr_decay_iters": 8}),
    )
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: checkpoint.latest_step(str(killed)) == 4, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, killed)))
    assert res.returncode == 0, res.stderr
    assert "resuming from it" in res.stdout and "resumed from step 4" in res.stdout
    got = train_losses(killed)
    for step in range(4, 8):
        assert got[step] == want[step], (step, got[step], want[step])

    # the finished run run again: one line, before anything is compiled or evaluated
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, killed)))
    assert res.returncode == 0, res.stderr
    assert "compiled" not in res.stdout and "step 8: train loss" not in res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("already at max_iters (8); nothing to train"), res.stdout
    # another architecture asked of it: one error line naming the field, both values and the fix
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, killed, **{"model.n_loop": 0})))
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {killed} holds a checkpoint (step 8) of another architecture: model.n_loop is 3 there, 0 asked for. "
        "A resumed run keeps its checkpoint's architecture: drop --config.model.n_loop (or change the config file "
        "back), or use a new out_dir"
    ], res.stderr


def _truncate_step(out_dir, step: int) -> None:
    """Damage a checkpoint as an interrupted copy would: its data files cut to half their size."""
    files = list((out_dir / "checkpoints" / str(step)).glob("*/ocdbt.process_0/d/*"))
    assert files
    for f in files:
        os.truncate(f, f.stat().st_size // 2)


@pytest.mark.slow
def test_truncated_newest_checkpoint_resumes_from_the_previous_one(straight, tmp_path, capsys):
    data_dir, straight = straight
    out = tmp_path / "damaged"
    _copy_run(straight, out, steps=(4, 8))
    _truncate_step(out, 8)

    # readers (sample.py, depth_sweep and eval_addition load through load_params): one warning, the older step
    assert checkpoint.load_params(str(out)).step == 4
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint step 8 in "), warnings
    assert "cannot be restored (" in warnings[0] and "is not valid for value of size" in warnings[0]
    assert warnings[0].endswith("using step 4")

    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, out)))
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint step 8") and "moved it to" in lines[0], lines
    assert "resumed from step 4" in res.stdout
    assert (out / "unreadable_checkpoints" / "8" / "params").is_dir()  # kept, not deleted
    got, want = train_losses(out), train_losses(straight)
    assert sorted(got) == [4, 5, 6, 7] and all(got[s] == want[s] for s in got), (got, want)
    assert checkpoint.load_params(str(out)).step == 8  # and the run wrote step 8 again

    # nothing restores: one error line, nothing deleted
    _truncate_step(out, 8)
    _truncate_step(out, 4)
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, out)))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no checkpoint in ") and "(steps 8, 4)" in lines[0], lines
    assert checkpoint.all_steps(str(out)) == [8, 4]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    data_dir = tiny_data_dir(tmp_path)
    out = tmp_path / "out"
    # 10^8 steps: far too large for a CPU, so the step-0 evaluation is skipped after the warning
    cmd = train_cmd(
        "configs/shakespeare_char_looped.py",
        *tiny_overrides(data_dir, out, **{"train.max_iters": 10**8, "train.eval_interval": 10**8}),
    )
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(train_losses(out)) >= 3, proc=proc)
    # a second run on the same out_dir (a second terminal, a re-submitted job) stops in one line naming the first
    second = run(cmd)
    assert second.returncode == 1 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert second.stderr.startswith(f"error: {out} is in use by another train.py run (pid {proc.pid} on host ")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGTERM: saved checkpoint at step" in stdout
    assert "warning: this config is far too large for" in stderr
    assert "step 0: evaluation skipped (see the warning above); training starts" in stdout
    assert stdout.strip().splitlines()[-1].startswith("stopped by SIGTERM: steps 0 -> ")
    step = checkpoint.latest_step(str(out))
    assert step is not None and step >= 3
    loaded = checkpoint.load_params(str(out))
    assert loaded.step == step and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(loaded.params))


def _sigterm_when(cmd, log, ready, delay_s: float = 0.0) -> float:
    """Start cmd (stdout to log), SIGTERM it delay_s after ready() holds; seconds from SIGTERM to exit status 0."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.PIPE, text=True)
        wait_for(ready, proc=proc)
        time.sleep(delay_s)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return time.monotonic() - t0


@pytest.mark.slow
def test_sigterm_during_eval_saves_the_trained_steps_and_exits_within_10s(straight, tmp_path):
    data_dir, straight = straight
    out, log = tmp_path / "out", tmp_path / "stdout.txt"
    _copy_run(straight, out, steps=(4,))
    # resumes at step 4, trains steps 4 and 5, then starts an evaluation at step 6 that would take hours
    flags = tiny_overrides(
        data_dir, out, **{"train.eval_interval": 6, "train.eval_iters": 10**8, "train.max_iters": 100}
    )
    cmd = train_cmd("configs/shakespeare_char_looped.py", *flags)
    step_5_logged = lambda: (out / "metrics.jsonl").exists() and 5 in train_losses(out)  # noqa: E731
    seconds = _sigterm_when(cmd, log, step_5_logged, delay_s=1.0)  # step 5 is logged just before the eval
    assert seconds < 10, seconds
    *_, line, summary = log.read_text().splitlines()
    assert line == "SIGTERM: saved checkpoint at step 6; exiting cleanly"
    assert summary.startswith("stopped by SIGTERM: steps 4 -> 6 (2 trained) in ") and "checkpoint step 6" in summary
    assert checkpoint.all_steps(str(out)) == [6, 4]
    assert checkpoint.load_params(str(out)).step == 6


@pytest.mark.slow
def test_sigterm_during_compile_exits_within_10s_with_nothing_to_save(tmp_path):
    data_dir, out, log = tiny_data_dir(tmp_path), tmp_path / "out", tmp_path / "stdout.txt"
    cmd = train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, out))
    # "mesh:" is the last line before the steps are compiled (a few seconds, even for this tiny model)
    seconds = _sigterm_when(cmd, log, lambda: log.exists() and "mesh:" in log.read_text())
    assert seconds < 10, seconds
    # a compile that outlasts the watchdog's grace period is ended by it (its line is the run's last); one that
    # ends first (a warm compilation cache: seen in a clean-clone .ci/run) hands the stop to the loop, which says
    # the same line and then the run's summary. Either way: nothing trained, nothing saved.
    lines = log.read_text().splitlines()
    nothing = "SIGTERM: no step trained yet, nothing to save; exiting cleanly"
    assert lines[-1] == nothing or (
        lines[-2] == nothing and lines[-1].startswith("stopped by SIGTERM: steps 0 -> 0 (0 trained) in ")
    ), lines[-3:]
    assert checkpoint.all_steps(str(out)) == []


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data_dir = tiny_data_dir(tmp_path)
    out = tmp_path / "out"
    flags = {"train.max_iters": 4, "train.eval_n_loops": "1,5", "train.tensorboard": True}
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, out, **flags)))
    assert res.returncode == 0 and checkpoint.latest_step(str(out)) == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert {"val", "val_n_loop_1", "val_n_loop_5"} <= set(evals[-1]) and "val_n_loop_1" in res.stdout
    # train.tensorboard: the same numbers as event files (loss, lr, step time, tokens/s, depth, val per depth)
    scalars = tensorboard_scalars(out / "tensorboard")
    for rec in records:
        for key in ("loss", "lr", "time_ms", "tokens_per_s", "n_loop", "val", "val_n_loop_1", "val_n_loop_5"):
            if key in rec:
                assert scalars[f"{rec['event']}/{key}"][rec["step"]] == pytest.approx(
                    rec[key], rel=1e-6, nan_ok=True
                ), key
    assert sorted(scalars["train/loss"]) == [0, 1, 2, 3] and sorted(scalars["eval/val_n_loop_5"]) == [0, 4]
    good = checkpoint.load_params(str(out)).params
    # resume with an absurd learning rate (one line says so): the loss becomes non-finite within a couple of steps
    flags = {"opt.learning_rate": 1e30, "opt.decay_lr": False, "train.eval_n_loops": "1,5", "train.tensorboard": True}
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, out, **flags)))
    changed = [line for line in res.stdout.splitlines() if line.startswith("resuming with changed settings")]
    assert changed == [
        "resuming with changed settings, applied from step 4 on: opt.learning_rate 0.001 -> 1e+30, "
        "opt.decay_lr True -> False, train.max_iters 4 -> 8"
    ], res.stdout
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert "loss is nan at iter" in line or "loss is inf at iter" in line, res.stderr
    assert "last good checkpoint is step 4" in line and "Traceback" not in res.stderr
    assert checkpoint.latest_step(str(out)) == 4
    again = checkpoint.load_params(str(out)).params
    jax.tree_util.tree_map(np.testing.assert_array_equal, good, again)


def test_shakespeare_configs_prepare_their_data(tmp_path):
    env = {**os.environ, "NANOLOOP_SHAKESPEARE_PATH": str(REPO_ROOT / "tests/fixtures/tinyshakespeare_head.txt")}
    data_dir = tmp_path / "data" / "shakespeare_char"
    res = run(
        train_cmd(
            "configs/shakespeare_char_looped.py",
            *tiny_overrides(
                data_dir,
                tmp_path / "out",
                **{"data.dataset": "shakespeare_char", "train.max_iters": 1, "train.eval_interval": 1},
            ),
        ),
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert (data_dir / "train.bin").exists() and (data_dir / "meta.json").exists()


@pytest.mark.slow
def test_init_from_nanoloop_ckpt_continues_the_pytorch_run(tmp_path):
    from nanoloop_jax.data.prepare import prepare_shakespeare_char

    # a char dataset within the fixture model's 37-token vocabulary
    text_path = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    text_path.write_text("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz .,\n"), size=20000)))
    data_dir = tmp_path / "data" / "tiny37"
    prepare_shakespeare_char(data_dir, input_path=text_path)
    ckpt = REPO_ROOT / "tests" / "fixtures" / "prc_inject_bptt" / "ckpt.pt"
    out = tmp_path / "out"
    flags = tiny_overrides(
        data_dir,
        out,
        **{"init_from": str(ckpt), "model.block_size": 16, "train.max_iters": 3, "train.eval_interval": 3},
    )
    res = run(train_cmd("configs/shakespeare_char_looped.py", *flags))
    assert res.returncode == 0, res.stderr
    assert "initialised from nanoLOOP checkpoint" in res.stdout
    loaded = checkpoint.load_params(str(out))
    assert (loaded.model_config.n_embd, loaded.model_config.vocab_size, loaded.model_config.n_loop) == (16, 37, 4)

    # a dataset with more token ids than the checkpoint's vocabulary is refused in one line
    flags = tiny_overrides(tiny_data_dir(tmp_path), tmp_path / "out2", **{"init_from": str(ckpt)})
    res = run(train_cmd("configs/shakespeare_char_looped.py", *flags))
    assert res.returncode == 1 and "model's vocab_size is 37" in res.stderr
