"""Length generalization: task data, the depth rule, T(n)-deep training in one compile, accuracy.csv, configs."""

import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import perturbed, run, tiny_config, train_cmd
from ml_collections import ConfigDict

from configs import (
    addition_lengthgen,
    addition_lengthgen_baseline,
    maze_baseline,
    maze_looped,
    multiadd_baseline,
    multiadd_looped,
    parity_lengthgen,
    parity_lengthgen_baseline,
    phop_baseline,
    phop_looped,
    sudoku_baseline,
    sudoku_looped,
)
from nanoloop_jax.ckpt import convert
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT, abstract_params, init_params
from nanoloop_jax.tasks.lengthgen import data as lengthgen_data
from nanoloop_jax.tasks.lengthgen.evaluate import Result, format_table, read_csv, write_csv
from nanoloop_jax.tasks.lengthgen.families import addition, parity
from nanoloop_jax.tasks.lengthgen.forward import accuracies, answers_per_iteration, logits_at_depth, make_train_step
from nanoloop_jax.train.steps import TrainState, cross_entropy

LENGTHGEN_CONFIGS = {  # task -> its looped config and that config's one-pass baseline
    "parity": (parity_lengthgen, parity_lengthgen_baseline),
    "addition": (addition_lengthgen, addition_lengthgen_baseline),
    "phop": (phop_looped, phop_baseline),
    "multiadd": (multiadd_looped, multiadd_baseline),
    "maze": (maze_looped, maze_baseline),
    "sudoku": (sudoku_looped, sudoku_baseline),
}
ITOS = dict(enumerate(parity.CHARS))
STOI = parity.FAMILY.stoi


def _text(row) -> str:
    return "".join(ITOS[int(t)] for t in row)


def test_parity_problems_have_their_length_and_parity():
    for n in (1, 7, 30):
        x, y = parity.FAMILY.problems(np.random.default_rng(n), 50, n, test=False)
        assert x.shape == (50, parity.FAMILY.seq_len(n))
        for row, target in zip(x, y, strict=True):
            text = _text(row)
            assert text[0] == "^" and text[-1] == "=" and set(text[1:-1]) <= {"0", "1"} and len(text) == n + 2
            assert (target >= 0).sum() == 1 and ITOS[int(target[-1])] == str(text.count("1") % 2)


def test_addition_problems_decode_to_their_sum():
    for n in (1, 3, 12):
        x, y = addition.FAMILY.problems(np.random.default_rng(n), 40, n, test=False)
        assert x.shape == y.shape == (40, addition.FAMILY.seq_len(n))
        for row, target in zip(x, y, strict=True):
            text = _text(row)
            a, b = int(text[1::3][::-1]), int(text[2::3][::-1])
            assert set(text[3::3]) == {"_"} and len(str(a)) == len(str(b)) == n  # both operands exactly n digits
            answer = "".join(ITOS[int(t)] for t in target[target >= 0])
            assert int(answer[::-1]) == a + b and len(answer) == n + 1
    x, _ = addition.FAMILY.problems(np.random.default_rng(0), 1000, 1, test=True)
    assert len(x) == 100  # 1-digit test set: all 100 problems, enumerated


def test_batches_hold_one_length_padded_to_one_width(tmp_path):
    lengthgen_data.prepare_lengthgen(tmp_path, "parity", (2, 6), (8,), 30, 10, progress=False)
    batches = lengthgen_data.LengthBatches(tmp_path, "parity", (2, 6), 5, seed=0)
    seen = set()
    for step in range(30):
        n, x, y = batches.get(step)
        assert batches.length(step) == n  # known before the batch: the loop's depth T(n)
        seen.add(n)
        assert x.shape == y.shape == (5, 8) and np.all(x[:, n + 2 :] == STOI["."])
        assert np.all((y >= 0).sum(1) == 1) and np.all(y[:, n + 1] >= 0)
    assert seen == set(range(2, 7))
    n, x, _ = batches.get(3)
    assert np.array_equal(batches.get(3)[1], x)  # a pure function of the step
    assert lengthgen_data.load_test(tmp_path, 8)[0].shape == (10, 10)


def test_linear_length_weighting_draws_lengths_in_proportion(tmp_path):
    """length_weighting='linear': length n is drawn with probability n / sum (2..6: 2/20 .. 6/20), within the
    curriculum's bound; an unknown weighting is one line."""
    lengthgen_data.prepare_lengthgen(tmp_path, "parity", (2, 6), (8,), 30, 10, progress=False)
    batches = lengthgen_data.LengthBatches(tmp_path, "parity", (2, 6), 5, seed=0, weighting="linear")
    counts = np.bincount([batches.length(step) for step in range(4000)], minlength=7)[2:]
    np.testing.assert_allclose(counts / 4000, np.arange(2, 7) / 20, atol=0.025)  # ~4 standard errors
    early = lengthgen_data.LengthBatches(tmp_path, "parity", (2, 6), 5, 0, curriculum_steps=100, weighting="linear")
    assert max(early.length(step) for step in range(25)) <= 3  # the curriculum still bounds the lengths
    with pytest.raises(ValueError, match="length_weighting must be one of"):
        lengthgen_data.LengthBatches(tmp_path, "parity", (2, 6), 5, seed=0, weighting="quadratic")


def test_depth_rule():
    lg = ConfigDict({"depth_rule": "linear", "depth_scale": 1, "depth_offset": 1})
    assert [lengthgen_data.depth_for_length(lg, 7, n) for n in (1, 20, 50)] == [2, 21, 51]
    lg.depth_scale, lg.depth_offset = 2, 0
    assert lengthgen_data.depth_for_length(lg, 7, 5) == 10
    lg.depth_rule = "fixed"
    assert lengthgen_data.depth_for_length(lg, 7, 50) == 7
    lg.depth_rule = "n+1"
    with pytest.raises(ValueError, match="depth_rule must be one of"):
        lengthgen_data.depth_for_length(lg, 7, 5)


def test_prefix_depths_are_the_depths_of_the_problems_ending_at_each_position():
    """Parity's position j is the '=' of a (j - 1)-bit problem; addition's slot at 3(k + 1) the last of a k-digit
    one: the gate's 'prefix' targets are their T (n + 1 here), checked against the problems' own layouts."""
    lg = ConfigDict({"task": "parity", "depth_rule": "linear", "depth_scale": 1, "depth_offset": 1})
    np.testing.assert_array_equal(lengthgen_data.prefix_depths(lg, 7), [0, 1, 2, 3, 4, 5, 6])
    for n in (1, 4):  # the '=' of a length-n problem gets T(n)
        assert lengthgen_data.prefix_depths(lg, 7)[parity.FAMILY.seq_len(n) - 1] == n + 1
    lg.task = "addition"
    x, y = addition.FAMILY.layout(np.array([57]), np.array([68]), 2)  # `^ 7 8 _ 5 6 _ 0 0 _`
    got = lengthgen_data.prefix_depths(lg, x.shape[1])
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 0, 0, 2, 0, 0, 3])
    np.testing.assert_array_equal(got > 0, y[0] >= 0)  # exactly the answer slots
    lg.depth_rule = "fixed"
    with pytest.raises(ValueError, match="depth_rule='linear'"):
        lengthgen_data.prefix_depths(lg, 10)


def test_prefix_answers_are_the_answers_of_the_problems_ending_at_each_position():
    lg = ConfigDict({"task": "parity"})
    x, y = parity.FAMILY.problems(np.random.default_rng(0), 6, 5, test=False)
    xp, yp = lengthgen_data.pad_rows(x, y, 9)
    for arr in (xp, jnp.asarray(xp)):  # numpy, and jax inside the training step
        got = np.asarray(lengthgen_data.prefix_answers(lg, arr, yp))
        for b in range(6):
            bits = [int(parity.CHARS[c]) for c in xp[b, 1:6]]
            want = [-1] + [STOI[str(sum(bits[: j - 1]) % 2)] for j in range(1, 7)] + [-1, -1]
            assert got[b].tolist() == want
        np.testing.assert_array_equal(got[:, 6], yp[:, 6])  # the '=' slot: the problem's own answer
    lg.task = "addition"
    x, y = addition.FAMILY.layout(np.array([57]), np.array([68]), 2)
    np.testing.assert_array_equal(lengthgen_data.prefix_answers(lg, x, y), y)  # the slots already are
    # parity's answers are -1 exactly where no problem ends: the 'prefix' targets' mask (padding excluded)
    lg.task, lg.depth_rule, lg.depth_scale, lg.depth_offset = "parity", "linear", 1, 1
    depth_T = lengthgen_data.prefix_depths(lg, xp.shape[1])
    got = np.asarray(lengthgen_data.prefix_answers(lg, xp, yp))
    np.testing.assert_array_equal(got >= 0, (depth_T > 0)[None] & (xp != STOI["."]))


CFG = tiny_config(vocab_size=14, n_prelude=0, n_block=1, n_coda=0, n_embd=16, bptt_k=None, pos_encoding="none")


def test_depth_d_forward_and_gradient_equal_the_model_at_n_loop_d():
    """The scan+cond loop at traced depth d == LoopedGPT(n_loop=d) with full backprop, values and gradients."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    model = LoopedGPT(CFG)
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, 14)
    y = jnp.where(jnp.arange(10) > 6, x, -1)
    d = 3  # traced inside a scan of 6; the reference unrolls 3 static iterations
    ours = jax.jit(jax.value_and_grad(lambda p: cross_entropy(logits_at_depth(model, p, x, jnp.int32(d), 6), y)))
    ref = jax.jit(jax.value_and_grad(lambda p: cross_entropy(model.apply({"params": p}, x, n_loop=d), y)))
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), ours(params), ref(params)
    )
    correct, _, _ = jax.jit(lambda p: answers_per_iteration(model, p, x, y, 5))(params)
    logits = jax.jit(lambda p: model.apply({"params": p}, x, n_loop=d))(params)
    want = jnp.all((jnp.argmax(logits, -1) == y) | (y < 0), axis=-1)
    np.testing.assert_array_equal(correct[d - 1], want)


def test_one_compile_for_every_length_and_depth():
    model = LoopedGPT(CFG)
    tx = optax.adam(1e-3)
    params = init_params(CFG, jax.random.PRNGKey(0))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-3), max_depth=6))
    losses = []
    for depth in (1, 3, 6):
        x = np.full((1, 2, 10), 3, np.int32)  # (micro-steps, B, T)
        state, metrics = step(state, {"x": x, "y": x}, jax.random.PRNGKey(0), np.int32(depth))
        losses.append(float(metrics["loss"]))
    assert step._cache_size() == 1 and all(np.isfinite(losses))


def test_adaptive_stop_picks_the_most_confident_iteration():
    correct = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)  # iterations x problems
    conf = np.array([[-0.1, -5.0, -1.0], [-3.0, -0.2, -0.5], [-2.0, -4.0, -0.4]])
    per_depth, adaptive, iters = accuracies(correct, conf)
    np.testing.assert_allclose(per_depth, [1 / 3, 1 / 3, 0])
    assert adaptive == pytest.approx(2 / 3)  # problems 0 and 1 stop at their right iteration, 2 at a wrong one
    assert iters == pytest.approx((1 + 2 + 3) / 3)


def test_gate_stop_is_the_first_iteration_whose_halting_probability_reaches_one_half():
    correct = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    conf = np.zeros((3, 3))  # ignored when the model has a gate
    halted = np.array([[0.6, 0.1, 0.1], [0.7, 0.5, 0.2], [0.9, 0.9, 0.4]])  # problem 2 never reaches 0.5
    per_depth, adaptive, iters = accuracies(correct, conf, halted)
    assert adaptive == pytest.approx(1.0) and iters == pytest.approx((1 + 2 + 3) / 3)


def test_halting_probability_per_iteration_equals_a_written_out_loop():
    cfg = dataclasses.replace(CFG, exit_gate=True)
    params = perturbed(init_params(cfg, jax.random.PRNGKey(0)), 0.5, seed=3)
    model = LoopedGPT(cfg)
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, 14)
    y = jnp.where(jnp.arange(10) > 6, x, -1)  # answer slots 7..9
    _, _, halted = jax.jit(lambda p: answers_per_iteration(model, p, x, y, 4))(params)
    pos = jnp.arange(10)
    ap = lambda method, *a: model.apply({"params": params}, *a, method=method)  # noqa: E731
    e, _ = ap(LoopedGPT.prelude_blocks, ap(LoopedGPT.embed, x, pos), pos)
    s, survive = ap(LoopedGPT.initial_state, e, pos), np.ones((2, 10))
    for i in range(4):
        s = ap(LoopedGPT.iterate, s, e, pos)[0]
        survive = survive * (1 - 1 / (1 + np.exp(-np.asarray(ap(LoopedGPT.halt_logit, s), np.float64))))
        np.testing.assert_allclose(np.asarray(halted[i]), (1 - survive[:, 7:]).min(axis=1), rtol=1e-5)


def test_accuracy_csv_columns(tmp_path):
    result = Result({20: (np.array([0.5, 1.0]), 1.0, 2), 40: (np.array([0.25, 0.5]), 0.75, 3)})
    write_csv(tmp_path / "d.csv", result)  # the reasoning families' header; read back alike
    with open(tmp_path / "d.csv") as f:
        assert next(csv.reader(f)) == ["difficulty", "n_loop", "accuracy"]
    assert read_csv(tmp_path / "d.csv")[20] == {"1": 0.5, "2": 1.0, "adaptive": 1.0}
    write_csv(tmp_path / "accuracy.csv", result, "length")  # parity's and addition's
    with open(tmp_path / "accuracy.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["length", "n_loop", "accuracy"]
    assert rows[1:4] == [["20", "1", "0.5000"], ["20", "2", "1.0000"], ["20", "adaptive", "1.0000"]]
    assert len(rows) == 7
    back = read_csv(tmp_path / "accuracy.csv")
    assert back[40] == {"1": 0.25, "2": 0.5, "adaptive": 0.75}
    table = format_table(result, [1, 2], train_max=20, baseline=back)
    assert "base@1" in table and "40*" in table


@pytest.mark.parametrize("task", sorted(LENGTHGEN_CONFIGS))
def test_baseline_differs_from_looped_only_in_depth_and_stop(task):
    looped_config, baseline_config = LENGTHGEN_CONFIGS[task]
    looped, base = looped_config.get_config().to_dict(), baseline_config.get_config().to_dict()
    diff = {
        (section, k)
        for section in looped
        for k in (looped[section] if isinstance(looped[section], dict) else [None])
        if (looped[section][k] if k else looped[section]) != (base[section][k] if k else base[section])
    }
    # the gate (65 parameters) and its objective are the looped run's own stop; one pass has nothing to stop
    gate = {("model", "exit_gate"), ("train", "halting")} if task == "parity" else set()
    # a sliding window is widened by the loop; one pass gets the whole context instead
    window = {("model", "attn_window")} if looped["model"]["attn_window"] is not None else set()
    assert diff == {("out_dir", None), ("model", "n_loop"), ("lengthgen", "depth_rule")} | gate | window
    assert base["model"]["attn_window"] is None
    assert base["model"]["n_loop"] == 1 and base["model"]["pos_encoding"] == looped["model"]["pos_encoding"]
    assert looped["lengthgen"]["task"] == task


def _zero_params(cfg: ModelConfig) -> dict:
    """Params of the right shapes without running an init (the converter only reads shapes and values)."""
    return jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), abstract_params(cfg))


def test_converter_refuses_rope_and_nope():
    small = dict(block_size=8, vocab_size=14, n_prelude=0, n_block=1, n_coda=0, n_head=2, n_embd=8)
    for pos in ("rope", "none"):
        cfg = ModelConfig(**small, pos_encoding=pos)
        with pytest.raises(convert.ConversionError, match="pos_encoding='learned'") as err:
            convert.to_nanoloop(cfg, _zero_params(cfg))
        assert "\n" not in str(err.value)
    learned = ModelConfig(**small)
    sd, args = convert.to_nanoloop(learned, _zero_params(learned))
    assert convert.from_nanoloop(sd, args)[0].pos_encoding == "learned"  # a ckpt.pt always converts to learned


def _toy_train(tmp_path, config: str, **overrides):
    """train.py on `config` at toy size (2 steps, a few problems) with these extra --config flags."""
    flags = {
        "out_dir": tmp_path / "out",
        "data.data_dir": tmp_path / "data",
        "model.n_embd": 16,
        "model.n_head": 2,
        "data.batch_size": 8,
        "train.max_iters": 2,
        "lengthgen.num_train": 8,
        **overrides,
    }
    return run(train_cmd(config, *(f"--config.{k}={v}" for k, v in flags.items())))


def test_train_py_trains_evaluates_and_writes_accuracy_csv(tmp_path):
    """train.py on a lengthgen config: prepares the data, trains in the one Trainer loop (val loss on held-out
    problems of a trained length), checkpoints, and ends with the per-length accuracy.csv."""
    flags = {
        "model.block_size": 8,
        "train.eval_interval": 1,
        "train.eval_iters": 2,
        "train.log_interval": 1,
        "lengthgen.train_lengths": "(1,2)",
        "lengthgen.test_lengths": "(2,3)",
        "lengthgen.num_test": 6,
        "lengthgen.eval_extra_depth": 1,
    }
    res = _toy_train(tmp_path, "configs/parity_lengthgen.py", **flags)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "step 2: train loss" in res.stdout and "val loss" in res.stdout and "saving checkpoint at step 2" in res.stdout
    )
    # train.final_eval 'last' (the default): the table is the last step's, and no best_val params are kept
    assert "(step 2): parity exact-match accuracy" in res.stdout + res.stderr
    assert not (tmp_path / "out" / "best_val").exists()
    with open(tmp_path / "out" / "accuracy.csv") as f:
        rows = list(csv.reader(f))
    # n_loop 1..T(3)+1 = 5, then the confidence stop, for each test length
    assert rows[0] == ["length", "n_loop", "accuracy"]
    assert [r[:2] for r in rows[1:]] == [[n, d] for n in ("2", "3") for d in ("1", "2", "3", "4", "5", "adaptive")]


def test_train_py_on_a_non_causal_family(tmp_path):
    """configs/maze_looped.py (model.causal=False) end to end at toy size: data, training, accuracy.csv."""
    flags = {
        "train.eval_interval": 2,
        "train.eval_iters": 1,
        "lengthgen.train_lengths": "(2,3)",
        "lengthgen.test_lengths": "(3,4)",
        "lengthgen.num_test": 4,
        "lengthgen.eval_extra_depth": 0,
    }
    res = _toy_train(tmp_path, "configs/maze_looped.py", **flags)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "side 4: T(n)=10" in res.stdout + res.stderr  # T(s) = 3s - 2, logged per side
    with open(tmp_path / "out" / "accuracy.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["difficulty", "n_loop", "accuracy"]
    # n_loop 1..max T = T(4) = 10, then the confidence stop, for each side
    assert [r[:2] for r in rows[1:]] == [[s, d] for s in ("3", "4") for d in [*map(str, range(1, 11)), "adaptive"]]
