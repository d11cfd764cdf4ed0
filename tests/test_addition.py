"""Addition task: generator answers checked with Python ints, masks, determinism, test sets, evaluator."""

import csv
import functools
import json
import pathlib

import jax
import numpy as np
import pytest
from helpers import tiny_config

from configs import addition_baseline, addition_looped
from nanoloop_jax import cli
from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.config import model_config
from nanoloop_jax.data.batches import BatchSampler
from nanoloop_jax.data.tokenizer import load_tokenizer
from nanoloop_jax.errors import UserError
from nanoloop_jax.model.looped import LoopedGPT, abstract_params, init_params
from nanoloop_jax.tasks.addition import data as addition
from nanoloop_jax.tasks.addition import evaluate as addition_eval
from nanoloop_jax.tools import eval_addition

ITOS = dict(enumerate(addition.CHARS))
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def decode(ids) -> str:
    return "".join(ITOS[int(i)] for i in ids)


def split_problems(text: str) -> list[tuple[int, int, str]]:
    """(a, b, reversed answer digits) of every problem in a stream; fails on anything malformed."""
    assert text.endswith(addition.END)
    out = []
    for line in text[:-1].split(addition.END):
        q, ans = line.split("=")
        a, b = q.split("+")
        assert a.isdigit() and b.isdigit() and ans.isdigit(), line
        out.append((int(a), int(b), ans))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("addition")
    addition.prepare_addition(out, max_digits=3, num_train=3000, num_val=300, num_test=150, seed=7)
    return out


def test_answers_are_the_reversed_sums_incl_carry_edge_cases():
    rng = np.random.default_rng(0)
    a, b = addition.mixed_problems(rng, 5000, 8)
    edge = [(99999999, 1), (1, 99999999), (99999999, 99999999), (0, 0), (5, 5), (10_000_000, 0), (50, 50)]
    a = [*a.tolist(), *(x for x, _ in edge)]
    b = [*b.tolist(), *(y for _, y in edge)]
    ids, _ = addition.encode_problems(a, b)
    problems = split_problems(decode(ids))
    assert [(x, y) for x, y, _ in problems] == list(zip(a, b, strict=True))
    for x, y, ans in problems:
        assert int(ans[::-1]) == x + y
        assert not ans.endswith("0") or x + y == 0  # the sum has no leading zero
    assert problems[-7][2] == "000000001"  # a carry through all 8 digits into a 9th
    assert problems[-5][2] == "899999991"  # 199999998
    assert addition.question(12, 345) == "12+345=" and addition.answer(12, 345) == "753\n"
    # operand lengths cover 1..8 with unequal pairs
    lengths = {(len(str(x)), len(str(y))) for x, y, _ in problems[:-7]}
    assert {n for n, _ in lengths} == set(range(1, 9)) and (1, 8) in lengths and (8, 1) in lengths


def test_mask_is_exactly_the_answer_and_end_marker():
    a, b = addition.mixed_problems(np.random.default_rng(1), 500, 8)
    ids, mask = addition.encode_problems(a, b)
    assert ids.dtype == np.uint16 and mask.dtype == np.uint8 and ids.shape == mask.shape
    text = decode(ids)
    expected, in_answer = [], False
    for ch in text:
        expected.append(int(in_answer))  # '=' itself is question; END is answer
        in_answer = (in_answer or ch == "=") and ch != addition.END
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == sum(len(addition.answer(int(x), int(y))) for x, y in zip(a, b, strict=True))


def test_prepare_is_deterministic_from_the_seed(tmp_path, data_dir):
    again = tmp_path / "again"
    other = tmp_path / "other"
    addition.prepare_addition(again, max_digits=3, num_train=3000, num_val=300, num_test=150, seed=7)
    addition.prepare_addition(other, max_digits=3, num_train=3000, num_val=300, num_test=150, seed=8)
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert not any(n.endswith(".tmp") for n in names)
    for name in names:
        assert (data_dir / name).read_bytes() == (again / name).read_bytes(), name
    assert (data_dir / "train.bin").read_bytes() != (other / "train.bin").read_bytes()
    assert (data_dir / "test_3.json").read_bytes() != (other / "test_3.json").read_bytes()
    # train and val are different draws
    assert (data_dir / "val.bin").read_bytes() not in (data_dir / "train.bin").read_bytes()


def test_test_sets_have_the_right_digit_counts(data_dir):
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["max_train_digits"] == 3 and meta["max_test_digits"] == 6
    assert sorted(p.name for p in data_dir.glob("test_*.json")) == sorted(f"test_{d}.json" for d in range(1, 7))
    for d in range(1, 7):
        a, b = addition.load_test_set(data_dir, d)
        assert len(a) == len(b) == (100 if d == 1 else 150)
        assert all(len(str(x)) == d for x in a + b), d
    # 1 digit: all 100 problems, each once
    assert sorted(zip(*addition.load_test_set(data_dir, 1), strict=True)) == [
        (x, y) for x in range(10) for y in range(10)
    ]
    with pytest.raises(UserError, match="prepare"):
        addition.load_test_set(data_dir, 7)


def test_train_split_stays_in_the_training_lengths_and_loads_with_masks(data_dir):
    text = load_tokenizer(data_dir).decode(np.fromfile(data_dir / "train.bin", np.uint16))
    problems = split_problems(text)
    assert len(problems) == 3000
    assert all(len(str(x)) <= 3 and len(str(y)) <= 3 and int(s[::-1]) == x + y for x, y, s in problems)
    x, y, mask = BatchSampler(data_dir, "train", batch_size=4, block_size=16, seed=0).get(0)
    assert mask.shape == y.shape and set(np.unique(mask)) <= {0, 1}
    eq = addition.STOI["="]
    # the target after '=' is always an answer digit, so it is always scored
    assert (mask[x == eq] == 1).all()


def oracle(stoi):
    """A solver that reads each prompt and writes the right answer: what a perfect model decodes."""
    itos = {i: ch for ch, i in stoi.items()}

    def solve(prompt_BxP, max_new):
        out = []
        for row in prompt_BxP:
            a, b = "".join(itos[int(t)] for t in row).strip().rstrip("=").split("+")
            ans = addition.answer(int(a), int(b)) + "7" * max_new  # junk after END must not matter
            out.append([stoi[c] for c in ans[:max_new]])
        return np.asarray(out)

    return solve


def test_accuracy_scores_an_oracle_1_and_counts_mistakes():
    stoi = addition.STOI
    a, b = [12, 99, 5, 0, 123], [34, 1, 5, 0, 877]
    assert addition_eval.accuracy(oracle(stoi), stoi, a, b, batch_size=2) == (1.0, [True] * 5)

    def drops_end_on_carry_out(prompt_BxP, max_new):
        # the oracle, except that a sum longer than both operands comes without its end marker
        out = oracle(stoi)(prompt_BxP, max_new)
        for row, p in zip(out, prompt_BxP, strict=True):
            x, y = decode(p).strip().rstrip("=").split("+")
            if len(str(int(x) + int(y))) > max(len(x), len(y)):
                row[row == stoi[addition.END]] = stoi["0"]
        return out

    acc, ok = addition_eval.accuracy(drops_end_on_carry_out, stoi, a, b, batch_size=3)
    assert ok == [True, False, False, True, False] and acc == pytest.approx(0.4)
    assert not addition_eval.solved(ITOS, [stoi[c] for c in "64"], 12, 34)  # no END
    assert not addition_eval.solved(ITOS, [stoi[c] for c in "640\n"], 12, 34)  # an extra digit
    assert addition_eval.solved(ITOS, [stoi[c] for c in "64\n99"], 12, 34)


def test_parse_ints():
    assert addition_eval.parse_ints("1..4,8, 2") == [1, 2, 3, 4, 8]
    for bad in ("", "0", "a..3", "1..x"):
        with pytest.raises(addition_eval.EvalError):
            addition_eval.parse_ints(bad)


TINY = tiny_config(vocab_size=len(addition.CHARS), block_size=32, n_block=1, n_loop=2, bptt_k=None)


@pytest.fixture(scope="module")
def tiny_params():
    """Random params of TINY (jitted init: much faster than op-by-op on a busy CPU)."""
    return jax.jit(functools.partial(init_params, TINY))(jax.random.PRNGKey(3))


def test_kv_solver_is_greedy_decoding_at_the_asked_depth(tiny_params):
    params = tiny_params
    prompt = np.asarray(addition_eval.prompts(addition.STOI, [12, 45], [34, 67]), np.int32)
    got = addition_eval.kv_solver(TINY, params, TINY.vocab_size, n_loop=3)(prompt, 6)
    # reference: argmax of one full forward over the (right-padded, so one compile) sequence so far
    forward = jax.jit(lambda p, idx: LoopedGPT(TINY).apply({"params": p}, idx, n_loop=3))
    seq = np.zeros((2, 16), np.int32)
    seq[:, : prompt.shape[1]] = prompt
    for n in range(prompt.shape[1], prompt.shape[1] + 6):
        seq[:, n] = np.argmax(forward(params, seq)[:, n - 1], axis=-1)
    np.testing.assert_array_equal(got, seq[:, prompt.shape[1] : prompt.shape[1] + 6])
    with pytest.raises(addition_eval.EvalError, match="block_size"):
        addition_eval.kv_solver(TINY, params, TINY.vocab_size, n_loop=1)(np.zeros((1, 30), np.int32), 4)


def test_eval_cli_on_a_tiny_checkpoint(tmp_path, data_dir, tiny_params, capsys):
    out_dir = tmp_path / "ckpt"
    checkpoint.write_params_only(str(out_dir), TINY, tiny_params, step=0, best_val_loss=0.0, source={"test": True})
    argv = [f"--out_dir={out_dir}", f"--data_dir={data_dir}", "--n_loops=1,3", "--digits=1..4", "--num_problems=12"]
    assert cli.call_tool(eval_addition.define_flags, eval_addition.run, [*argv, "--batch_size=8"]) == 0
    printed = capsys.readouterr().out
    table = printed.splitlines()[1:7]
    assert table[0].split() == ["digits", "n=1", "n=3"] and set(table[4]) == {"-"}  # a rule after 3 trained digits
    with open(out_dir / "addition_eval.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["digits", "n_loop_1", "n_loop_3"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert values.shape == (4, 2) and ((values >= 0) & (values <= 1)).all()
    assert (out_dir / "addition_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a checkpoint without a named dataset needs --data_dir: one line, exit code 1
    assert cli.call_tool(eval_addition.define_flags, eval_addition.run, [f"--out_dir={out_dir}", "--plot=false"]) == 1
    assert "--data_dir" in capsys.readouterr().err


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_baseline_is_the_looped_config_run_once_with_the_same_parameters():
    looped, baseline = addition_looped.get_config(), addition_baseline.get_config()
    a, b = flatten(looped.to_dict()), flatten(baseline.to_dict())
    assert {k for k in a if a[k] != b[k]} == {"out_dir", "model.n_loop", "train.eval_n_loops"}
    assert (looped.model.n_loop, baseline.model.n_loop) == (4, 1)

    def n_params(c) -> int:
        shapes = abstract_params(model_config(c.model, vocab_size=len(addition.CHARS)))
        return sum(x.size for x in jax.tree_util.tree_leaves(shapes))

    assert n_params(looped) == n_params(baseline)
    # the longest test problem (16 + 16 digits, prompt newline, 17-digit answer) fits the context
    assert 1 + 16 + 1 + 16 + 1 + 18 - 1 <= looped.model.block_size
