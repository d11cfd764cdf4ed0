"""Multi-digit addition as a character-level dataset: problems `a+b=` with the sum's digits reversed.

One problem is `123+4567=0964\n`: the operands most significant digit first, the sum least
significant digit first (4690 -> `0964`), so each answer digit depends only on digits already seen
and on the carry from the digit just written. The newline ends the answer and counts as a target, so
the model must also learn when to stop.

Layout. train.bin/val.bin hold problems concatenated with no padding: every token is a real problem
token, and since BatchSampler cuts windows at random offsets, problems appear at every position of
the context, so every row of the learned position table is trained. `<split>_mask.bin` flags the
answer digits and the newline; the question costs no loss. (A window that starts inside a question
still scores that problem's answer, a little noise that a longer block_size dilutes.) Padding each
problem to a fixed length would not make windows align with problems (the offsets are uniform), and
in a trial operands right-aligned in fixed-width fields learned no faster, so the pad character ' '
is in the vocabulary but never in the data: it is reserved for tools that need a filler id.

Test sets: `test_<d>.json` for d = 1 .. max_test_digits, both operands with exactly d digits (d = 1
includes 0), stored as decimal strings (JSON numbers lose precision past 2^53 in many readers).
Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from nanoloop_jax.errors import ConfigError, UserError
from nanoloop_jax.fileio import write_atomic

PAD, END = " ", "\n"
CHARS = sorted("0123456789+=" + PAD + END)  # '\n', ' ', '+', '0'..'9', '='
STOI = {ch: i for i, ch in enumerate(CHARS)}
MAX_DIGITS = 18  # operands and sums stay below 2^63, so numpy int64 holds them exactly
# Stream ids mixed into the seed: each split draws from its own generator.
TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 0, 1, 100


def question(a: int, b: int) -> str:
    """The prompt of a problem: `a+b=`."""
    return f"{a}+{b}="


def answer(a: int, b: int) -> str:
    """The target of a problem: the sum's digits least significant first, then the end marker."""
    return str(a + b)[::-1] + END


def random_operands(rng: np.random.Generator, digits_a, digits_b) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a[i], b[i]) uniform among numbers of digits_a[i] and digits_b[i] digits (1 digit: 0..9)."""

    def draw(digits: np.ndarray) -> np.ndarray:
        low = np.where(digits == 1, 0, 10 ** (digits - 1).astype(np.int64))
        return rng.integers(low, 10 ** digits.astype(np.int64))  # high is exclusive: up to 10^d - 1

    return draw(np.asarray(digits_a)), draw(np.asarray(digits_b))


def mixed_problems(rng: np.random.Generator, n: int, max_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Training-distribution pairs: each operand's digit count uniform in 1..max_digits, independently."""
    digits_a = rng.integers(1, max_digits + 1, size=n)
    digits_b = rng.integers(1, max_digits + 1, size=n)
    return random_operands(rng, digits_a, digits_b)


def fixed_problems(rng: np.random.Generator, n: int, digits: int) -> tuple[list[int], list[int]]:
    """n pairs with both operands of exactly `digits` digits; all of them, in order, if there are at most n."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    count = 10**digits - low
    if count * count <= n:
        # small spaces (1 digit: 100 problems) are enumerated, so their accuracy is exact, not sampled
        return [a for a in range(low, 10**digits) for _ in range(count)], list(range(low, 10**digits)) * count
    a, b = random_operands(rng, np.full(n, digits), np.full(n, digits))
    return a.tolist(), b.tolist()


def encode_problems(a, b) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 token ids, uint8 mask) of the problems concatenated; mask 1 on answer digits and END."""
    texts, masks = [], []
    for x, y in zip(a, b, strict=True):
        q, ans = question(int(x), int(y)), answer(int(x), int(y))
        texts.append(q + ans)
        masks.append(b"\0" * len(q) + b"\1" * len(ans))
    lut = np.zeros(128, np.uint16)
    lut[[ord(c) for c in CHARS]] = range(len(CHARS))
    ids = lut[np.frombuffer("".join(texts).encode("ascii"), np.uint8)]
    return ids, np.frombuffer(b"".join(masks), np.uint8)


def prepare_addition(
    out_dir: str | os.PathLike,
    *,
    max_digits: int = 8,
    max_test_digits: int | None = None,
    num_train: int = 500_000,
    num_val: int = 10_000,
    num_test: int = 1_000,
    seed: int = 0,
) -> dict:
    """Write train/val .bin + _mask.bin, test_<d>.json and meta.json; return the meta dict."""
    max_test_digits = 2 * max_digits if max_test_digits is None else max_test_digits
    if not 1 <= max_digits <= max_test_digits <= MAX_DIGITS:
        raise ConfigError(f"need 1 <= max_digits ({max_digits}) <= max_test_digits ({max_test_digits}) <= {MAX_DIGITS}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "vocab_size": len(CHARS),
        "itos": {str(i): ch for i, ch in enumerate(CHARS)},  # JSON keys are strings, as shakespeare_char's
        "stoi": STOI,
        "task": "addition",
        "pad": PAD,
        "end": END,
        "reversed_answer": True,
        "max_train_digits": max_digits,
        "max_test_digits": max_test_digits,
        "seed": seed,
        "num_test": num_test,
    }
    for d in range(1, max_test_digits + 1):
        a, b = fixed_problems(np.random.default_rng([seed, TEST_STREAM + d]), num_test, d)
        record = {"digits": d, "a": [str(x) for x in a], "b": [str(x) for x in b]}
        write_atomic(out_dir / f"test_{d}.json", json.dumps(record).encode())
    # train.bin last: its presence is what ensure_prepared takes as "this dataset is complete"
    for split, stream, n in (("val", VAL_STREAM, num_val), ("train", TRAIN_STREAM, num_train)):
        ids, mask = encode_problems(*mixed_problems(np.random.default_rng([seed, stream]), n, max_digits))
        meta[f"{split}_tokens"] = int(ids.size)
        if split == "train":
            write_atomic(out_dir / "meta.json", json.dumps(meta).encode())
        write_atomic(out_dir / f"{split}_mask.bin", mask.tobytes())
        write_atomic(out_dir / f"{split}.bin", ids.tobytes())
    return meta


def load_test_set(data_dir: str | os.PathLike, digits: int) -> tuple[list[int], list[int]]:
    """(a, b) operand lists of test_<digits>.json."""
    path = pathlib.Path(data_dir) / f"test_{digits}.json"
    if not path.exists():
        raise UserError(f"{path} not found; prepare more test lengths: python data/addition/prepare.py")
    record = json.loads(path.read_text())
    return [int(x) for x in record["a"]], [int(x) for x in record["b"]]
